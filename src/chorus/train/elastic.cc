// Elastic all-reduce training (see elastic.h).
#include "chorus/train/elastic.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <iomanip>
#include <condition_variable>
#include <thread>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <vector>

#include "chorus/common/env.h"
#include "chorus/common/error.h"
#include "chorus/common/logging.h"
#include "chorus/comm/rendezvous/bootstrap.h"
#include "chorus/comm/rendezvous/store.h"
#include "chorus/train/datasets.h"
#include "chorus/train/loop.h"
#include "chorus/train/strategy.h"

namespace chorus::train {
namespace {

std::vector<int64_t> parseIds(const std::string& text, const std::string& key) {
  std::vector<int64_t> ids;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    try {
      size_t used = 0;
      ids.push_back(std::stoll(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw Error(str("elastic: store key ", key, " holds '", text, "', not a list of worker ids; the launcher and "
                      "this worker are different chorus versions?"));
    }
  }
  return ids;
}

// Whether an error means a peer failed (died, hung, or closed its transport after its own
// failure): only then does the job re-form. Anything else is this worker's own problem and
// ends it, which the launcher sees as a death.
bool peerFailure(const std::exception& e) {
  return dynamic_cast<const PeerError*>(&e) != nullptr || dynamic_cast<const TimeoutError*>(&e) != nullptr;
}

// Generation g's members, waiting for the launcher to write them.
std::vector<int64_t> membersOf(comm::Store& store, int64_t generation, Millis timeout) {
  const std::string key = str("chorus/elastic/members/", generation);
  const comm::Bytes value = store.get(key, timeout);
  return parseIds(std::string(value.begin(), value.end()), key);
}

// The members agree on the most advanced snapshot: the highest step any holds, from the lowest
// rank that holds it, broadcast to all. Per-rank state travels too: every member that holds
// exactly that step contributes its snapshot's own parts (SnapshotParts::own, keyed by rank in
// the generation that took it), a member a step behind or a replacement contributes nothing,
// and every member's payload becomes the root's shared part with the union of those parts;
// restoreSnapshot carries them to the new world (DDP: codec_state.h's rule). Returns where the
// state came from.
void agreeOnSnapshot(comm::ProcessGroup& g, Snapshot& snap, int64_t generation) {
  int64_t best = snap.globalStep;
  allreduceInPlace(g, &best, 1, DType::kInt64, ReduceOp::kMax);
  int64_t root = snap.globalStep == best ? g.rank() : g.size();
  allreduceInPlace(g, &root, 1, DType::kInt64, ReduceOp::kMin);
  if (best < 0) {  // no member completed a step: start afresh
    snap = Snapshot{};
    return;
  }
  std::string mine;  // this member's own parts, without the shared state every member receives
  if (snap.globalStep == best) {
    SnapshotParts own = unpackSnapshot(snap.payload);
    own.shared.clear();
    mine = packSnapshot(own);
  }
  const std::vector<std::string> held = allgatherBytes(g, mine);
  uint64_t bytes = g.rank() == root ? snap.payload.size() : 0;
  comm::BroadcastOptions b;
  b.data = &bytes;
  b.count = 1;
  b.dtype = DType::kInt64;
  b.root = static_cast<int>(root);
  g.broadcast(b);
  if (g.rank() != root) snap.payload.assign(bytes, '\0');
  b.data = snap.payload.data();
  b.count = bytes;
  b.dtype = DType::kUInt8;
  g.broadcast(b);
  // A snapshot restored and not yet replaced by a step of the new generation holds the parts of
  // the generation that took it, so members of later generations may contribute the same ranks:
  // the first wins (they are equal). Parts of another world cannot hold the same step (a
  // generation resumes at the step its members agreed on), and are left out should they.
  SnapshotParts agreed = unpackSnapshot(snap.payload);
  agreed.own.clear();
  for (size_t r = 0; r < held.size(); ++r) {
    if (held[r].empty()) continue;
    SnapshotParts theirs = unpackSnapshot(held[r]);
    if (theirs.world != agreed.world) {
      CHORUS_WARN("elastic: rank ", r, " holds step ", best, " taken at world ", theirs.world, ", not ", agreed.world,
                  " as rank ", root, "'s; its per-rank state is left out");
      continue;
    }
    agreed.own.merge(theirs.own);
  }
  snap.payload = packSnapshot(agreed);
  snap.globalStep = best;
  snap.source = str("the state of step ", best, " (rank ", root, " of generation ", generation, ", in memory)");
}

// The positional agreement (elastic.h, planShardRecovery): every rank learns the steps of every
// snapshot the members hold (their own and, at dp = 1, their copies of their left neighbour's),
// computes the same plan, and a rank that does not hold the agreed step receives it from its
// source by send/recv; nobody else moves bytes.
void agreeOnShards(comm::ProcessGroup& g, Snapshot& snap, int64_t generation, int tp, int pp) {
  const int n = g.size();
  const std::vector<int> shardOf = meshShards(n, tp, pp);
  std::vector<int64_t> steps(4 * static_cast<size_t>(n), 0);
  const size_t at = 4 * static_cast<size_t>(g.rank());
  steps[at] = snap.globalStep;
  steps[at + 1] = snap.previousStep;
  steps[at + 2] = snap.replicate ? snap.copyStep : -1;
  steps[at + 3] = snap.replicate ? snap.copyPreviousStep : -1;
  allreduceInPlace(g, steps.data(), steps.size(), DType::kInt64, ReduceOp::kSum);
  std::vector<ShardHolding> held;
  for (int r = 0; r < n; ++r) {
    const size_t i = 4 * static_cast<size_t>(r);
    held.push_back({r, shardOf[static_cast<size_t>(r)], false, steps[i], steps[i + 1]});
    if (steps[i + 2] >= 0 || steps[i + 3] >= 0)
      held.push_back({r, shardOf[static_cast<size_t>((r + n - 1) % n)], true, steps[i + 2], steps[i + 3]});
  }
  const ShardRecoveryPlan plan = planShardRecovery(shardOf, held);
  if (plan.step < 0) {
    snap.payload.clear();
    snap.previous.clear();
    snap.globalStep = snap.previousStep = -1;
    return;
  }
  auto ownOf = [&](int64_t step) -> const std::string* {
    return snap.globalStep == step ? &snap.payload : snap.previousStep == step ? &snap.previous : nullptr;
  };
  auto copyOf = [&](int64_t step) -> const std::string* {
    return snap.copyStep == step ? &snap.copy : snap.copyPreviousStep == step ? &snap.copyPrevious : nullptr;
  };
  constexpr uint32_t kSizeTag = 0x5a50, kBytesTag = 0x5a51;
  std::string received;
  for (int r = 0; r < n; ++r) {
    const int from = plan.source[static_cast<size_t>(r)];
    if (from == r) continue;  // its own (a rank's copy is always of another rank's shard)
    if (g.rank() == from) {
      const std::string* bytes = plan.fromCopy[static_cast<size_t>(r)] ? copyOf(plan.step) : ownOf(plan.step);
      if (!bytes) throw Error(str("elastic: rank ", from, " is to send step ", plan.step, " and does not hold it"));
      const uint64_t size = bytes->size();
      g.send(r, kSizeTag, &size, sizeof(size));
      g.send(r, kBytesTag, bytes->data(), bytes->size());
    } else if (g.rank() == r) {
      uint64_t size = 0;
      g.recv(from, kSizeTag, &size, sizeof(size));
      received.assign(size, '\0');
      g.recv(from, kBytesTag, received.data(), received.size());
    }
  }
  const int source = plan.source[static_cast<size_t>(g.rank())];
  const bool own = source == g.rank();
  if (!own) {
    std::cerr << str("chorus train: rank ", g.rank(), " of generation ", generation, ": received its shard's state of step ",
                     plan.step, " (", received.size(), " bytes) from rank ", source,
                     plan.fromCopy[static_cast<size_t>(g.rank())] ? "'s copy" : "", "\n");
    snap.payload = std::move(received);
  } else if (ownOf(plan.step) != &snap.payload) {
    snap.payload = std::move(snap.previous);
  }
  snap.previous.clear();
  snap.previousStep = -1;
  snap.globalStep = plan.step;
  // Copies of steps after the agreed one belong to the timeline the world abandons; the agreed
  // step's copy stays until the run's start replicates the restored snapshots again, so a member
  // that fails before then does not take the only other holder of a shard with it.
  auto drop = [&](std::string& bytes, int64_t& step) {
    if (step <= plan.step) return;
    bytes.clear();
    step = -1;
  };
  drop(snap.copy, snap.copyStep);
  drop(snap.copyPrevious, snap.copyPreviousStep);
  if (snap.copyStep < 0 && snap.copyPreviousStep >= 0) {
    snap.copy = std::move(snap.copyPrevious);
    snap.copyStep = snap.copyPreviousStep;
    snap.copyPrevious.clear();
    snap.copyPreviousStep = -1;
  }
  snap.source = own ? str("its own state of step ", plan.step, " (generation ", generation, ", in memory)")
                    : str("the state of step ", plan.step, " of its shard, from rank ", source,
                          plan.fromCopy[static_cast<size_t>(g.rank())] ? "'s copy" : "", " (generation ", generation,
                          ", in memory)");
}

// Snapshot::replicate at dp = 1: rank r sends its newest snapshot to rank r + 1 and keeps rank
// r - 1's as its copy (the one before as copyPrevious). Collective over the group.
void replicateToBuddy(comm::ProcessGroup& g, Snapshot& snap) {
  const int n = g.size();
  if (n < 2) return;
  const int right = (g.rank() + 1) % n, left = (g.rank() + n - 1) % n;
  constexpr uint32_t kSizeTag = 0x5a52, kBytesTag = 0x5a53;
  const uint64_t size = snap.payload.size();
  const int64_t step = snap.globalStep;
  uint64_t header[2] = {size, static_cast<uint64_t>(step)};
  uint64_t theirs[2] = {0, 0};
  comm::WorkPtr sendHeader = g.sendAsync(right, kSizeTag, header, sizeof(header));
  comm::WorkPtr sendBytes = g.sendAsync(right, kBytesTag, snap.payload.data(), snap.payload.size());
  g.recv(left, kSizeTag, theirs, sizeof(theirs));
  std::string incoming(theirs[0], '\0');
  g.recv(left, kBytesTag, incoming.data(), incoming.size());
  sendHeader->wait();
  sendBytes->wait();
  const auto theirStep = static_cast<int64_t>(theirs[1]);
  if (theirStep != snap.copyStep) {
    snap.copyPrevious = std::move(snap.copy);
    snap.copyPreviousStep = snap.copyStep;
  }
  snap.copy = std::move(incoming);
  snap.copyStep = theirStep;
}

}  // namespace

std::vector<int> meshShards(int world, int tp, int pp) {
  if (tp < 1 || pp < 1 || world % (tp * pp) != 0)
    throw InvalidArgument(str("meshShards: a world of ", world, " is not a multiple of tp ", tp, " x pp ", pp));
  const int dp = world / (tp * pp);
  std::vector<int> shard(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r) shard[static_cast<size_t>(r)] = (r / (dp * tp)) * tp + r % tp;
  return shard;
}

ShardRecoveryPlan planShardRecovery(const std::vector<int64_t>& newest, const std::vector<int64_t>& previous,
                                    const std::vector<int>& shardOf) {
  const size_t n = newest.size();
  if (previous.size() != n || shardOf.size() != n)
    throw InvalidArgument("planShardRecovery: newest, previous and shardOf differ in length");
  std::vector<ShardHolding> held;
  for (size_t r = 0; r < n; ++r) held.push_back({static_cast<int>(r), shardOf[r], false, newest[r], previous[r]});
  return planShardRecovery(shardOf, held);
}

ShardRecoveryPlan planShardRecovery(const std::vector<int>& shardOf, const std::vector<ShardHolding>& held) {
  const size_t n = shardOf.size();
  std::map<int, int64_t> best;  // shard -> the newest step any member holds of it
  for (int shard : shardOf) best.emplace(shard, -1);
  int64_t most = -1;
  for (const ShardHolding& h : held) {
    if (h.rank < 0 || static_cast<size_t>(h.rank) >= n || !best.count(h.shard))
      throw InvalidArgument(str("planShardRecovery: a holding of rank ", h.rank, ", shard ", h.shard,
                                " outside a world of ", n));
    best[h.shard] = std::max(best[h.shard], h.newest);
    most = std::max(most, h.newest);
  }
  ShardRecoveryPlan plan;
  plan.source.resize(n);
  plan.fromCopy.assign(n, false);
  for (size_t r = 0; r < n; ++r) plan.source[r] = static_cast<int>(r);
  plan.step = most;
  for (const auto& [shard, step] : best) plan.step = std::min(plan.step, step);
  if (plan.step < 0) {
    if (most >= 0) {
      std::string lost;
      for (const auto& [shard, step] : best)
        if (step < 0) lost += str(lost.empty() ? "" : ", ", shard);
      throw Error(str("elastic: no member holds any state of shard", lost.find(',') != std::string::npos ? "s " : " ",
                      lost, " (every rank that held it failed: all its data-parallel replicas, or at dp = 1 the rank ",
                      "and the neighbour that kept its copy), while the others are at step ", most,
                      "; the job cannot go on in memory. Restart it from its newest checkpoint (chorus train ",
                      "--resume, or --restarts R without --min)"));
    }
    plan.step = -1;
    return plan;
  }
  auto holds = [&](const ShardHolding& h) { return h.newest == plan.step || h.previous == plan.step; };
  for (size_t r = 0; r < n; ++r) {
    const ShardHolding* from = nullptr;
    for (const ShardHolding& h : held) {
      if (h.shard != shardOf[r] || !holds(h)) continue;
      if (h.rank == static_cast<int>(r) && !h.copy) {  // its own: nothing moves
        from = &h;
        break;
      }
      if (!from || h.rank < from->rank || (h.rank == from->rank && from->copy && !h.copy)) from = &h;
    }
    if (!from)
      throw Error(str("elastic: the members holding shard ", shardOf[r], " hold step ", best.at(shardOf[r]),
                      " and not step ", plan.step, ", which another shard's members hold at most; the ranks are more ",
                      "than one step apart, which the per-step agreement should prevent (a chorus bug: report it); ",
                      "restart from the newest checkpoint"));
    plan.source[r] = from->rank;
    plan.fromCopy[r] = from->copy;
  }
  return plan;
}

// The worker's heartbeat (elastic.h): a thread with its own store connection that writes
// "chorus/elastic/hb/<id>" = "<generation>,<beat>,<calls>,<last call>" every kHeartbeatEvery,
// where calls counts the collectives of the current generation's group. It stops with the
// process (SIGSTOP, a crash), so the launcher can tell a hung worker from a slow one. Each beat
// also looks for the next generation's members in the store: when the launcher publishes them
// while this generation is healthy (it grows the job: a spare joins), the thread aborts the
// group, so the step in flight fails here and at the others as a failure would, and the
// members re-form with the newcomer (movedOn() tells that abort from a failure).
class Heartbeat {
 public:
  static constexpr Millis kEvery{500};

  explicit Heartbeat(int64_t id) : id_(id) {
    const comm::BootstrapInfo info = comm::detectBootstrap();
    if (info.storeAddr.empty() || info.storePort == 0) return;  // not under a launcher: nothing to tell
    store_ = std::make_unique<comm::TcpStore>(info.storeAddr, info.storePort, info.secret, Millis(30000));
    thread_ = std::thread([this] { run(); });
  }
  ~Heartbeat() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  // The group whose calls are counted from now on (the generation just formed).
  void follow(std::shared_ptr<comm::ProcessGroup> group, int64_t generation) {
    std::lock_guard<std::mutex> lock(mu_);
    group_ = std::move(group);
    generation_ = generation;
    movedOn_ = false;
  }
  // The launcher published the next generation and this thread aborted the group for it.
  bool movedOn() {
    std::lock_guard<std::mutex> lock(mu_);
    return movedOn_;
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (uint64_t beat = 1; !stop_; ++beat) {
      const std::string value = group_ ? str(generation_, ",", beat, ",", group_->callsIssued(), ",", group_->lastCall())
                                       : str(generation_, ",", beat, ",0,");
      const std::shared_ptr<comm::ProcessGroup> group = movedOn_ ? nullptr : group_;
      const int64_t generation = generation_;
      lock.unlock();
      bool next = false;
      try {
        store_->set(str("chorus/elastic/hb/", id_), comm::toBytes(value));
        next = group && store_->check({str("chorus/elastic/members/", generation + 1)});
      } catch (const std::exception& e) {
        CHORUS_DEBUG("worker ", id_, ": heartbeat failed: ", e.what());  // the launcher is gone; the job ends anyway
      }
      lock.lock();
      if (next && group == group_ && !movedOn_) {
        movedOn_ = true;
        lock.unlock();
        group->abort(str("worker ", id_, ": the launcher published generation ", generation + 1,
                         "; leaving generation ", generation, " to re-form with it"));
        lock.lock();
      }
      cv_.wait_for(lock, kEvery, [&] { return stop_; });
    }
  }

  const int64_t id_;
  std::unique_ptr<comm::TcpStore> store_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool movedOn_ = false;
  std::shared_ptr<comm::ProcessGroup> group_;
  int64_t generation_ = 0;
  std::thread thread_;
};

void HeartbeatStop::operator()(Heartbeat* h) const { delete h; }

std::unique_ptr<Heartbeat, HeartbeatStop> startHeartbeat(int64_t id) {
  return std::unique_ptr<Heartbeat, HeartbeatStop>(new Heartbeat(id));
}


namespace {

[[noreturn]] void notElastic() {
  throw InvalidArgument("elastic training (chorus train --min) recovers all-reduce jobs (data, tensor and pipeline "
                        "parallel); this strategy cannot; a parameter-server job restarts its failed workers and "
                        "servers in place with ps.restarts = R");
}

}  // namespace

std::string Strategy::snapshot(const TrainState&) { notElastic(); }
TrainState Strategy::restoreSnapshot(const std::string&) { notElastic(); }

// The payload's bytes, all integers little-endian:
//   "CHSNAP01"  u64 n  shared[n]  i64 world  u64 parts  { i64 rank  u64 n  own[n] } * parts
// In memory and on the wire between the job's own processes only; never on disk.
namespace {

constexpr char kSnapshotMagic[] = "CHSNAP01";
constexpr size_t kSnapshotMagicSize = sizeof(kSnapshotMagic) - 1;

void putU64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

struct SnapshotReader {
  const std::string& in;
  size_t at = 0;

  [[noreturn]] void corrupt(const std::string& what) const {
    throw Error(str("in-memory snapshot: ", what, " at byte ", at, " of ", in.size(),
                    "; the bytes are not a snapshot this chorus took (another version, or damaged)"));
  }
  uint64_t u64() {
    if (in.size() - at < 8) corrupt("truncated");
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(in[at + i])) << (8 * i);
    at += 8;
    return v;
  }
  std::string bytes() {
    const uint64_t n = u64();
    if (n > in.size() - at) corrupt(str("a part of ", n, " bytes"));
    std::string s = in.substr(at, n);
    at += n;
    return s;
  }
};

}  // namespace

std::string packSnapshot(const SnapshotParts& parts) {
  size_t size = kSnapshotMagicSize + 32 + parts.shared.size();
  for (const auto& [rank, own] : parts.own) size += 16 + own.size();
  std::string out;
  out.reserve(size);
  out.append(kSnapshotMagic, kSnapshotMagicSize);
  putU64(out, parts.shared.size());
  out += parts.shared;
  putU64(out, static_cast<uint64_t>(static_cast<int64_t>(parts.world)));
  putU64(out, parts.own.size());
  for (const auto& [rank, own] : parts.own) {
    putU64(out, static_cast<uint64_t>(static_cast<int64_t>(rank)));
    putU64(out, own.size());
    out += own;
  }
  return out;
}

SnapshotParts unpackSnapshot(const std::string& payload) {
  SnapshotReader in{payload, 0};
  if (payload.compare(0, kSnapshotMagicSize, kSnapshotMagic) != 0) in.corrupt("no snapshot header");
  in.at = kSnapshotMagicSize;
  SnapshotParts parts;
  parts.shared = in.bytes();
  const auto world = static_cast<int64_t>(in.u64());
  if (world < 0 || world > (1 << 20)) in.corrupt(str("a world of ", world));
  parts.world = static_cast<int>(world);
  const uint64_t count = in.u64();
  if (count > static_cast<uint64_t>(world)) in.corrupt(str(count, " per-rank parts for a world of ", world));
  for (uint64_t i = 0; i < count; ++i) {
    const auto rank = static_cast<int64_t>(in.u64());
    if (rank < 0 || rank >= world || parts.own.count(static_cast<int>(rank)))
      in.corrupt(str("rank ", rank, "'s part in a world of ", world));
    parts.own[static_cast<int>(rank)] = in.bytes();
  }
  if (in.at != payload.size()) in.corrupt("trailing bytes");
  return parts;
}

ElasticOptions elasticFromEnvironment() {
  ElasticOptions e;
  e.enabled = envString("CHORUS_ELASTIC") == "1";
  if (!e.enabled) return e;
  e.workerId = envInt("CHORUS_ELASTIC_ID");
  e.generation = envInt("CHORUS_ELASTIC_GEN");
  e.spare = envString("CHORUS_ELASTIC_SPARE") == "1";
  return e;
}

int64_t waitAsSpare(const Config& cfg, const ElasticOptions& e, int& rank, int& size) {
  auto beat = startHeartbeat(e.workerId);
  keepDatasetsLoaded(true);
  {
    Roles roles;
    roles.evaluates = true;
    makeTask(cfg, roles);  // loads the datasets into the cache the worker's task reads
  }
  const comm::BootstrapInfo info = comm::detectBootstrap();
  comm::TcpStore store(info.storeAddr, info.storePort, info.secret, Millis(30000));
  const std::string key = str("chorus/elastic/spare/", e.workerId);
  std::cerr << str("chorus train: worker ", e.workerId, " (pid ", ::getpid(), "): a spare, loaded and waiting\n");
  int64_t generation = -1;
  for (;;) {
    try {
      const std::string v = comm::toString(store.get(key, Millis(2000)));
      generation = std::stoll(v);
      break;
    } catch (const TimeoutError&) {
    }
  }
  if (generation < 0) return -1;
  const std::vector<int64_t> members = membersOf(store, generation, Millis(30000));
  const auto me = std::find(members.begin(), members.end(), e.workerId);
  if (me == members.end()) {
    throw Error(str("worker ", e.workerId, ": a spare called into generation ", generation, ", which does not list it"));
  }
  rank = static_cast<int>(me - members.begin());
  size = static_cast<int>(members.size());
  return generation;
}

std::string elasticPrefix(int64_t generation) { return str("chorus/elastic/g", generation); }

TrainResult trainElastic(const Config& cfg, std::shared_ptr<comm::ProcessGroup>& group, TrainOptions opts,
                         const ElasticOptions& e) {
  Snapshot snap;
  opts.snapshot = &snap;
  // Tensor and pipeline parallelism: every rank keeps its place and its shard (elastic.h).
  const int tp = static_cast<int>(cfg.parallel.tp), pp = static_cast<int>(cfg.parallel.pp);
  const bool positional = tp * pp > 1;
  snap.keepPrevious = positional;
  // At dp = 1 no replica holds a rank's shard: each rank keeps its neighbour's snapshots too.
  if (positional && group->size() == tp * pp) snap.replicate = [&group](Snapshot& s) { replicateToBuddy(*group, s); };
  auto agree = [&](comm::ProcessGroup& g, int64_t gen) {
    if (positional) {
      agreeOnShards(g, snap, gen, tp, pp);
    } else {
      agreeOnSnapshot(g, snap, gen);
    }
  };
  int64_t generation = e.generation;
  Heartbeat heartbeat(e.workerId);
  keepDatasetsLoaded(true);  // a re-formed generation sets up again without reading the files
  heartbeat.follow(group, generation);
  const Millis wait = group->timeout();
  std::cerr << str("chorus train: worker ", e.workerId, " (pid ", ::getpid(), "): generation ", generation, ", rank ",
                   group->rank(), " of ", group->size(), "\n");
  if (generation > 0) agree(*group, generation);  // a replacement: receive the state
  for (;;) {
    try {
      return train(cfg, group, opts);
    } catch (const std::exception& err) {
      if (!peerFailure(err) && !heartbeat.movedOn()) throw;
      CHORUS_WARN("worker ", e.workerId, ": ", heartbeat.movedOn() ? "the job grows" : "a peer failed", " (", err.what(),
                  "); waiting for the next generation");
      std::string lastError = err.what();
      comm::Store* store = group->store();
      if (!store) throw;
      // A member that fails while the group re-forms makes the join fail: try the next one.
      for (;;) {
        ++generation;
        std::vector<int64_t> members;
        try {
          members = membersOf(*store, generation, wait);
        } catch (const TimeoutError&) {
          throw Error(str("worker ", e.workerId, ": a peer failed (", lastError, ") and no generation ", generation,
                          " came within ", wait.count(), " ms; the launcher is gone or not elastic (start the job ",
                          "with chorus launch --min or chorus train --min)"));
        }
        const auto me = std::find(members.begin(), members.end(), e.workerId);
        if (me == members.end()) {
          throw Error(str("worker ", e.workerId, " is not a member of generation ", generation,
                          " (the launcher counted it as failed); it stops"));
        }
        const int rank = static_cast<int>(me - members.begin());
        if (positional && (rank != group->rank() || static_cast<int>(members.size()) != group->size())) {
          throw Error(str("worker ", e.workerId, ": generation ", generation, " puts it at rank ", rank, " of ",
                          members.size(), ", but a tensor- or pipeline-parallel job keeps every rank in its place (rank ",
                          group->rank(), " of ", group->size(), "); start it with chorus train --min, or with chorus launch --min ",
                          "--keep-positions"));
        }
        try {
          group = group->reform(rank, static_cast<int>(members.size()), elasticPrefix(generation),
                                str("re-forming as generation ", generation));
          heartbeat.follow(group, generation);
          agree(*group, generation);
        } catch (const std::exception& again) {
          if (!peerFailure(again)) throw;
          lastError = again.what();
          CHORUS_WARN("worker ", e.workerId, ": generation ", generation, " failed while forming (", again.what(),
                      "); waiting for the next");
          continue;
        }
        break;
      }
      const double unix = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
      std::cerr << str("chorus train: worker ", e.workerId, " (pid ", ::getpid(), "): generation ", generation,
                       ", rank ", group->rank(), " of ", group->size(), "; resuming at step ",
                       std::max<int64_t>(snap.globalStep, 0), " (unix time ", std::fixed, std::setprecision(3), unix,
                       ")\n");
      // Without a snapshot (a failure during the first setup) the run starts again as it was
      // asked to: afresh, or from the checkpoint it was to resume from.
    }
  }
}

void injectFault(int64_t globalStep) {
  struct Fault {
    int signal;
    int64_t id, step;
  };
  static std::once_flag once;
  static std::vector<Fault> faults;
  static int64_t self = 0;
  std::call_once(once, [] {
    const std::string spec = envString("CHORUS_FAULT");
    if (spec.empty()) return;
    self = envGet("CHORUS_ELASTIC_ID") ? envInt("CHORUS_ELASTIC_ID") : envGet("CHORUS_RANK") ? std::stoll(*envGet("CHORUS_RANK")) : 0;
    std::stringstream in(spec);
    std::string item;
    while (std::getline(in, item, ',')) {
      const size_t a = item.find(':'), b = item.find(':', a == std::string::npos ? a : a + 1);
      const std::string kind = item.substr(0, a);
      if (a == std::string::npos || b == std::string::npos || (kind != "kill" && kind != "stop" && kind != "loop")) {
        throw ConfigError(str("CHORUS_FAULT: '", item, "' is not kill:ID:STEP, stop:ID:STEP or loop:ID:STEP"));
      }
      try {
        faults.push_back({kind == "kill" ? SIGKILL : kind == "stop" ? SIGSTOP : 0, std::stoll(item.substr(a + 1, b - a - 1)),
                          std::stoll(item.substr(b + 1))});
      } catch (const std::exception&) {
        throw ConfigError(str("CHORUS_FAULT: '", item, "': ID and STEP must be whole numbers"));
      }
    }
  });
  // A process restarted in place of a failed one (CHORUS_RESTART_COUNT = k, parameter-server
  // jobs) has the same id: it takes the faults of its id after the first k, so the fault
  // that killed its predecessor does not kill it again at the step it resumes at.
  static const int64_t restart = envGet("CHORUS_RESTART_COUNT") ? envInt("CHORUS_RESTART_COUNT") : 0;
  int64_t earlier = 0;  // faults of this id listed before f
  for (const Fault& f : faults) {
    if (f.id != self) continue;
    if (earlier++ < restart) continue;
    if (f.step == globalStep) {
      const double unix = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
      std::cerr << str("chorus train: worker ", self, " (pid ", ::getpid(), "): CHORUS_FAULT ",
                       f.signal == SIGKILL ? "kills" : f.signal == SIGSTOP ? "stops" : "loops", " it at step ",
                       globalStep, " (unix time ", std::fixed, std::setprecision(3), unix, ")\n");
      std::cerr.flush();
      if (f.signal == 0) {
        // An endless loop in "user code": the process stays alive (its heartbeat goes on) but
        // never reaches the step's collective.
        volatile uint64_t spin = 0;
        for (;;) {
          const uint64_t next = spin + 1;
          spin = next;
        }
      }
      ::raise(f.signal);
    }
  }
}

}  // namespace chorus::train
