// The shm transport's context: setup through the store, the wait loop, liveness, close.
//
// Cost model. A small message costs one copy into the ring and one out of it, a header of 48
// bytes, and (when the receiver is spinning) one cache-line handoff for the head index and one
// for the doorbell: about a microsecond one way. A large message (>= cmaMinBytes) costs one copy
// by process_vm_readv, straight from the sender's buffer into the receiver's (or into a 256 KiB
// scratch that is then reduced into the receiver's buffer), plus a round trip of 48-byte
// descriptor and acknowledgement. Without CMA, a large message streams through the ring in
// chunks of ringBytes/4 (at most 256 KiB) with both sides copying at once.
//
// Which is faster depends on the pattern. Measured on 2 cores of a quiet Xeon (memcpy 5.9
// GB/s): one way, 64 MiB moves at 6.5-7.3 GB/s through the ring (two cores copy) and 4.9 GB/s
// by CMA (one core copies); but when both ranks send and receive at once, as in every
// all-reduce, the ring's cross-core cache traffic drags a 2-rank 64 MiB all-reduce down to 1.5
// GB/s bus bandwidth where CMA reaches 4.2-4.6 GB/s. So large messages go by CMA.
//
// The wait loop (waitAll and waitAny; "done" means every request done for the one, any request
// done or failed for the other), with `seen` the doorbell counter read before progressing:
//
//   loop: seen = doorbell; progress every pair; done? -> return
//         changed anything? -> loop
//         deadline passed? -> TimeoutError
//         spin until doorbell != seen (spinUs; at least 500 us, yielding the core at every
//           burst of polls, when ranks outnumber cores) -> loop
//         data moved < 0.5 ms ago? spin on, yielding, until then -> loop
//         sleep on the futex while doorbell == seen (<= 50 ms) -> loop
//
// The middle spin matters while streaming: the peer is busy copying, a futex sleep would cost a
// wake-up (tens of microseconds) per ring-full, and a 64 MiB ring transfer had ~150 of them.
// Every 50 ms the peers of pending requests are checked for liveness.
#include "chorus/comm/transport/shm/context.h"

#include <dirent.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <new>
#include <random>

#include "chorus/common/env.h"
#include "chorus/common/error.h"
#include "chorus/common/logging.h"
#include "chorus/comm/rendezvous/store.h"
#include "chorus/comm/transport/factory.h"
#include "chorus/comm/transport/shm/cma.h"
#include "chorus/comm/transport/shm/futex.h"

namespace chorus::comm {

namespace {

constexpr int64_t kLivenessNs = 50'000'000;      // check peers' pids this often while waiting
constexpr int64_t kStreamSpinNs = 500'000;       // keep polling this long after the last progress
constexpr int64_t kStreamYieldNs = 10'000;       // ... yielding the core this often
constexpr int64_t kOversubscribedSpinUs = 500;   // least spin (yielding) before a futex sleep
constexpr size_t kScratchBytes = size_t{256} << 10;
constexpr uint64_t kDefaultChunkBytes = uint64_t{256} << 10;

int64_t nonNegative(const char* name) {
  const int64_t v = envInt(name);
  if (v < 0) throw ConfigError(str(name, " must not be negative, got ", v));
  return v;
}

// Segment names allow [A-Za-z0-9._-]; anything else becomes '_'.
std::string sanitize(const std::string& s) {
  std::string out = s.substr(0, 48);
  for (char& c : out) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == '-';
    if (!ok) c = '_';
  }
  return out;
}

uint64_t randomWord() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(nowNs());
}

// A rank killed during setup (before every peer mapped its segment) leaves its segment in
// /dev/shm. Each new context removes such leftovers: names we made (chorus-...-r<rank>-<pid>-
// <hex>) whose creator pid is gone and that are older than an hour (a segment is unlinked
// within the setup timeout, so an hour-old one whose creator is dead is garbage, even seen
// from another pid namespace).
void sweepStaleSegments() {
  constexpr time_t kStaleSeconds = 3600;
  DIR* dir = opendir("/dev/shm");
  if (dir == nullptr) return;
  const time_t now = time(nullptr);
  while (dirent* e = readdir(dir)) {
    const std::string name = e->d_name;
    if (name.rfind("chorus-", 0) != 0) continue;
    const size_t hexDash = name.rfind('-');
    if (hexDash == std::string::npos || hexDash == 0) continue;
    const size_t pidDash = name.rfind('-', hexDash - 1);
    if (pidDash == std::string::npos || pidDash == 0) continue;
    const size_t rankDash = name.rfind('-', pidDash - 1);
    if (rankDash == std::string::npos || name[rankDash + 1] != 'r') continue;
    const std::string pidText = name.substr(pidDash + 1, hexDash - pidDash - 1);
    if (pidText.empty() || pidText.find_first_not_of("0123456789") != std::string::npos) continue;
    struct stat st;
    if (fstatat(dirfd(dir), e->d_name, &st, 0) != 0 || now - st.st_mtime < kStaleSeconds) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(pidText));
    if (kill(pid, 0) == 0 || errno != ESRCH) continue;
    if (shm_unlink(("/" + name).c_str()) == 0) {
      CHORUS_INFO("shm: removed /dev/shm/", name, ", left behind by pid ", pid, " which no longer runs");
    }
  }
  closedir(dir);
}

std::string segKey(const TransportOptions& o, int r) { return str(o.prefix, "/shm/seg/", r); }
std::string mappedKey(const TransportOptions& o, int r) { return str(o.prefix, "/shm/mapped/", r); }

// The ranks r in `ranks` whose key `keyOf(r)` is missing from the store, as "1, 3".
template <typename KeyOf>
std::string missingRanks(Store* store, const std::vector<int>& ranks, KeyOf keyOf) {
  std::string out;
  for (int r : ranks) {
    if (!store->check({keyOf(r)})) out += str(out.empty() ? "" : ", ", r);
  }
  return out.empty() ? "none (they arrived just now)" : out;
}

}  // namespace

ShmOptions ShmOptions::fromEnv() {
  ShmOptions o;
  o.spinUs = nonNegative("CHORUS_SPIN_US");
  o.ringBytes = static_cast<uint64_t>(nonNegative("CHORUS_SHM_RING_BYTES"));
  o.cma = envBool("CHORUS_SHM_CMA");
  o.cmaMinBytes = static_cast<uint64_t>(nonNegative("CHORUS_SHM_CMA_MIN_BYTES"));
  return o;
}

std::unique_ptr<Transport> createShmTransport(const TransportOptions& opts, const ShmOptions& shm) {
  return std::make_unique<shm::Context>(opts, shm);
}

std::unique_ptr<Transport> createShmTransport(const TransportOptions& opts) {
  return createShmTransport(opts, ShmOptions::fromEnv());
}

namespace shm {

Context::Context(const TransportOptions& opts, const ShmOptions& shm)
    : rank_(opts.rank), size_(opts.size), shm_(shm), who_(str("rank ", opts.rank)),
      scratch_(nullptr, std::free) {
  if (size_ < 1 || rank_ < 0 || rank_ >= size_) {
    throw InvalidArgument(str("shm transport: rank ", rank_, " is outside a job of ", size_, " rank(s)"));
  }
  if (!opts.peers.empty() && opts.peers.size() != static_cast<size_t>(size_)) {
    throw InvalidArgument(str(who_, ": shm transport: peers lists ", opts.peers.size(), " ranks, the job has ", size_));
  }
  peers_ = opts.peers;
  int members = 1;
  for (int p = 0; p < size_; ++p) members += connects(p) ? 1 : 0;
  if (members > 1 && opts.store == nullptr) {
    throw InvalidArgument(str(who_, ": the shm transport needs a store to find its ", members - 1, " peer(s)"));
  }
  if (shm_.ringBytes < kMinRingBytes) {
    throw ConfigError(str(who_, ": shm ring of ", shm_.ringBytes, " bytes is too small; use at least ",
                          kMinRingBytes, " (CHORUS_SHM_RING_BYTES)"));
  }
  shm_.ringBytes = (shm_.ringBytes + 63) / 64 * 64;
  shm_.cmaMinBytes = std::max<uint64_t>(shm_.cmaMinBytes, 1);
  shm_.spinUs = std::max<int64_t>(shm_.spinUs, 0);
  // Every rank of an shm job is on this host: more ranks than the cores we may run on means
  // waiters must yield (see wait).
  cpu_set_t cpus;
  const int cores = sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
  oversubscribed_ = members > cores;

  scratch_.reset(static_cast<uint8_t*>(std::aligned_alloc(64, kScratchBytes)));
  if (!scratch_) throw std::bad_alloc();
  env_.rank = rank_;
  env_.cmaMinBytes = shm_.cmaMinBytes;
  const uint64_t autoChunk = std::min<uint64_t>(shm_.ringBytes / 4, kDefaultChunkBytes);
  env_.chunkBytes = std::min<uint64_t>(shm_.streamChunkBytes > 0 ? shm_.streamChunkBytes : autoChunk, shm_.ringBytes / 2);
  env_.chunkBytes = std::max<uint64_t>(env_.chunkBytes / 8 * 8, 8);
  env_.scratch = scratch_.get();
  env_.scratchBytes = kScratchBytes;
  pairs_.resize(static_cast<size_t>(size_));
  cmaTo_.assign(static_cast<size_t>(size_), false);
  sweepStaleSegments();
  if (members > 1) setup(opts);
  // One host: a mixed transport that uses this one for its host's ranks sets its own map.
  setHosts(std::vector<int>(static_cast<size_t>(size_), 0));
}

void Context::setup(const TransportOptions& opts) {
  const Deadline deadline(opts.timeout);
  auto left = [&] { return Millis(deadline.remainingMs()); };
  Store* store = opts.store;

  if (shm_.cma) allowCmaFromPeers();
  const ProcessIdentity me = selfIdentity();
  probeWord_ = randomWord();

  const std::string name = str("/chorus-", sanitize(opts.jobId), "-", sanitize(opts.prefix), "-r", rank_, "-",
                               me.pid, "-", std::hex, randomWord());
  const size_t bytes = segmentBytes(size_, shm_.ringBytes);
  own_ = SharedSegment::create(name, bytes, who_);
  self_ = new (own_.base()) SegmentHeader{};
  for (int s = 0; s < size_; ++s) new (ringControl(own_.base(), s)) RingControl{};
  self_->version = kSegmentVersion;
  self_->rank = rank_;
  self_->size = size_;
  self_->pid = me.pid;
  self_->pidStartTime = me.startTime;
  self_->pidNamespace = me.pidNamespace;
  self_->ringBytes = shm_.ringBytes;
  self_->probeAddr = reinterpret_cast<uintptr_t>(&probeWord_);
  self_->probeValue = probeWord_;
  self_->magic.store(kSegmentMagic, std::memory_order_release);
  store->set(segKey(opts, rank_), toBytes(str(name, " ", me.pid)));

  std::vector<int> members;  // this rank and the peers it connects to
  for (int p = 0; p < size_; ++p) {
    if (p == rank_ || connects(p)) members.push_back(p);
  }
  peerSegments_.resize(static_cast<size_t>(size_));
  for (int p = 0; p < size_; ++p) {
    if (!connects(p)) continue;
    Bytes value;
    try {
      value = store->get(segKey(opts, p), left());
    } catch (const TimeoutError&) {
      throw TimeoutError(str(who_, ": shm transport setup timed out after ", opts.timeout.count(),
                             " ms waiting for rank(s) ", missingRanks(store, members, [&](int r) { return segKey(opts, r); }),
                             " to publish their segment under '", opts.prefix,
                             "/shm/'; check that every rank started with the same world size and prefix"));
    }
    const std::string text = toString(value);
    const std::string peerName = text.substr(0, text.find(' '));
    SharedSegment seg = SharedSegment::open(peerName, who_);
    auto* h = static_cast<SegmentHeader*>(seg.base());
    if (h->magic.load(std::memory_order_acquire) != kSegmentMagic || h->version != kSegmentVersion ||
        h->rank != p || h->size != size_ || h->ringBytes != shm_.ringBytes ||
        seg.bytes() < segmentBytes(size_, shm_.ringBytes)) {
      throw ConfigError(str(who_, ": the shm segment of rank ", p, " (/dev/shm", peerName, ") says rank ", h->rank,
                            " of ", h->size, " with ", h->ringBytes, "-byte rings; this rank expects rank ", p, " of ",
                            size_, " with ", shm_.ringBytes,
                            "-byte rings: every rank must use the same world size and CHORUS_SHM_RING_BYTES"));
    }
    // Can this rank read the peer's memory? Then the peer may send to it by CMA.
    bool readable = false;
    if (shm_.cma && h->pidNamespace == me.pidNamespace) {
      uint64_t v = 0;
      readable = cmaRead(h->pid, &v, h->probeAddr, sizeof v) == 0 && v == h->probeValue;
      if (!readable) {
        CHORUS_INFO(who_, ": cannot read rank ", p, " (pid ", h->pid,
                    ") by cross-memory attach; its large messages stream through the ring");
      }
    }
    ringControl(own_.base(), p)->cmaReadable.store(readable ? 1 : 0, std::memory_order_release);
    peerSegments_[static_cast<size_t>(p)] = std::move(seg);
  }

  store->set(mappedKey(opts, rank_), toBytes("1"));
  std::vector<std::string> keys;
  for (int r : members) keys.push_back(mappedKey(opts, r));
  try {
    store->wait(keys, left());
  } catch (const TimeoutError&) {
    throw TimeoutError(str(who_, ": shm transport setup timed out after ", opts.timeout.count(),
                           " ms waiting for rank(s) ", missingRanks(store, members, [&](int r) { return mappedKey(opts, r); }),
                           " to map their peers' segments"));
  }
  own_.unlink();

  for (int p = 0; p < size_; ++p) {
    if (!connects(p)) continue;
    void* peerBase = peerSegments_[static_cast<size_t>(p)].base();
    auto* h = static_cast<SegmentHeader*>(peerBase);
    Pair::Endpoints ends{};
    ends.peer = p;
    ends.peerHeader = h;
    ends.outControl = ringControl(peerBase, rank_);
    ends.outData = ringData(peerBase, p, size_, rank_, shm_.ringBytes);
    ends.inControl = ringControl(own_.base(), p);
    ends.inData = ringData(own_.base(), rank_, size_, p, shm_.ringBytes);
    ends.ringBytes = shm_.ringBytes;
    ends.peerProcess = ProcessIdentity{h->pid, h->pidStartTime, h->pidNamespace};
    ends.cmaToPeer = shm_.cma && ends.outControl->cmaReadable.load(std::memory_order_acquire) != 0;
    ends.livenessChecks = h->pidNamespace == me.pidNamespace;
    cmaTo_[static_cast<size_t>(p)] = ends.cmaToPeer;
    pairs_[static_cast<size_t>(p)] = std::make_unique<Pair>(&env_, ends);
  }
}

Context::~Context() {
  close();
  pairs_.clear();
}

bool Context::cmaToPeer(int peer) const {
  return peer >= 0 && peer < size_ && cmaTo_[static_cast<size_t>(peer)];
}

void Context::checkPeer(int peer, const char* op) const {
  if (peer < 0 || peer >= size_ || peer == rank_) {
    throw InvalidArgument(str(who_, ": ", op, " with peer ", peer, ": the peer must be another rank in [0, ", size_,
                              ")"));
  }
  if (!connects(peer)) {
    throw InvalidArgument(str(who_, ": ", op, " with peer ", peer, ": this shm transport does not connect to rank ", peer,
                              " (it is on another host; TransportOptions::peers)"));
  }
  if (closing_.load(std::memory_order_acquire)) {
    throw Error(str(who_, ": ", op, " with peer ", peer, " on a closed shm transport"));
  }
}

RequestPtr Context::isend(int peer, uint64_t tag, uint64_t sig, const void* data, size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  checkPeer(peer, "isend");
  if (data == nullptr && bytes > 0) {
    throw InvalidArgument(str(who_, ": isend of ", bytes, " bytes to rank ", peer, " tag ", tag, " from a null buffer"));
  }
  auto req = std::make_shared<ShmRequest>(Request::Kind::kSend, peer, tag, sig, bytes, data, nullptr, nullptr);
  pairs_[static_cast<size_t>(peer)]->postSend(req);
  return req;
}

RequestPtr Context::irecv(int peer, uint64_t tag, uint64_t sig, void* data, size_t bytes, const RecvReduce* reduce) {
  std::lock_guard<std::mutex> lock(mu_);
  checkPeer(peer, "irecv");
  if (data == nullptr && bytes > 0) {
    throw InvalidArgument(str(who_, ": irecv of ", bytes, " bytes from rank ", peer, " tag ", tag, " into a null buffer"));
  }
  if (reduce != nullptr && bytes % dtypeSize(reduce->dtype) != 0) {
    throw InvalidArgument(str(who_, ": irecv with reduction from rank ", peer, " tag ", tag, ": ", bytes,
                              " bytes is not a whole number of ", dtypeName(reduce->dtype), " elements"));
  }
  auto req = std::make_shared<ShmRequest>(Request::Kind::kRecv, peer, tag, sig, bytes, nullptr, data, reduce);
  pairs_[static_cast<size_t>(peer)]->postRecv(req);
  return req;
}

bool Context::progressAll() {
  bool changed = false;
  for (auto& p : pairs_) {
    if (p) changed |= p->progressSends();
  }
  for (auto& p : pairs_) {
    if (p) changed |= p->progressRecvs();
  }
  return changed;
}

void Context::checkLivenessIfDue() {
  const int64_t now = nowNs();
  if (now - lastLivenessNs_ < kLivenessNs) return;
  lastLivenessNs_ = now;
  for (auto& p : pairs_) {
    if (p) p->checkLiveness();
  }
}

void Context::failAllPending() {
  closed_ = true;
  for (auto& p : pairs_) {
    if (!p) continue;
    const int peer = p->peer();
    p->failAll([&](const ShmRequest& r) {
      return std::make_exception_ptr(Error(str(who_, ": shm transport closed while ",
                                               r.kind == Request::Kind::kSend ? "sending tag " : "receiving tag ", r.tag,
                                               r.kind == Request::Kind::kSend ? " to rank " : " from rank ", peer,
                                               " (close() was called or the transport was destroyed)")));
    });
  }
}

size_t Context::wait(std::span<const RequestPtr> reqs, const Deadline& deadline, WaitMode mode) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t start = nowNs();
  // Oversubscribed, a spin yields at every burst, so it costs the peers nothing: spin longer.
  const int64_t spinNs = (oversubscribed_ ? std::max(shm_.spinUs, kOversubscribedSpinUs) : shm_.spinUs) * 1000;
  for (;;) {
    const uint32_t seen = self_ != nullptr ? self_->doorbell.seq.load(std::memory_order_acquire) : 0;
    if (closing_.load(std::memory_order_acquire)) {
      if (!closed_) failAllPending();
    } else {
      const bool changed = progressAll();
      if (changed) lastChangeNs_ = nowNs();
      checkLivenessIfDue();
      if (const size_t found = waitResult(reqs, mode); found != kPending) return found;
      if (deadline.expired()) return deadlinePassed(reqs, mode, nowNs() - start);
      if (changed) continue;
    }
    if (closed_) {
      if (mode != WaitMode::kAll) {
        throw Error(str(who_, ": waitAny on a closed shm transport (close() was called or the transport was "
                              "destroyed); create a new one"));
      }
      for (const auto& r : reqs) checkDone(*r);
      return reqs.size();
    }
    if (deadline.expired() || self_ == nullptr) return deadlinePassed(reqs, mode, nowNs() - start);
    const int64_t now = nowNs();
    const int64_t left = deadline.remainingNs();  // INT64_MAX for Deadline::never()
    const int64_t end = left > INT64_MAX - now ? INT64_MAX : now + left;
    // Ranks outnumber cores: the peer we wait for may be runnable but not running, so every
    // poll burst yields the core to it; a futex sleep and wake-up would cost far more.
    if (spinOnDoorbell(self_->doorbell, seen, std::min(now + spinNs, end), oversubscribed_ ? 0 : INT64_MAX)) {
      continue;
    }
    // Mid-transfer (something moved a moment ago) the peer is most likely busy copying, not
    // idle: keep polling, yielding the core, rather than pay a futex sleep and wake-up.
    if (lastChangeNs_ + kStreamSpinNs > now &&
        spinOnDoorbell(self_->doorbell, seen, std::min(lastChangeNs_ + kStreamSpinNs, end), kStreamYieldNs)) {
      continue;
    }
    sleepOnDoorbell(self_->doorbell, seen, std::min(kLivenessNs, deadline.remainingNs()));
  }
}

bool Context::test(const RequestPtr& req) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closing_.load(std::memory_order_acquire)) {
    if (!closed_) failAllPending();
  } else if (!req->done) {
    progressAll();
    checkLivenessIfDue();
  }
  return checkDone(*req);
}

void Context::close() {
  closing_.store(true, std::memory_order_seq_cst);
  if (self_ != nullptr) {
    self_->closed.store(1, std::memory_order_seq_cst);
    ringDoorbellAndWake(self_->doorbell);
    for (auto& seg : peerSegments_) {
      if (seg.base() != nullptr) ringDoorbell(static_cast<SegmentHeader*>(seg.base())->doorbell);
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (!closed_) failAllPending();
}

std::string Context::progressOf(const Request& r) const {
  const auto* s = dynamic_cast<const ShmRequest*>(&r);
  const uint64_t moved = s != nullptr ? std::min<uint64_t>(s->moved, s->bytes) : 0;
  return str("(", moved, " of ", r.bytes, " bytes)");
}

}  // namespace shm
}  // namespace chorus::comm
