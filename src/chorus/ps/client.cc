// The worker side of the parameter server (client.h): gathers each server's slices from the
// model's tensors into one buffer, sends every server its request at once, then reads the
// answers server by server (header first, since it says how large the payload is).
#include "chorus/ps/client.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <exception>

#include "chorus/common/logging.h"
#include "chorus/compress/factory.h"
#include "chorus/ps/protocol.h"

namespace chorus::ps {

// An answer that breaks the protocol (a live server, not a dead one).
class BadAnswer : public PeerError {
 public:
  using PeerError::PeerError;
};

// One server's payload as bytes (floats or a codec message).
using Bytes = std::span<const uint8_t>;

template <typename T>
Bytes bytesOf(const std::vector<T>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(T)};
}

struct Client::Impl {
  std::shared_ptr<comm::ProcessGroup> group;
  int worker;
  std::vector<int> serverRanks;
  ShardPlan plan;
  Millis timeout;
  uint64_t fingerprint;
  std::vector<int64_t> versions;
  std::vector<int64_t> serverClocks;  // per server, this worker's pushes it counts (last pull's answer)
  int64_t clock = 0;
  double pullWait = 0;
  uint64_t bytesPushed = 0;
  bool saidBye = false;
  Millis reconnectTimeout{0};
  std::vector<uint64_t> epochs;                 // per server, the restarts seen (peerEpoch)
  std::vector<std::vector<float>> lastPulled;   // per server, its values as last pulled or sent
  // Backup agreement (protocol.h, kFlagAgree): per server, whether its last pull's answer
  // carried the flag, and whether a restarted process has taken its place since this client
  // started (its versions then count apart).
  std::vector<bool> agree, restarted;
  int64_t reconnects = 0;
  int64_t realignedPulls = 0;
  std::unique_ptr<compress::Codec> codec;  // compressPushes: pushes are its messages
  uint16_t codecId = 0;                    // 1 + its index in compress::codecNames()
  std::vector<compress::CodecState> codecStates;  // per server
  int uncaught = std::uncaught_exceptions();  // at construction: a destructor run by unwinding sees more

  int servers() const { return plan.servers(); }
  std::string who() const { return str("ps worker ", worker, " (rank ", group->rank(), ")"); }

  template <typename Span>
  void checkTensors(const std::vector<Span>& ts, const char* op) const {
    const auto& specs = plan.tensors();
    if (ts.size() != specs.size()) {
      throw InvalidArgument(str(who(), " ", op, ": ", ts.size(), " tensors given, the plan has ", specs.size()));
    }
    for (size_t i = 0; i < ts.size(); ++i) {
      if (static_cast<int64_t>(ts[i].size()) != specs[i].numel) {
        throw InvalidArgument(str(who(), " ", op, ": tensor ", i, " ('", specs[i].name, "') has ", ts[i].size(),
                                  " elements, the plan says ", specs[i].numel));
      }
    }
  }

  // Server s's slices of `ts`, in slice order.
  std::vector<float> gather(const std::vector<std::span<const float>>& ts, int s) const {
    std::vector<float> out;
    out.reserve(static_cast<size_t>(plan.load(s)));
    const int first = plan.firstSlice(s);
    for (int k = first; k < first + plan.sliceCount(s); ++k) {
      const Slice& sl = plan.slices()[static_cast<size_t>(k)];
      const float* p = ts[static_cast<size_t>(sl.tensor)].data() + sl.offset;
      out.insert(out.end(), p, p + sl.numel);
    }
    return out;
  }

  void scatter(const std::vector<float>& in, const std::vector<std::span<float>>& ts, int s) const {
    const int first = plan.firstSlice(s);
    size_t at = 0;
    for (int k = first; k < first + plan.sliceCount(s); ++k) {
      const Slice& sl = plan.slices()[static_cast<size_t>(k)];
      std::copy_n(in.begin() + static_cast<std::ptrdiff_t>(at), sl.numel,
                  ts[static_cast<size_t>(sl.tensor)].data() + sl.offset);
      at += static_cast<size_t>(sl.numel);
    }
  }

  // Sends `op` to the servers in `targets` (with payloads[s], if any) and reads every answer.
  // kParams payloads land in got[s] and set versions[s]. Returns the servers whose connection
  // failed (only when reconnecting; otherwise their PeerError is thrown), or whose error answer
  // came from a process that replaced them during the call. Throws ServerError with the first
  // other kError message, after every answer has been read, so the streams stay in step.
  // payloads[s] are bytes of floats, or of a codec message when `codec` (an id) is not 0.
  // flags kFlagFinal (a goodbye only): the final pull; keepalives are read past, and the
  // answer is kParams like a pull's. pullFloor: the version a pull asks for (0: any).
  std::vector<int> exchange(const std::vector<int>& targets, Op op, const std::vector<Bytes>& payloads, double lr,
                            std::vector<std::vector<float>>* got, uint16_t codecId = 0, uint8_t flags = 0,
                            int64_t pullFloor = 0) {
    const bool final = flags == kFlagFinal;
    const bool params = op == Op::kPull || final;
    const size_t n = targets.size();
    std::vector<std::array<uint8_t, kHeaderBytes>> out(n), in(n);
    std::vector<comm::WorkPtr> recvs;
    std::vector<std::pair<int, comm::WorkPtr>> sends;  // (server, work)
    std::vector<bool> lost(static_cast<size_t>(servers()), false);
    const bool reconnect = reconnectTimeout.count() > 0;
    // A dead server: with reconnecting on, remembered; otherwise the error goes up.
    auto onPeerError = [&](int s, const PeerError& e) {
      if (!reconnect || e.peer() != serverRanks[static_cast<size_t>(s)]) throw;
      if (!lost[static_cast<size_t>(s)]) {
        CHORUS_WARN(who(), ": server ", s, " (rank ", serverRanks[static_cast<size_t>(s)], ") failed during ", opName(op),
                    ": ", e.what(), "; waiting up to ", reconnectTimeout.count(), " ms for it to restart");
      }
      lost[static_cast<size_t>(s)] = true;
    };
    // A header came from the process a restart has replaced since: its payload never will, and
    // a receive posted now would wait on the new process. Checked before every payload receive.
    auto replaced = [&](int s) {
      if (!reconnect || group->peerEpoch(serverRanks[static_cast<size_t>(s)]) == epochs[static_cast<size_t>(s)]) return false;
      lost[static_cast<size_t>(s)] = true;
      return true;
    };
    for (size_t i = 0; i < n; ++i) {
      const int s = targets[i];
      Header h;
      h.op = op;
      h.worker = worker;
      h.server = s;
      h.fingerprint = fingerprint;
      h.version = op == Op::kPull ? pullFloor : versions[static_cast<size_t>(s)];
      h.clock = op == Op::kPush ? clock + 1 : clock;  // a push carries the step it makes
      h.lr = lr;
      h.payloadBytes = payloads.empty() ? 0 : payloads[static_cast<size_t>(s)].size();
      if (codecId != 0) {
        h.flags = kFlagCodec;
        h.codec = codecId;
      }
      if (final) h.flags = kFlagFinal;
      h.firstSlice = plan.firstSlice(s);
      out[i] = encodeHeader(h);
      const int rank = serverRanks[static_cast<size_t>(s)];
      sends.emplace_back(s, group->sendAsync(rank, kHeaderTag, out[i].data(), kHeaderBytes, timeout));
      if (h.payloadBytes > 0) {
        sends.emplace_back(
            s, group->sendAsync(rank, kPayloadTag, payloads[static_cast<size_t>(s)].data(), h.payloadBytes, timeout));
      }
    }
    for (size_t i = 0; i < n; ++i) {
      recvs.push_back(group->recvAsync(serverRanks[static_cast<size_t>(targets[i])], kHeaderTag, in[i].data(),
                                       kHeaderBytes, timeout));
    }
    std::string error;
    for (size_t i = 0; i < n; ++i) {
      const int s = targets[i];
      const int rank = serverRanks[static_cast<size_t>(s)];
      try {
        recvs[i]->wait();
        Header a = decodeHeader(in[i]);
        // The final pull: the server is alive and waiting for the other workers.
        while (final && a.op == Op::kAck && a.flags == kFlagFinal && a.payloadBytes == 0 && a.server == s &&
               a.worker == worker) {
          group->recvAsync(rank, kHeaderTag, in[i].data(), kHeaderBytes, timeout)->wait();
          a = decodeHeader(in[i]);
        }
        // An error may be about the fingerprint itself, so only other answers must carry ours.
        if (a.server != s || a.worker != worker || (a.op != Op::kError && a.fingerprint != fingerprint)) {
          throw BadAnswer(str(who(), ": server ", s, " (rank ", rank, ") answered ", opName(op), " with a header for ",
                              "server ", a.server, ", worker ", a.worker, ", fingerprint ", a.fingerprint,
                              "; check that serverRanks and the plan match the servers"),
                          rank);
        }
        if (a.op == Op::kError) {
          if (a.payloadBytes > kMaxPayloadBytes) {
            throw BadAnswer(str(who(), ": server ", s, " sent an error of ", a.payloadBytes, " bytes"), rank);
          }
          if (replaced(s)) continue;
          std::string msg(a.payloadBytes, '\0');
          if (!msg.empty()) group->recvAsync(rank, kPayloadTag, msg.data(), msg.size(), timeout)->wait();
          if (error.empty()) error = str(who(), ": ", opName(op), " refused by ", msg);
          continue;
        }
        const Op expected = params ? Op::kParams : Op::kAck;
        const uint64_t bytes = params ? 4 * static_cast<uint64_t>(plan.load(s)) : 0;
        if (a.op != expected || a.payloadBytes != bytes) {
          throw BadAnswer(str(who(), ": server ", s, " (rank ", rank, ") answered ", opName(op), " with ", opName(a.op),
                              " and ", a.payloadBytes, " payload bytes; expected ", opName(expected), " and ", bytes),
                          rank);
        }
        if (params) {
          if (replaced(s)) continue;
          auto& buf = (*got)[static_cast<size_t>(s)];
          buf.resize(static_cast<size_t>(plan.load(s)));
          group->recvAsync(rank, kPayloadTag, buf.data(), bytes, timeout)->wait();
          versions[static_cast<size_t>(s)] = a.version;
          serverClocks[static_cast<size_t>(s)] = a.clock;
          agree[static_cast<size_t>(s)] = a.flags == kFlagAgree;
        }
      } catch (const BadAnswer&) {
        throw;  // a live server that breaks the protocol: no restart fixes that
      } catch (const PeerError& e) {
        onPeerError(s, e);
      }
    }
    for (auto& [s, w] : sends) {
      try {
        w->wait();
      } catch (const PeerError& e) {
        onPeerError(s, e);
      }
    }
    if (!error.empty()) throw ServerError(error);
    std::vector<int> failed;
    for (int s : targets) {
      if (lost[static_cast<size_t>(s)]) failed.push_back(s);
    }
    return failed;
  }

  // Waits for a restarted process in server s's place and resynchronizes with it (steps 1 and
  // 2 in client.h). Returns false when the new process failed too (the caller retries).
  bool resync(int s) {
    const int rank = serverRanks[static_cast<size_t>(s)];
    const uint64_t epoch = group->awaitPeer(rank, epochs[static_cast<size_t>(s)], reconnectTimeout);
    epochs[static_cast<size_t>(s)] = epoch;
    ++reconnects;
    restarted[static_cast<size_t>(s)] = true;
    CHORUS_WARN(who(), ": server ", s, " (rank ", rank, ") was restarted (restart ", epoch,
                " seen here); resynchronizing with it");
    if (!lastPulled[static_cast<size_t>(s)].empty()) {  // else: nothing to offer; the pull waits for another's init
      std::vector<Bytes> payloads(static_cast<size_t>(servers()));
      payloads[static_cast<size_t>(s)] = bytesOf(lastPulled[static_cast<size_t>(s)]);
      if (!exchange({s}, Op::kInit, payloads, 0.0, nullptr).empty()) return false;
    }
    return exchange({s}, Op::kPull, {}, 0.0, &lastPulled).empty();
  }

  // One call on every server (or on `only`, when given), reconnecting to restarted ones
  // (client.h). pullFloor: as for exchange().
  void call(Op op, const std::vector<Bytes>& payloads, double lr, uint16_t codecId = 0, uint8_t flags = 0,
            const std::vector<int>& only = {}, int64_t pullFloor = 0) {
    std::vector<int> targets = only;
    if (targets.empty()) {
      for (int s = 0; s < servers(); ++s) targets.push_back(s);
    }
    std::vector<int> redo;
    if (reconnectTimeout.count() > 0) {
      // A server restarted since the last call: resynchronize before sending it a push based
      // on a version the new process may not have.
      std::vector<int> now;
      for (int s : targets) {
        if (group->peerEpoch(serverRanks[static_cast<size_t>(s)]) != epochs[static_cast<size_t>(s)]) redo.push_back(s);
        else now.push_back(s);
      }
      targets = std::move(now);
    }
    std::vector<int> lost = exchange(targets, op, payloads, lr, &lastPulled, codecId, flags, pullFloor);
    redo.insert(redo.end(), lost.begin(), lost.end());
    for (int attempt = 0; !redo.empty(); ++attempt) {
      if (attempt == Client::kMaxReconnects) {
        throw PeerError(str(who(), ": server ", redo.front(), " (rank ", serverRanks[static_cast<size_t>(redo.front())],
                            ") failed again after ", attempt, " restarts within one ", opName(op),
                            "; check its log (it may fail on every start)"),
                        serverRanks[static_cast<size_t>(redo.front())]);
      }
      std::vector<int> again;
      for (int s : redo) {
        // A pull's answer is the resync's pull; every other op is sent again.
        if (!resync(s) || (op != Op::kPull && !exchange({s}, op, payloads, lr, &lastPulled, codecId, flags).empty()))
          again.push_back(s);
      }
      redo = std::move(again);
    }
  }

  // After a pull, with backup agreement (protocol.h, kFlagAgree): pulls again from each
  // follower whose answer is older than server 0's, asking for server 0's version, so the next
  // push counts in the same round everywhere. A follower ahead of server 0 needs nothing: its
  // newer rounds were closed by server 0 before it answered, so this worker's push is dropped
  // on both. Servers that restarted since this client started count versions apart and are
  // left as they are.
  void alignPull() {
    if (!agree[0] || restarted[0]) return;
    const int64_t target = versions[0];
    std::vector<int> behind;
    for (int s = 1; s < servers(); ++s) {
      const auto k = static_cast<size_t>(s);
      if (agree[k] && !restarted[k] && versions[k] < target) behind.push_back(s);
    }
    if (behind.empty()) return;
    CHORUS_DEBUG(who(), ": ", behind.size(), " follower(s) answered below server 0's version ", target,
                 "; pulling from them again");
    call(Op::kPull, {}, 0.0, 0, 0, behind, target);
    ++realignedPulls;
  }
};

Client::Client(std::shared_ptr<comm::ProcessGroup> group, int workerIndex, std::vector<int> serverRanks, ShardPlan plan,
               Millis timeout, Millis reconnectTimeout)
    : impl_(std::make_unique<Impl>()) {
  Impl& c = *impl_;
  if (!group) throw InvalidArgument("ps client: the process group is null");
  if (static_cast<int>(serverRanks.size()) != plan.servers()) {
    throw InvalidArgument(str("ps client: ", serverRanks.size(), " server ranks for a plan of ", plan.servers(),
                              " servers; give one rank per server"));
  }
  for (size_t s = 0; s < serverRanks.size(); ++s) {
    const int r = serverRanks[s];
    if (r < 0 || r >= group->size() || r == group->rank()) {
      throw InvalidArgument(str("ps client: server ", s, " has rank ", r, ", which is not another rank of the group of ",
                                group->size()));
    }
  }
  if (workerIndex < 0) throw InvalidArgument(str("ps client: worker index ", workerIndex, " is negative"));
  c.group = std::move(group);
  c.worker = workerIndex;
  c.serverRanks = std::move(serverRanks);
  c.plan = std::move(plan);
  c.timeout = timeout;
  c.fingerprint = c.plan.fingerprint();
  c.versions.assign(static_cast<size_t>(c.plan.servers()), 0);
  c.serverClocks.assign(static_cast<size_t>(c.plan.servers()), 0);
  c.reconnectTimeout = reconnectTimeout;
  c.lastPulled.resize(static_cast<size_t>(c.plan.servers()));
  c.agree.assign(static_cast<size_t>(c.plan.servers()), false);
  c.restarted.assign(static_cast<size_t>(c.plan.servers()), false);
  c.epochs.resize(static_cast<size_t>(c.plan.servers()));
  if (reconnectTimeout.count() > 0) {
    for (int s = 0; s < c.plan.servers(); ++s) c.epochs[static_cast<size_t>(s)] = c.group->peerEpoch(c.serverRanks[static_cast<size_t>(s)]);
  }
}

Client::~Client() {
  // A worker unwinding from an error does not say goodbye: its servers see the connection
  // fail and count it among the failed workers, as they would if its process had died.
  if (impl_->saidBye || std::uncaught_exceptions() > impl_->uncaught) return;
  try {
    bye();
  } catch (const std::exception& e) {
    CHORUS_DEBUG(impl_->who(), ": goodbye at destruction failed: ", e.what());
  }
}

void Client::init(const std::vector<std::span<const float>>& params) {
  Impl& c = *impl_;
  c.checkTensors(params, "init");
  std::vector<std::vector<float>> values;
  for (int s = 0; s < c.servers(); ++s) values.push_back(c.gather(params, s));
  std::vector<Bytes> payloads;
  for (const auto& v : values) payloads.push_back(bytesOf(v));
  if (c.reconnectTimeout.count() > 0) c.lastPulled = values;
  c.call(Op::kInit, payloads, 0.0);
}

void Client::push(const std::vector<std::span<const float>>& grads, double lr) {
  Impl& c = *impl_;
  c.checkTensors(grads, "push");
  std::vector<std::vector<float>> dense;
  std::vector<compress::Message> coded;
  std::vector<Bytes> payloads;
  for (int s = 0; s < c.servers(); ++s) {
    dense.push_back(c.gather(grads, s));
    if (c.codec) {
      coded.push_back(c.codec->encode(dense.back(), c.codecStates[static_cast<size_t>(s)]));
      dense.back() = {};
    }
  }
  for (int s = 0; s < c.servers(); ++s) {
    payloads.push_back(c.codec ? bytesOf(coded[static_cast<size_t>(s)]) : bytesOf(dense[static_cast<size_t>(s)]));
    c.bytesPushed += payloads.back().size();
  }
  c.call(Op::kPush, payloads, lr, c.codec ? c.codecId : 0);
  ++c.clock;
}

void Client::compressPushes(std::unique_ptr<compress::Codec> codec, uint64_t seed) {
  Impl& c = *impl_;
  if (!codec) throw InvalidArgument(str(c.who(), ": compressPushes was given no codec"));
  const auto& names = compress::codecNames();
  const auto it = std::find(names.begin(), names.end(), codec->name());
  if (it == names.end()) {
    throw InvalidArgument(str(c.who(), ": codec '", codec->name(), "' is not one the servers can decode; use a codec "
                              "of compress::makeCodec"));
  }
  c.codecId = static_cast<uint16_t>(it - names.begin() + 1);
  c.codec = std::move(codec);
  c.codecStates.assign(static_cast<size_t>(c.servers()), {});
  for (int s = 0; s < c.servers(); ++s) {
    compress::CodecState& st = c.codecStates[static_cast<size_t>(s)];
    st.rngState = seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(s) + 1;
    // Each slice is a segment of the server's flat buffer (layer-wise codecs pick per slice).
    int64_t end = 0;
    const int first = c.plan.firstSlice(s);
    for (int k = first; k < first + c.plan.sliceCount(s); ++k) {
      end += c.plan.slices()[static_cast<size_t>(k)].numel;
      st.segments.push_back(end);
    }
  }
}

compress::CodecState& Client::codecState(int server) {
  Impl& c = *impl_;
  if (server < 0 || server >= static_cast<int>(c.codecStates.size())) {
    throw InvalidArgument(str(c.who(), ": no codec state for server ", server, " (", c.codecStates.size(),
                              " states; call compressPushes first)"));
  }
  return c.codecStates[static_cast<size_t>(server)];
}

void Client::pull(const std::vector<std::span<float>>& params) {
  Impl& c = *impl_;
  c.checkTensors(params, "pull");
  const auto t0 = Clock::now();
  try {
    c.call(Op::kPull, {}, 0.0);
    c.alignPull();
  } catch (...) {
    c.pullWait += std::chrono::duration<double>(Clock::now() - t0).count();
    throw;
  }
  for (int s = 0; s < c.servers(); ++s) c.scatter(c.lastPulled[static_cast<size_t>(s)], params, s);
  c.pullWait += std::chrono::duration<double>(Clock::now() - t0).count();
}

int64_t Client::rejoin(const std::vector<std::span<float>>& params) {
  Impl& c = *impl_;
  pull(params);
  c.clock = *std::max_element(c.serverClocks.begin(), c.serverClocks.end());
  return c.clock;
}

void Client::finalPull(const std::vector<std::span<float>>& params) {
  Impl& c = *impl_;
  c.checkTensors(params, "final pull");
  if (c.saidBye) throw InvalidArgument(str(c.who(), ": a final pull after this worker said goodbye"));
  const auto t0 = Clock::now();
  c.call(Op::kBye, {}, 0.0, 0, kFlagFinal);
  for (int s = 0; s < c.servers(); ++s) c.scatter(c.lastPulled[static_cast<size_t>(s)], params, s);
  c.pullWait += std::chrono::duration<double>(Clock::now() - t0).count();
  bye();  // the closing goodbye: the servers stop watching this worker
}

void Client::bye() {
  Impl& c = *impl_;
  if (c.saidBye) return;
  c.saidBye = true;
  c.call(Op::kBye, {}, 0.0);
}

int64_t Client::clock() const { return impl_->clock; }
const std::vector<int64_t>& Client::versions() const { return impl_->versions; }
double Client::pullWaitSeconds() const { return impl_->pullWait; }
uint64_t Client::bytesPushed() const { return impl_->bytesPushed; }
int64_t Client::reconnects() const { return impl_->reconnects; }
int64_t Client::realignedPulls() const { return impl_->realignedPulls; }

}  // namespace chorus::ps
