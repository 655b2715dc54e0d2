// The mpi transport's context: MPI's lifetime, the private communicator, the progress loop,
// the native all-reduce, and the store-address exchange for jobs that mpirun started.
//
// Progress: MPI moves bytes only inside MPI calls, so waitAll() (and waitAny(), which stops at
// the first request done or failed) loops over one progress pass
// (test every peer's header receive, then every pending request) under the MPI lock,
// releasing the lock between passes so close() can run from another thread. It busy-polls
// for CHORUS_SPIN_US after the last event, then yields the CPU, and after 2 ms of silence
// sleeps 50 µs between passes, so an idle wait costs little CPU on a shared machine.
//
// Construction: every rank gathers every (rank, size) claim (MPI_Iallgather, bounded by
// opts.timeout), checks them, then splits MPI_COMM_WORLD ordered by chorus rank, so the
// private communicator's ranks are chorus's ranks. A closed context's communicator is kept
// until MPI is finalized rather than freed: freeing it would let MPI reuse its context id,
// and a message still in flight on it (a close notice nobody received) would match there.
//
// Store exchange (mpiExchangeStoreAddress): every rank gathers every host name; rank 0 starts
// the store server first and only then broadcasts its address, port, secret and job id, so
// no client looks for a store that does not exist yet and no port is chosen before it is
// bound. If rank 0 cannot host, it broadcasts the reason instead and every rank throws it.
// Both steps are non-blocking collectives waited on with CHORUS_TIMEOUT_MS.
//
// The native all-reduce is plain MPI_Allreduce: it is the baseline `--algo mpi` measures, and
// MPI_Iallreduce (which a deadline would need) reached about half its bandwidth on 1-64 MiB
// messages when we measured both (OpenMPI 4.1, 2 ranks, bench/peers/mpi_allreduce.c).
#include "chorus/comm/transport/mpi/context.h"

#include "chorus/common/env.h"
#include "chorus/common/error.h"

#ifdef CHORUS_HAVE_MPI

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#include "chorus/common/logging.h"
#include "chorus/common/reduce.h"
#include "chorus/comm/transport/mpi/pair.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CHORUS_CPU_RELAX() _mm_pause()
#else
#define CHORUS_CPU_RELAX() ((void)0)
#endif

#endif  // CHORUS_HAVE_MPI

namespace chorus::comm {

bool mpiLaunched() { return envGet("OMPI_COMM_WORLD_SIZE").has_value() || envGet("PMI_SIZE").has_value(); }

#ifndef CHORUS_HAVE_MPI

namespace {
[[noreturn]] void throwNoMpi() {
  throw Error("chorus was built without MPI: install libopenmpi-dev and rebuild (cmake -DCHORUS_WITH_MPI=ON)");
}
}  // namespace

std::unique_ptr<Transport> createMpiTransport(const TransportOptions&) { throwNoMpi(); }
void mpiExchangeStoreAddress(BootstrapInfo&, std::unique_ptr<TcpStoreServer>*) { throwNoMpi(); }

#else  // CHORUS_HAVE_MPI

namespace {

using mpi::checkMpi;
using mpi::MpiRequest;
using mpi::MpiRequestPtr;

template <DType D, ReduceOp Op>
void halfReduce(void* in, void* inout, int* len, MPI_Datatype*) {
  reduceInto(inout, in, static_cast<size_t>(*len), D, Op);
}

// MPI's lifetime in this process and the lock over chorus's MPI calls. Created on first use;
// its destructor (at normal process exit) finalizes MPI if chorus initialized it.
class MpiRuntime {
 public:
  static MpiRuntime& instance() {
    static MpiRuntime rt;
    return rt;
  }
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  std::mutex& mutex() { return mu_; }

  // The user-defined op for float16/bfloat16 (created on first use). Call under mutex().
  MPI_Op halfOp(DType dtype, ReduceOp op) {
    int d = dtype == DType::kFloat16 ? 0 : 1;
    int o = static_cast<int>(op);
    if (halfOps_[d][o] == MPI_OP_NULL) {
      MPI_User_function* fn = nullptr;
      if (d == 0) {
        fn = op == ReduceOp::kMin   ? halfReduce<DType::kFloat16, ReduceOp::kMin>
             : op == ReduceOp::kMax  ? halfReduce<DType::kFloat16, ReduceOp::kMax>
             : op == ReduceOp::kProd ? halfReduce<DType::kFloat16, ReduceOp::kProd>
                                     : halfReduce<DType::kFloat16, ReduceOp::kSum>;
      } else {
        fn = op == ReduceOp::kMin   ? halfReduce<DType::kBFloat16, ReduceOp::kMin>
             : op == ReduceOp::kMax  ? halfReduce<DType::kBFloat16, ReduceOp::kMax>
             : op == ReduceOp::kProd ? halfReduce<DType::kBFloat16, ReduceOp::kProd>
                                     : halfReduce<DType::kBFloat16, ReduceOp::kSum>;
      }
      checkMpi(MPI_Op_create(fn, 1, &halfOps_[d][o]), -1, -1, "MPI_Op_create");
    }
    return halfOps_[d][o];
  }

  // Keeps a buffer that MPI may still read (a send nobody waits for) until MPI is finalized.
  void keep(std::unique_ptr<std::vector<uint8_t>> buf) {
    if (buf) orphans_.push_back(std::move(buf));
  }
  // Keeps a closed context's communicator until MPI is finalized (see the top of this file).
  void retire(MPI_Comm comm) { retired_.push_back(comm); }
  std::vector<std::unique_ptr<std::vector<uint8_t>>>* orphans() { return &orphans_; }

 private:
  MpiRuntime() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    int provided = 0;
    if (!initialized) {
      int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
      if (rc != MPI_SUCCESS) {
        throw Error(str("MPI_Init_thread failed (error ", rc, "); hint: start the job with mpirun, or pick "
                        "another transport (CHORUS_TRANSPORT=shm or tcp)"));
      }
      ownsInit_ = true;
    } else {
      MPI_Query_thread(&provided);
    }
    if (provided < MPI_THREAD_SERIALIZED) {
      CHORUS_WARN("MPI provides thread level ", provided,
                  " (below MPI_THREAD_SERIALIZED): use chorus's mpi transport from one thread only");
    }
    CHORUS_DEBUG("MPI ready: thread level ", provided, ownsInit_ ? " (initialized by chorus)" : "");
  }

  ~MpiRuntime() {
    std::lock_guard<std::mutex> lk(mu_);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    for (MPI_Comm& c : retired_) MPI_Comm_free(&c);
    for (auto& row : halfOps_) {
      for (auto& op : row) {
        if (op != MPI_OP_NULL) MPI_Op_free(&op);
      }
    }
    if (ownsInit_) MPI_Finalize();
  }

  std::mutex mu_;
  bool ownsInit_ = false;
  MPI_Op halfOps_[2][5] = {{MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL},
                           {MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL}};
  std::vector<std::unique_ptr<std::vector<uint8_t>>> orphans_;
  std::vector<MPI_Comm> retired_;
};

std::string hex(uint64_t v) { return str("0x", std::hex, v); }

using Buffer = std::unique_ptr<std::vector<uint8_t>>;

// Waits for a non-blocking collective on MPI_COMM_WORLD until the deadline, releasing the MPI
// lock between tests. On timeout throws TimeoutError; the request then stays with MPI, so the
// caller hands its buffers to MpiRuntime::keep.
void waitCollective(std::unique_lock<std::mutex>& lk, MPI_Request* req, const Deadline& deadline, int rank,
                    const char* what) {
  const int64_t start = nowNs();
  for (;;) {
    int flag = 0;
    checkMpi(MPI_Test(req, &flag, MPI_STATUS_IGNORE), rank, -1, what);
    if (flag) return;
    if (deadline.expired()) {
      throw TimeoutError(str("rank ", rank, ": ", what, " timed out after ", (nowNs() - start) / 1000000,
                             " ms: not every MPI rank joined it; hint: every rank of the mpirun job must make the "
                             "same call (one may have failed earlier: look at its log), or raise CHORUS_TIMEOUT_MS"));
    }
    lk.unlock();
    if (nowNs() - start < 2000000) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    lk.lock();
  }
}

// Runs `post` (which starts a non-blocking collective into *buf) and waits for it; on failure
// keeps *buf alive with the process, since MPI may still write into it.
template <typename Post>
void collective(MpiRuntime& rt, std::unique_lock<std::mutex>& lk, Buffer& buf, const Deadline& deadline, int rank,
                const char* what, Post post) {
  MPI_Request req = MPI_REQUEST_NULL;
  checkMpi(post(&req), rank, -1, what);
  try {
    waitCollective(lk, &req, deadline, rank, what);
  } catch (...) {
    rt.keep(std::move(buf));
    throw;
  }
}

// The datatype and op MPI_Allreduce runs for (dtype, op); kAvg runs as a sum.
void mpiTypeAndOp(MpiRuntime& rt, DType dtype, ReduceOp op, MPI_Datatype* dt, MPI_Op* mop) {
  ReduceOp base = op == ReduceOp::kAvg ? ReduceOp::kSum : op;
  switch (dtype) {
    case DType::kFloat32: *dt = MPI_FLOAT; break;
    case DType::kFloat64: *dt = MPI_DOUBLE; break;
    case DType::kInt32: *dt = MPI_INT32_T; break;
    case DType::kInt64: *dt = MPI_INT64_T; break;
    case DType::kUInt8: *dt = MPI_UINT8_T; break;
    case DType::kFloat16:
    case DType::kBFloat16:
      *dt = MPI_UINT16_T;
      *mop = rt.halfOp(dtype, base);
      return;
    default: throw InvalidArgument(str("nativeAllreduce: unknown dtype code ", static_cast<int>(dtype)));
  }
  switch (base) {
    case ReduceOp::kSum: *mop = MPI_SUM; break;
    case ReduceOp::kMin: *mop = MPI_MIN; break;
    case ReduceOp::kMax: *mop = MPI_MAX; break;
    case ReduceOp::kProd: *mop = MPI_PROD; break;
    default: throw InvalidArgument(str("nativeAllreduce: unknown reduce op code ", static_cast<int>(op)));
  }
}

// This host's first non-loopback IPv4 address that is up, or "" if it has none.
std::string firstExternalIpv4() {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return "";
  std::string found;
  for (ifaddrs* it = list; it != nullptr && found.empty(); it = it->ifa_next) {
    if (it->ifa_addr == nullptr || it->ifa_addr->sa_family != AF_INET) continue;
    if (!(it->ifa_flags & IFF_UP) || (it->ifa_flags & IFF_LOOPBACK)) continue;
    char text[INET_ADDRSTRLEN];
    const auto* sin = reinterpret_cast<const sockaddr_in*>(it->ifa_addr);
    if (inet_ntop(AF_INET, &sin->sin_addr, text, sizeof(text)) != nullptr) found = text;
  }
  freeifaddrs(list);
  return found;
}

}  // namespace

mpi::Context::Context(const TransportOptions& opts) : rank_(opts.rank), size_(opts.size) {
  MpiRuntime& rt = MpiRuntime::instance();
  std::unique_lock<std::mutex> lk(rt.mutex());
  const Deadline deadline(opts.timeout);
  int worldSize = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &worldSize);
  // Every rank checks the same gathered (rank, size) table, so all of them throw or none.
  // The gather has a deadline; once it is done every rank is here, so the split that follows
  // cannot hang.
  const size_t n = static_cast<size_t>(worldSize);
  Buffer buf = std::make_unique<std::vector<uint8_t>>((2 + 2 * n) * sizeof(int));
  int* mine = reinterpret_cast<int*>(buf->data());
  int* all = mine + 2;
  mine[0] = opts.rank;
  mine[1] = opts.size;
  collective(rt, lk, buf, deadline, opts.rank, "creating the mpi transport (MPI_Iallgather of ranks)",
             [&](MPI_Request* r) { return MPI_Iallgather(mine, 2, MPI_INT, all, 2, MPI_INT, MPI_COMM_WORLD, r); });
  std::vector<int> seen(n, 0);
  for (int w = 0; w < worldSize; ++w) {
    int r = all[2 * w];
    int s = all[2 * w + 1];
    if (s != worldSize) {
      throw ConfigError(str("rank ", opts.rank, ": the mpi transport needs every rank's world size to equal the MPI "
                            "world size ", worldSize, ", but MPI rank ", w, " has ", s,
                            "; hint: start every rank with one `mpirun -n N` and let chorus read OMPI_COMM_WORLD_*"));
    }
    if (r < 0 || r >= worldSize || seen[r]++) {
      throw ConfigError(str("rank ", opts.rank, ": the mpi transport needs the chorus ranks to be 0..", worldSize - 1,
                            " once each, but MPI rank ", w, " claims rank ", r,
                            "; hint: check CHORUS_RANK/RANK against OMPI_COMM_WORLD_RANK"));
    }
  }
  checkMpi(MPI_Comm_split(MPI_COMM_WORLD, 0, opts.rank, &comm_), rank_, -1, "MPI_Comm_split");
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  int* ub = nullptr;
  int flag = 0;
  MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag);
  int tagUpperBound = flag && ub != nullptr ? *ub : 32767;
  spinNs_ = std::max<int64_t>(0, envInt("CHORUS_SPIN_US")) * 1000;
  pairs_.resize(static_cast<size_t>(size_));
  for (int p = 0; p < size_; ++p) {
    if (p != rank_) pairs_[p] = std::make_unique<mpi::Pair>(rank_, p, comm_, tagUpperBound);
  }
}

mpi::Context::~Context() {
  close();
  MpiRuntime& rt = MpiRuntime::instance();
  std::lock_guard<std::mutex> lk(rt.mutex());
  if (comm_ != MPI_COMM_NULL) rt.retire(comm_);
}

void mpi::Context::checkOpen(const char* op) const {
  if (closed_.load()) {
    throw Error(str("rank ", rank_, ": ", op, " on a closed mpi transport; hint: the transport was closed (by "
                    "close(), a failure or shutdown) before this call"));
  }
}

void mpi::Context::checkPeer(int peer, const char* op) const {
  if (peer < 0 || peer >= size_ || peer == rank_) {
    throw InvalidArgument(str("rank ", rank_, ": ", op, " to peer ", peer, ": the peer must be another rank in [0, ",
                              size_, ")"));
  }
}

RequestPtr mpi::Context::isend(int peer, uint64_t tag, uint64_t sig, const void* data, size_t bytes) {
  checkPeer(peer, "isend");
  if (data == nullptr && bytes > 0) throw InvalidArgument(str("rank ", rank_, ": isend of ", bytes, " bytes from null"));
  std::lock_guard<std::mutex> lk(MpiRuntime::instance().mutex());
  checkOpen("isend");
  auto req = std::make_shared<MpiRequest>(Request::Kind::kSend, peer, tag, sig, bytes);
  req->rank = rank_;
  active_.push_back(req);
  pairs_[peer]->postSend(req, data);
  return req;
}

RequestPtr mpi::Context::irecv(int peer, uint64_t tag, uint64_t sig, void* data, size_t bytes,
                             const RecvReduce* reduce) {
  checkPeer(peer, "irecv");
  if (data == nullptr && bytes > 0) throw InvalidArgument(str("rank ", rank_, ": irecv of ", bytes, " bytes into null"));
  if (reduce != nullptr && bytes % dtypeSize(reduce->dtype) != 0) {
    throw InvalidArgument(str("rank ", rank_, ": irecv with reduce from peer ", peer, ": ", bytes,
                              " bytes is not a whole number of ", dtypeName(reduce->dtype), " elements"));
  }
  std::lock_guard<std::mutex> lk(MpiRuntime::instance().mutex());
  checkOpen("irecv");
  auto req = std::make_shared<MpiRequest>(Request::Kind::kRecv, peer, tag, sig, bytes);
  req->rank = rank_;
  req->data = data;
  if (reduce != nullptr) req->reduce = *reduce;
  active_.push_back(req);
  pairs_[peer]->postRecv(req);
  return req;
}

bool mpi::Context::progressLocked() {
  bool any = false;
  for (auto& pair : pairs_) {
    if (pair) any |= pair->pollHeaders();
  }
  for (size_t i = 0; i < active_.size();) {
    MpiRequest& req = *active_[i];
    bool finished = false;
    try {
      finished = req.progress();
    } catch (const Error&) {
      req.fail(std::current_exception());
      for (MPI_Request& r : req.mpi) {
        if (r != MPI_REQUEST_NULL) MPI_Request_free(&r);
      }
      req.mpi.clear();
      MpiRuntime::instance().keep(std::make_unique<std::vector<uint8_t>>(std::move(req.buffer)));
      finished = true;
    }
    if (finished) {
      active_[i] = std::move(active_.back());
      active_.pop_back();
      any = true;
    } else {
      ++i;
    }
  }
  failSendsToClosedPeers();
  return any;
}

void mpi::Context::failSendsToClosedPeers() {
  for (size_t i = 0; i < active_.size();) {
    MpiRequest& req = *active_[i];
    if (req.kind != Request::Kind::kSend || !pairs_[req.peer]->peerClosed()) {
      ++i;
      continue;
    }
    // The peer cancelled its receives before it said it closed, so MPI will never match
    // these sends; free them and keep their header buffer alive with the process.
    for (MPI_Request& r : req.mpi) {
      if (r != MPI_REQUEST_NULL) MPI_Request_free(&r);
    }
    req.mpi.clear();
    MpiRuntime::instance().keep(std::make_unique<std::vector<uint8_t>>(std::move(req.buffer)));
    req.fail(std::make_exception_ptr(
        PeerError(str("rank ", rank_, ": send of ", req.bytes, " bytes under tag ", hex(req.tag), " to peer ", req.peer,
                      " failed: the peer closed its mpi transport first; hint: the peer stopped (an error or "
                      "shutdown), look at its log"),
                  req.peer)));
    active_[i] = std::move(active_.back());
    active_.pop_back();
  }
}

std::string mpi::Context::progressOf(const Request& r) const {
  auto* m = static_cast<const MpiRequest*>(&r);
  if (r.kind == Request::Kind::kSend) return str("(", r.bytes, " bytes, not yet received)");
  return str("(", r.bytes, m->matched ? " bytes, in transfer)" : " bytes, the peer has not sent it)");
}

size_t mpi::Context::wait(std::span<const RequestPtr> reqs, const Deadline& deadline, WaitMode mode) {
  auto& mu = MpiRuntime::instance().mutex();
  const char* op = mode == WaitMode::kAll ? "waitAll" : "waitAny";
  int64_t start = nowNs();
  int64_t lastEvent = start;
  for (;;) {
    bool progressed = false;
    {
      std::lock_guard<std::mutex> lk(mu);
      if (mode != WaitMode::kAll) {
        // A closed transport has failed every request: that is no answer to "which one".
        checkOpen(op);
        progressed = progressLocked();
      } else if (!closed_.load()) {
        progressed = progressLocked();
      }
      if (const size_t found = waitResult(reqs, mode); found != kPending) return found;
      checkOpen(op);
      if (deadline.expired()) return deadlinePassed(reqs, mode, nowNs() - start);
    }
    int64_t now = nowNs();
    if (progressed) lastEvent = now;
    int64_t idle = now - lastEvent;
    if (idle < spinNs_) {
      CHORUS_CPU_RELAX();
    } else if (idle < spinNs_ + 2000000) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
}

bool mpi::Context::test(const RequestPtr& req) {
  std::lock_guard<std::mutex> lk(MpiRuntime::instance().mutex());
  if (!closed_.load()) progressLocked();
  if (checkDone(*req)) return true;
  checkOpen("test");
  return false;
}

void mpi::Context::close() {
  MpiRuntime& rt = MpiRuntime::instance();
  std::lock_guard<std::mutex> lk(rt.mutex());
  if (closed_.exchange(true)) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  auto err = std::make_exception_ptr(Error(str("rank ", rank_, ": the mpi transport was closed while this request "
                                               "was pending; hint: close() ran before the operation finished")));
  if (!finalized) {
    // Receives first: cancel them (one already in transfer completes), so the close notice
    // the pairs send next tells peers that no receive of ours will match their sends.
    for (auto& req : active_) {
      if (req->kind != Request::Kind::kRecv) continue;
      for (MPI_Request& r : req->mpi) {
        if (r == MPI_REQUEST_NULL) continue;
        MPI_Cancel(&r);
        Deadline bound(Millis(2000));
        int flag = 0;
        while (!flag && !bound.expired()) MPI_Test(&r, &flag, MPI_STATUS_IGNORE);
        if (!flag) MPI_Request_free(&r);
      }
    }
    for (auto& req : active_) {
      if (req->kind != Request::Kind::kSend) continue;
      int flag = 0;
      MPI_Testall(static_cast<int>(req->mpi.size()), req->mpi.data(), &flag, MPI_STATUSES_IGNORE);
      if (!flag) {
        for (MPI_Request& r : req->mpi) {
          if (r != MPI_REQUEST_NULL) MPI_Request_free(&r);
        }
      }
    }
    for (auto& pair : pairs_) {
      if (pair) pair->close(err, rt.orphans());
    }
  }
  for (auto& req : active_) {
    req->mpi.clear();
    if (!req->buffer.empty()) rt.keep(std::make_unique<std::vector<uint8_t>>(std::move(req->buffer)));
    req->fail(err);
  }
  active_.clear();
}

bool mpi::Context::nativeAllreduce(void* data, size_t count, DType dtype, ReduceOp op) {
  if (data == nullptr && count > 0) throw InvalidArgument(str("rank ", rank_, ": nativeAllreduce of null data"));
  MpiRuntime& rt = MpiRuntime::instance();
  {
    std::lock_guard<std::mutex> lk(rt.mutex());
    checkOpen("nativeAllreduce");
    MPI_Datatype dt = MPI_DATATYPE_NULL;
    MPI_Op mop = MPI_OP_NULL;
    mpiTypeAndOp(rt, dtype, op, &dt, &mop);
    // MPI counts are int: large buffers go in pieces.
    constexpr size_t kMaxCount = size_t(1) << 30;
    auto* p = static_cast<uint8_t*>(data);
    size_t esize = dtypeSize(dtype);
    for (size_t off = 0; off < count; off += kMaxCount) {
      int n = static_cast<int>(std::min(kMaxCount, count - off));
      checkMpi(MPI_Allreduce(MPI_IN_PLACE, p + off * esize, n, dt, mop, comm_), rank_, -1, "MPI_Allreduce");
    }
  }
  finishReduce(data, count, dtype, op, size_);
  return true;
}

std::unique_ptr<Transport> createMpiTransport(const TransportOptions& opts) {
  return std::make_unique<mpi::Context>(opts);
}

void mpiExchangeStoreAddress(BootstrapInfo& info, std::unique_ptr<TcpStoreServer>* server) {
  MpiRuntime& rt = MpiRuntime::instance();
  std::unique_lock<std::mutex> lk(rt.mutex());
  const Deadline deadline(defaultTimeout());
  int rank = 0;
  int size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (info.rank != rank || info.worldSize != size) {
    throw ConfigError(str("rank ", info.rank, " of ", info.worldSize, ": the environment disagrees with MPI (rank ",
                          rank, " of ", size, "); hint: unset CHORUS_RANK/RANK when starting with mpirun"));
  }
  constexpr int kHostLen = 256;
  Buffer hostBuf = std::make_unique<std::vector<uint8_t>>(static_cast<size_t>(kHostLen) * (1 + size), 0);
  char* host = reinterpret_cast<char*>(hostBuf->data());
  const char* hosts = host + kHostLen;
  gethostname(host, kHostLen - 1);
  collective(rt, lk, hostBuf, deadline, rank, "the store address exchange (MPI_Iallgather of host names)",
             [&](MPI_Request* r) {
               return MPI_Iallgather(host, kHostLen, MPI_CHAR, hostBuf->data() + kHostLen, kHostLen, MPI_CHAR,
                                     MPI_COMM_WORLD, r);
             });

  // Rank 0 hosts first, then broadcasts the address or "error reason".
  constexpr int kMsgLen = 4096;
  Buffer msg = std::make_unique<std::vector<uint8_t>>(kMsgLen, 0);
  std::exception_ptr hostError;
  if (rank == 0) {
    std::string text;
    try {
      if (server == nullptr) throw InvalidArgument("mpiExchangeStoreAddress: rank 0 needs a place for the server");
      bool oneHost = true;
      for (int r = 1; r < size; ++r) oneHost = oneHost && std::strncmp(hosts + r * kHostLen, host, kHostLen) == 0;
      std::string addr = oneHost ? "127.0.0.1" : firstExternalIpv4();
      if (addr.empty()) {
        throw ConfigError(str("rank 0 (host ", host, ") has no non-loopback IPv4 address for the store the other "
                              "hosts must reach; hint: set MASTER_ADDR and MASTER_PORT (or CHORUS_STORE_ADDR/PORT)"));
      }
      std::string secret = info.secret.empty() ? makeSecret() : info.secret;
      std::string jobId = info.jobId.empty() ? "mpi-" + makeSecret().substr(0, 12) : info.jobId;
      StoreServerOptions so;
      so.bindAddr = addr;
      so.secret = secret;
      *server = std::make_unique<TcpStoreServer>(so);
      text = str("ok\n", addr, "\n", (*server)->port(), "\n", secret, "\n", jobId);
    } catch (const std::exception& e) {
      hostError = std::current_exception();
      text = str("error ", e.what());
    }
    std::strncpy(reinterpret_cast<char*>(msg->data()), text.c_str(), kMsgLen - 1);
  }
  collective(rt, lk, msg, deadline, rank, "the store address exchange (MPI_Ibcast from rank 0)",
             [&](MPI_Request* r) { return MPI_Ibcast(msg->data(), kMsgLen, MPI_CHAR, 0, MPI_COMM_WORLD, r); });
  if (hostError) std::rethrow_exception(hostError);
  std::string text(reinterpret_cast<const char*>(msg->data()));
  if (text.rfind("error ", 0) == 0 || text.empty()) {
    throw Error(str("rank ", rank, ": rank 0 could not host the store: ", text.size() > 6 ? text.substr(6) : std::string("(no reason given)")));
  }
  // "ok\naddr\nport\nsecret\njobid"
  std::vector<std::string> fields;
  for (size_t pos = 0; pos <= text.size();) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    fields.push_back(text.substr(pos, nl - pos));
    pos = nl + 1;
  }
  int port = 0;
  if (fields.size() == 5) port = std::atoi(fields[2].c_str());
  if (fields.size() != 5 || fields[0] != "ok" || port <= 0 || port > 65535) {
    throw Error(str("rank ", rank, ": could not parse the store address rank 0 broadcast: '", text, "'"));
  }
  const std::string& addr = fields[1];
  const std::string& secret = fields[3];
  const std::string& jobId = fields[4];
  info.storeAddr = addr;
  info.storePort = port;
  info.secret = secret;
  info.jobId = jobId;
  info.hostStore = false;
  info.needsStoreFromMpi = false;
  if (rank != 0 && server != nullptr) server->reset();
}

#endif  // CHORUS_HAVE_MPI

}  // namespace chorus::comm
