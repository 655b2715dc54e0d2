// The parameter server's runtime: the comm thread's message loop, the apply pool, and
// checkpoints (design in server.h, messages in protocol.h).
//
// The loop. Every live worker has one 64-byte header receive posted; waitAny returns the
// first that completes. A header is checked field by field before anything is touched; its
// payload (exact size, from the header) is received right after it, on the same thread, since
// the worker sends both back to back. Then:
//   init  the first one fills the shard (a resumed server keeps what it loaded); kAck.
//   push  a codec push (protocol.h, kFlagCodec) is first decoded into a dense gradient of the
//         shard, with a default-configured codec of the header's name, kept per codec.
//         Consistency decides. asp/ssp: kAck at once and the update goes to the apply pool
//         (the comm thread moves on). bsp: the gradient is added to the round's sum; the push
//         that closes the round applies the average on the pool, slice-parallel, and the comm
//         thread waits for it, because the next round must not start before it is in.
//   pull  answered when Consistency allows and the worker's own pushes are applied (so a
//         worker always reads its own writes), and, with backup agreement, once the version
//         the pull asks for is there (protocol.h, kFlagAgree); otherwise queued, and the queue
//         is re-checked after every push, round, decision and leave (the only events that
//         change the answer).
//   bye   the worker leaves; kAck. A final pull (the goodbye with kFlagFinal) leaves too, but
//         the worker stays watched (its header receive stays posted) and gets no kAck: once no
//         worker is left working and none may come back, and every push is applied (a
//         follower's last round decided), it gets the final model as kParams with kFlagFinal,
//         then says a plain goodbye. Until then it gets a keepalive (kAck with kFlagFinal) every
//         quarter of the group's timeout, so its wait is bounded by the others' progress, not
//         by one receive's timeout. If it dies before its answer it counts as failed, and a
//         restarted process may take its place.
// Answers go out with sendAsync; their buffers stay in `outbox` until the sends complete.
//
// Backup agreement (server.h): server 0 sends each round's members from closeRound() before it
// applies; a follower keeps one decision receive posted on server 0, holds each counted push's
// gradient apart (roundGrads) and closes the round in closeFollowed() once it is decided and
// every member's push is in or the member left. Restarted workers: revive() polls the peer
// epochs of failed workers that may come back, and re-admits them.
//
// Checkpoint file (little-endian, written to a temp file, fsynced, renamed over the path):
//   "CPSCKPT3"  u8[32] SHA-256 of the body (everything after it)
//   body: u32 server  u64 fingerprint  i64 version  i64 load  u32 slices
//         f32[load] values
//         per slice: i64 steps  u32 buffers  (u32 name length, name, i64 count, f32[count]) ...
//         u32 workers  i64 clock per worker (its pushes as counted: a restarted server goes on
//         counting from there, and a restarted worker rejoins where the servers' counts say)
// The body is built in memory (a copy of the shard and its optimizer state) so that its digest
// can go in front of it. Loading reads the file whole, after checking that it is a regular file
// no larger than a checkpoint of this shard can be, and verifies the digest before it reads a
// field: a damaged file is refused as a whole, naming the checksum, instead of being parsed.
// "CPSCKPT2" (the same without the clocks) still loads, its clocks from 0 until the workers'
// next pushes say theirs; "CPSCKPT1" (neither digest nor clocks, written by chorus before the
// checksum) loads unverified, with a warning. The server's next checkpoint is a CPSCKPT3.
#include "chorus/ps/server.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <new>
#include <optional>
#include <thread>

#include "chorus/common/error.h"
#include "chorus/common/hmac.h"
#include "chorus/common/logging.h"
#include "chorus/compress/factory.h"
#include "chorus/ps/protocol.h"

namespace chorus::ps {
namespace {

// Header receives stay posted while a worker computes; with no idle limit they must not
// expire (an expired request fails the transport), so they get a deadline far away.
constexpr Millis kForever{int64_t{1000} * 3600 * 24 * 365};
// How often the loop looks for restarted workers (or a restarted coordinator) while one may come.
constexpr Millis kRejoinPoll{100};

double secondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

uint32_t readU32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
uint64_t readU64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Runs update tasks on a few threads. Tasks carry the worker they belong to (-1: none), so
// the comm thread can wait for one worker's updates (read-your-writes) or for all.
class ApplyPool {
 public:
  ApplyPool(int threads, int workers) : perWorker_(static_cast<size_t>(workers), 0) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { loop(); });
  }
  ~ApplyPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    work_.notify_all();
    for (auto& t : threads_) t.join();
  }

  void submit(int worker, std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.emplace_back(worker, std::move(fn));
      ++outstanding_;
      if (worker >= 0) ++perWorker_[static_cast<size_t>(worker)];
    }
    work_.notify_one();
  }
  // Blocks until every task of `worker` has run; rethrows a task's failure.
  void waitWorker(int worker) {
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [&] { return perWorker_[static_cast<size_t>(worker)] == 0 || error_; });
    if (error_) std::rethrow_exception(error_);
  }
  // Blocks until every task has run; rethrows a task's failure.
  void waitAll() {
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [&] { return outstanding_ == 0 || error_; });
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      work_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      auto [worker, fn] = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      std::exception_ptr error;
      try {
        fn();
      } catch (...) {
        error = std::current_exception();
      }
      lock.lock();
      if (error && !error_) error_ = error;
      --outstanding_;
      if (worker >= 0) --perWorker_[static_cast<size_t>(worker)];
      done_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable work_, done_;
  std::deque<std::pair<int, std::function<void()>>> queue_;
  std::vector<int> perWorker_;
  int outstanding_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
  std::vector<std::thread> threads_;
};

// ---- checkpoint file I/O ----

class FileWriter {
 public:
  explicit FileWriter(std::string path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) throw SystemError(str("server checkpoint: cannot create ", path_), errno);
  }
  ~FileWriter() {
    if (fd_ >= 0) ::close(fd_);
  }
  void bytes(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) throw SystemError(str("server checkpoint: writing ", path_), errno);
      p += w;
      n -= static_cast<size_t>(w);
    }
  }
  template <typename T>
  void value(T v) {
    bytes(&v, sizeof v);
  }
  void finish() {
    if (::fsync(fd_) != 0) throw SystemError(str("server checkpoint: fsync of ", path_), errno);
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) throw SystemError(str("server checkpoint: closing ", path_), errno);
  }

 private:
  std::string path_;
  int fd_ = -1;
};

// A checkpoint's body, built in memory so that its SHA-256 can be written in front of it.
class BodyWriter {
 public:
  void bytes(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    body_.insert(body_.end(), p, p + n);
  }
  template <typename T>
  void value(T v) {
    bytes(&v, sizeof v);
  }
  const std::vector<uint8_t>& body() const { return body_; }

 private:
  std::vector<uint8_t> body_;
};

// A checkpoint file's bytes, all of them: refused (naming `who` and the path) when it is not a
// regular file or is larger than `limit`, before anything is read.
std::vector<uint8_t> readWholeFile(const std::string& path, uint64_t limit, const std::string& who) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw SystemError(str("server checkpoint: cannot open ", path), errno);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw SystemError(str("server checkpoint: fstat of ", path), errno);
  if (!S_ISREG(st.st_mode)) {
    throw Error(str(who, ": checkpoint ", path, " is not a regular file; point checkpointPath (output.dir) at a file "
                         "this server writes"));
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size > limit) {
    throw Error(str(who, ": checkpoint ", path, " is ", size, " bytes, more than a checkpoint of this shard can be (",
                    limit, "); it is not this server's checkpoint. Delete it to start this shard from scratch"));
  }
  std::vector<uint8_t> data(static_cast<size_t>(size));
  size_t got = 0;
  while (got < data.size()) {
    const ssize_t r = ::read(fd, data.data() + got, data.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw SystemError(str("server checkpoint: reading ", path), errno);
    if (r == 0) break;  // shrank while read: the field reads below say it ends early
    got += static_cast<size_t>(r);
  }
  data.resize(got);
  return data;
}

// Reads a checkpoint's fields in order from its bytes in memory.
class BodyReader {
 public:
  BodyReader(const uint8_t* data, size_t size, std::string path) : p_(data), left_(size), path_(std::move(path)) {}
  void bytes(void* data, size_t n) {
    if (n > left_) {
      throw Error(str("server checkpoint ", path_, " ends early: it is truncated or not a checkpoint; delete it "
                      "to start from scratch"));
    }
    if (n > 0) std::memcpy(data, p_, n);
    p_ += n;
    left_ -= n;
  }
  template <typename T>
  T value() {
    T v{};
    bytes(&v, sizeof v);
    return v;
  }
  size_t left() const { return left_; }

 private:
  const uint8_t* p_;
  size_t left_;
  std::string path_;
};

constexpr char kCheckpointMagic[8] = {'C', 'P', 'S', 'C', 'K', 'P', 'T', '3'};
constexpr char kCheckpointMagicV2[8] = {'C', 'P', 'S', 'C', 'K', 'P', 'T', '2'};  // no worker clocks
constexpr char kCheckpointMagicV1[8] = {'C', 'P', 'S', 'C', 'K', 'P', 'T', '1'};  // no checksum
// Sanity bound on a name or buffer count read from a file, so a corrupt file cannot make us
// allocate without limit.
constexpr uint32_t kMaxCheckpointBuffers = 64;
constexpr uint32_t kMaxNameBytes = 4096;

}  // namespace

struct Server::Impl {
  Impl(std::shared_ptr<comm::ProcessGroup> g, int serverIndex, std::vector<int> ranks, ShardPlan p, ServerOptions o);

  // One answer in flight: its buffers live until its sends complete.
  struct Outgoing {
    Header head;
    std::array<uint8_t, kHeaderBytes> header;
    std::vector<float> values;  // kParams
    std::string text;           // kError
    std::vector<uint8_t> raw;   // a decision (to other servers)
    std::vector<comm::WorkPtr> works;
  };

  std::shared_ptr<comm::ProcessGroup> group;
  int index;
  std::vector<int> workerRanks;
  ShardPlan plan;
  ServerOptions opts;
  int workers;
  int firstSlice, sliceCount;
  int64_t load;
  uint64_t fingerprint;
  std::vector<int64_t> sliceStart;  // local offset of each slice, plus the end

  std::vector<float> values;
  std::unique_ptr<std::mutex[]> sliceMu;
  std::vector<std::unique_ptr<ServerOptimizer>> optimizers;

  std::mutex consMu;  // guards cons (the comm thread and the apply threads call it)
  Consistency cons;
  int64_t versionBase = 0;  // version loaded from a checkpoint; the protocol's version is base + cons
  bool initialized = false;
  bool resumed = false;

  std::unique_ptr<ApplyPool> pool;
  std::atomic<int64_t> busyNs{0};

  // The comm thread's state.
  // Receive buffers stay put while receives into them are posted; a failing run() aborts the
  // group first, which cancels those receives.
  std::vector<std::unique_ptr<std::array<uint8_t, kHeaderBytes>>> headerBuf;
  std::vector<comm::WorkPtr> headerWork;
  std::vector<bool> live;
  std::vector<bool> pullQueued;
  // The final pull: workers waiting for the final model, and workers sent it that have not
  // said their closing goodbye yet; both are live (watched) but no longer working.
  std::vector<bool> finalWait, finalSent;
  Clock::time_point lastKeepalive = Clock::now();
  // When the last working worker left while failed ones may still come back (the give-up
  // clock of a rejoin); unset while someone works or none may come back.
  std::optional<Clock::time_point> awaySince;
  std::vector<double> roundSum;  // bsp: the open round's gradient sum
  double roundLr = 0;
  int roundCount = 0;
  // Backup agreement (server.h).
  bool coordinator = false, follower = false;
  std::vector<std::vector<float>> roundGrads;  // follower: each counted push's gradient
  std::vector<uint8_t> decisionBuf;
  comm::WorkPtr decisionWork;                   // follower: the posted decision receive
  bool coordinatorDone = false, coordinatorDown = false;
  uint64_t coordinatorEpoch = 0;
  // Pulls ask for a version (protocol.h, kFlagAgree): per worker, the least version its queued
  // pull may be answered with. A follower stops honouring it once a decision shows that server
  // 0 counts versions differently (a restart); so does a server that loaded a checkpoint.
  std::vector<int64_t> pullFloor;
  bool numberingDiffers = false;
  bool agrees() const { return (coordinator || follower) && !resumed && !numberingDiffers; }
  // Restarted workers: the peer epoch last seen per worker, and rejoins so far.
  std::vector<uint64_t> epochSeen;
  std::vector<int> rejoinCount;
  Clock::time_point lastMessage = Clock::now();
  int64_t lastCheckpoint = 0;
  std::list<Outgoing> outbox;  // a list: posted sends point into its elements, which must not move
  std::map<uint16_t, std::unique_ptr<compress::Codec>> decoders;  // by the header's codec id
  ServerReport report;

  int64_t version() {
    std::lock_guard<std::mutex> lock(consMu);
    return versionBase + cons.version();
  }
  std::string who() const { return str("ps server ", index, " (rank ", group->rank(), ")"); }

  void postHeader(int w);
  void serve();
  bool mayRejoin();
  void revive();
  void giveUpOnAway();
  bool working() const;
  bool finalDue();
  void answerFinals();
  void sendKeepalives();
  Millis keepaliveEvery() const { return std::max(Millis(50), group->timeout() / 4); }
  void postDecision();
  void onDecision();
  void sendDecisions(int64_t round, const std::vector<uint8_t>& members);
  void closeFollowed();
  void handle(int w);
  std::string validate(int w, const Header& h);
  void receivePayload(int w, void* data, uint64_t bytes);
  void fail(int w, const std::string& why);
  void onInit(const std::vector<float>& payload);
  std::string decodePush(const Header& h, const std::vector<uint8_t>& message, std::vector<float>& grad);
  void onPush(int w, const Header& h, std::vector<float> grad);
  void closeRound(bool partial);
  void answerPulls();
  void answerPull(int w);
  void send(int w, Op op, std::string text = "");
  Outgoing& queueAnswer(int w, Op op, int64_t v);
  void post(int w, Outgoing& out);
  void sendError(int w, const std::string& msg);
  void pruneOutbox(bool block);
  void maybeCheckpoint(bool force);
  void saveCheckpoint();
  void loadCheckpoint();
  std::vector<float> copyValues();
  void applySlices(const float* grad, double lr);
};

Server::Impl::Impl(std::shared_ptr<comm::ProcessGroup> g, int serverIndex, std::vector<int> ranks, ShardPlan p,
                   ServerOptions o)
    : group(std::move(g)),
      index(serverIndex),
      workerRanks(std::move(ranks)),
      plan(std::move(p)),
      opts(std::move(o)),
      workers(opts.consistency.workers),
      cons(opts.consistency) {
  if (!group) throw InvalidArgument("ps server: the process group is null");
  if (index < 0 || index >= plan.servers()) {
    throw InvalidArgument(str("ps server: server index ", index, " outside [0, ", plan.servers(),
                              ") of the plan; give each server its place in the plan"));
  }
  if (static_cast<int>(workerRanks.size()) != workers) {
    throw InvalidArgument(str("ps server ", index, ": ", workerRanks.size(), " worker ranks but consistency.workers = ",
                              workers, "; they must agree"));
  }
  for (size_t i = 0; i < workerRanks.size(); ++i) {
    const int r = workerRanks[i];
    if (r < 0 || r >= group->size() || r == group->rank()) {
      throw InvalidArgument(str("ps server ", index, ": worker ", i, " has rank ", r, ", which is not another rank of ",
                                "the group of ", group->size()));
    }
    for (size_t j = 0; j < i; ++j) {
      if (workerRanks[j] == r) throw InvalidArgument(str("ps server ", index, ": workers ", j, " and ", i, " share rank ", r));
    }
  }
  if (opts.applyThreads < 1) {
    throw InvalidArgument(str("ps server ", index, ": applyThreads = ", opts.applyThreads, "; need at least 1"));
  }
  if (opts.checkpointEvery < 0) {
    throw InvalidArgument(str("ps server ", index, ": checkpointEvery = ", opts.checkpointEvery, "; must be >= 0"));
  }
  firstSlice = plan.firstSlice(index);
  sliceCount = plan.sliceCount(index);
  load = plan.load(index);
  fingerprint = plan.fingerprint();
  sliceStart.push_back(0);
  // asp/ssp apply every push (grad / N) on its own: the optimizer spreads one round's update
  // over the N pushes (optimizer.h).
  OptimizerOptions optimizer = opts.optimizer;
  optimizer.pushesPerRound = opts.consistency.mode == Mode::kBsp ? 1 : opts.consistency.workers;
  for (int k = 0; k < sliceCount; ++k) {
    const Slice& s = plan.slices()[static_cast<size_t>(firstSlice + k)];
    optimizers.push_back(makeServerOptimizer(optimizer, s.numel));
    sliceStart.push_back(sliceStart.back() + s.numel);
  }
  values.assign(static_cast<size_t>(load), 0.0f);
  sliceMu = std::make_unique<std::mutex[]>(static_cast<size_t>(std::max(sliceCount, 1)));
  for (int w = 0; w < workers; ++w) headerBuf.push_back(std::make_unique<std::array<uint8_t, kHeaderBytes>>());
  headerWork.resize(static_cast<size_t>(workers));
  live.assign(static_cast<size_t>(workers), true);
  pullQueued.assign(static_cast<size_t>(workers), false);
  pullFloor.assign(static_cast<size_t>(workers), 0);
  finalWait.assign(static_cast<size_t>(workers), false);
  finalSent.assign(static_cast<size_t>(workers), false);
  epochSeen.assign(static_cast<size_t>(workers), 0);
  rejoinCount.assign(static_cast<size_t>(workers), 0);
  report.server = index;
  if (opts.workerRestarts < 0) {
    throw InvalidArgument(str("ps server ", index, ": workerRestarts = ", opts.workerRestarts, "; must be >= 0"));
  }
  if (opts.consistency.mode == Mode::kBsp && opts.consistency.backup > 0 && plan.servers() > 1) {
    if (static_cast<int>(opts.serverRanks.size()) != plan.servers()) {
      throw InvalidArgument(str("ps server ", index, ": backup workers on ", plan.servers(), " servers need every ",
                                "server's rank (ServerOptions::serverRanks, ", opts.serverRanks.size(),
                                " given), so that they agree on each round's pushes"));
    }
    if (opts.serverRanks[static_cast<size_t>(index)] != group->rank()) {
      throw InvalidArgument(str("ps server ", index, ": serverRanks[", index, "] = ", opts.serverRanks[static_cast<size_t>(index)],
                                " but this process is rank ", group->rank()));
    }
    coordinator = index == 0;
    follower = !coordinator;
    if (follower) {
      cons = Consistency([&] {
        ConsistencyOptions c = opts.consistency;
        c.followRounds = true;
        return c;
      }());
      roundGrads.resize(static_cast<size_t>(workers));
      decisionBuf.resize(decisionBytes(workers));
    }
  }

  if (opts.resume && !opts.checkpointPath.empty() && ::access(opts.checkpointPath.c_str(), F_OK) == 0) {
    loadCheckpoint();
    resumed = true;
    initialized = true;
    lastCheckpoint = versionBase;
  }
  pool = std::make_unique<ApplyPool>(opts.applyThreads, workers);
}

// ---- the loop ----

// The receive never expires on its own (an expired request would close the transport); the
// idle limit applies to waitAny, across all workers.
void Server::Impl::postHeader(int w) {
  headerWork[static_cast<size_t>(w)] =
      group->recvAsync(workerRanks[static_cast<size_t>(w)], kHeaderTag, headerBuf[static_cast<size_t>(w)]->data(),
                       kHeaderBytes, kForever);
}

void Server::Impl::serve() {
  for (int w = 0; w < workers; ++w) postHeader(w);
  if (follower) postDecision();
  std::vector<comm::WorkPtr> works;
  std::vector<int> owner;  // the worker of each work; -1: the decision receive
  lastMessage = Clock::now();
  for (;;) {
    if (mayRejoin() || coordinatorDown) revive();
    giveUpOnAway();
    if (finalDue()) answerFinals();
    const bool waiters = std::find(finalWait.begin(), finalWait.end(), true) != finalWait.end();
    if (waiters) sendKeepalives();
    works.clear();
    owner.clear();
    for (int w = 0; w < workers; ++w) {
      if (!live[static_cast<size_t>(w)]) continue;
      works.push_back(headerWork[static_cast<size_t>(w)]);
      owner.push_back(w);
    }
    if (works.empty()) {
      if (mayRejoin()) {
        std::this_thread::sleep_for(kRejoinPoll);
        continue;
      }
      // A follower waits for the coordinator's last word, so its decision receive completes.
      if (!decisionWork) return;
      works.push_back(decisionWork);
      owner.push_back(-1);
    } else if (decisionWork) {
      works.push_back(decisionWork);
      owner.push_back(-1);
    }
    pruneOutbox(false);
    const bool polling = mayRejoin() || coordinatorDown || waiters;
    Millis wait = opts.idle.count() > 0 ? opts.idle : kForever;
    if (polling) wait = std::min(wait, waiters ? std::min(kRejoinPoll, keepaliveEvery()) : kRejoinPoll);
    size_t i = 0;
    try {
      i = group->waitAny(works, wait);
    } catch (const TimeoutError& e) {
      const auto quiet = std::chrono::duration_cast<Millis>(Clock::now() - lastMessage);
      if (polling && (opts.idle.count() == 0 || quiet < opts.idle)) continue;
      throw TimeoutError(str(who(), ": no message from any of the ", works.size(), " live workers for ",
                             quiet.count(), " ms (ServerOptions::idle); they are stuck or gone: ", e.what()));
    }
    lastMessage = Clock::now();
    const int w = owner[i];
    if (w < 0) {
      onDecision();
      continue;
    }
    try {
      works[i]->test();
    } catch (const Error& e) {
      fail(w, e.what());
      continue;
    }
    report.bytesReceived += kHeaderBytes;
    handle(w);
  }
}

// A failed worker may still come back while its restarts last; so may a dead coordinator.
bool Server::Impl::mayRejoin() {
  std::lock_guard<std::mutex> lock(consMu);
  for (int w = 0; w < workers; ++w) {
    if (!live[static_cast<size_t>(w)] && rejoinCount[static_cast<size_t>(w)] < opts.workerRestarts &&
        cons.stats()[static_cast<size_t>(w)].failed) {
      return true;
    }
  }
  return false;
}

// Re-admits every failed worker whose place a restarted process has taken, and re-posts the
// decision receive on a restarted coordinator.
void Server::Impl::revive() {
  for (int w = 0; w < workers; ++w) {
    const auto k = static_cast<size_t>(w);
    if (live[k] || rejoinCount[k] >= opts.workerRestarts) continue;
    int64_t clock = 0;
    {
      std::lock_guard<std::mutex> lock(consMu);
      if (!cons.stats()[k].failed) continue;
    }
    const uint64_t epoch = group->peerEpoch(workerRanks[k]);
    if (epoch <= epochSeen[k]) continue;
    epochSeen[k] = epoch;
    ++rejoinCount[k];
    {
      std::lock_guard<std::mutex> lock(consMu);
      clock = cons.onRejoin(w);
    }
    live[k] = true;
    pullQueued[k] = false;
    finalWait[k] = finalSent[k] = false;
    report.rejoinedWorkers.push_back(w);
    postHeader(w);
    CHORUS_INFO(who(), ": a restarted process took the place of worker ", w, " (rank ", workerRanks[k],
                "; restart ", rejoinCount[k], " of ", opts.workerRestarts, "); it resumes at step ", clock);
  }
  if (follower && coordinatorDown) {
    const uint64_t epoch = group->peerEpoch(opts.serverRanks[0]);
    if (epoch > coordinatorEpoch) {
      coordinatorEpoch = epoch;
      coordinatorDown = false;
      CHORUS_INFO(who(), ": a restarted server 0 is back; following its decisions again");
      postDecision();
    }
  }
}

// No worker is working, but a failed one may come back: after the group's timeout without
// one, gives up on every worker still away.
void Server::Impl::giveUpOnAway() {
  if (working() || !mayRejoin()) {
    awaySince.reset();
    return;
  }
  if (!awaySince) {
    awaySince = Clock::now();
    return;
  }
  if (Clock::now() - *awaySince < group->timeout()) return;
  CHORUS_WARN(who(), ": no restarted process took the place of the failed workers within ", group->timeout().count(),
              " ms; ending without them");
  for (int w = 0; w < workers; ++w) rejoinCount[static_cast<size_t>(w)] = opts.workerRestarts;
  awaySince.reset();
}

// A live worker that has not asked for the final model: it may still push.
bool Server::Impl::working() const {
  for (int w = 0; w < workers; ++w) {
    const auto k = static_cast<size_t>(w);
    if (live[k] && !finalWait[k] && !finalSent[k]) return true;
  }
  return false;
}

// The final model is due: someone waits for it, nobody works or may come back, and no counted
// push waits for its round (a follower's last round is decided and applied).
bool Server::Impl::finalDue() {
  if (std::find(finalWait.begin(), finalWait.end(), true) == finalWait.end()) return false;
  if (working() || mayRejoin()) return false;
  std::lock_guard<std::mutex> lock(consMu);
  return cons.roundPushes() == 0;
}

// Every push applied, the model goes to each waiter; their closing goodbyes end the loop.
void Server::Impl::answerFinals() {
  pool->waitAll();
  const int64_t v = version();
  std::vector<float> model = copyValues();
  for (int w = 0; w < workers; ++w) {
    const auto k = static_cast<size_t>(w);
    if (!finalWait[k]) continue;
    finalWait[k] = false;
    finalSent[k] = true;
    Outgoing& out = queueAnswer(w, Op::kParams, v);
    out.head.flags = kFlagFinal;
    out.values = model;
    post(w, out);
    CHORUS_INFO(who(), ": every worker is done; sent worker ", w, " the final model (version ", v, ")");
  }
}

void Server::Impl::sendKeepalives() {
  if (Clock::now() - lastKeepalive < keepaliveEvery()) return;
  lastKeepalive = Clock::now();
  for (int w = 0; w < workers; ++w) {
    if (!finalWait[static_cast<size_t>(w)]) continue;
    Outgoing& out = queueAnswer(w, Op::kAck, version());
    out.head.flags = kFlagFinal;
    post(w, out);
  }
}

void Server::Impl::postDecision() {
  if (coordinatorDone) return;
  decisionWork = group->recvAsync(opts.serverRanks[0], kDecisionTag, decisionBuf.data(), decisionBuf.size(), kForever);
}

// A follower's decision receive completed: the coordinator's round, its end, or its death.
void Server::Impl::onDecision() {
  comm::WorkPtr work = std::move(decisionWork);
  decisionWork.reset();
  try {
    work->test();
  } catch (const Error& e) {
    coordinatorDown = true;
    coordinatorEpoch = group->peerEpoch(opts.serverRanks[0]);
    CHORUS_WARN(who(), ": lost server 0, which decides the rounds of backup workers: ", e.what(),
                "; rounds wait for a restarted server 0");
    return;
  }
  Decision d;
  try {
    d = decodeDecision(decisionBuf, workers);
  } catch (const InvalidArgument& e) {
    throw Error(str(who(), ": a malformed decision from server 0: ", e.what(), "; are the servers the same chorus version?"));
  }
  if (d.round < 0) {
    coordinatorDone = true;
    return;
  }
  ++report.decisions;
  if (!numberingDiffers && d.round != version()) {
    numberingDiffers = true;
    CHORUS_WARN(who(), ": server 0 decided its round ", d.round, " while this server is at version ", version(),
                " (one of them restarted); workers' pulls are no longer aligned to server 0's version");
    answerPulls();
  }
  std::vector<int> dropped;
  {
    std::lock_guard<std::mutex> lock(consMu);
    dropped = cons.decideRound(d.members);
  }
  for (int w : dropped) roundGrads[static_cast<size_t>(w)].clear();
  closeFollowed();
}

// Server 0: the round's members to every other server, before it applies them.
void Server::Impl::sendDecisions(int64_t round, const std::vector<uint8_t>& members) {
  const std::vector<uint8_t> bytes = encodeDecision(Decision{round, members});
  for (int s = 1; s < plan.servers(); ++s) {
    Outgoing& out = outbox.emplace_back();
    out.raw = bytes;
    out.works.push_back(group->sendAsync(opts.serverRanks[static_cast<size_t>(s)], kDecisionTag, out.raw.data(), out.raw.size()));
  }
  if (round >= 0) ++report.decisions;
}

// A follower: once the open round is decided and every member's push is in (or the member
// left), applies the members' average.
void Server::Impl::closeFollowed() {
  std::vector<uint8_t> members;
  {
    std::lock_guard<std::mutex> lock(consMu);
    if (!cons.roundReady()) return;
    members = cons.roundMembers();
  }
  int count = 0;
  std::vector<double> sum(static_cast<size_t>(load), 0.0);
  for (int w = 0; w < workers; ++w) {
    auto& g = roundGrads[static_cast<size_t>(w)];
    if (members[static_cast<size_t>(w)] == 0 || g.empty()) continue;
    for (size_t i = 0; i < g.size(); ++i) sum[i] += g[i];
    ++count;
    g.clear();
    g.shrink_to_fit();
  }
  {
    std::lock_guard<std::mutex> lock(consMu);
    CHORUS_CHECK(count == cons.roundPushes(), "followed round: ", count, " gradients for ", cons.roundPushes(), " pushes");
    const std::vector<uint8_t>& decided = cons.decidedMembers();
    for (int w = 0; w < workers; ++w) {
      if (decided[static_cast<size_t>(w)] != 0 && members[static_cast<size_t>(w)] == 0) {
        CHORUS_WARN(who(), ": worker ", w, "'s push is in round ", versionBase + cons.version(),
                    " on server 0, but the worker failed before it reached this server; this shard's update goes "
                    "without it");
      }
    }
  }
  roundSum = std::move(sum);
  roundCount = count;
  closeRound(false);
  postDecision();
  answerPulls();
}

void Server::Impl::fail(int w, const std::string& why) {
  CHORUS_WARN(who(), ": worker ", w, " (rank ", workerRanks[static_cast<size_t>(w)],
              ") failed and leaves the job: ", why);
  const auto k = static_cast<size_t>(w);
  live[k] = false;
  pullQueued[k] = false;
  report.failedWorkers.push_back(w);
  bool closes;
  {
    std::lock_guard<std::mutex> lock(consMu);
    closes = cons.onLeave(w, true);
    // A final pull's waiter that died before its answer may be restarted; one that had it
    // has done its work.
    if (finalWait[k]) cons.onLostAfterLeave(w);
  }
  finalWait[k] = finalSent[k] = false;
  if (closes) closeRound(true);
  if (follower) closeFollowed();
  answerPulls();
}

// Through recvAsync + wait rather than recv: a receive that fails on its own (the worker died)
// then leaves the transport open for the other workers.
void Server::Impl::receivePayload(int w, void* data, uint64_t bytes) {
  group->recvAsync(workerRanks[static_cast<size_t>(w)], kPayloadTag, data, bytes)->wait();
  report.bytesReceived += bytes;
}

std::string Server::Impl::validate(int w, const Header& h) {
  const uint64_t expected = 4 * static_cast<uint64_t>(load);
  if (h.op != Op::kInit && h.op != Op::kPush && h.op != Op::kPull && h.op != Op::kBye) {
    return str("field op = ", opName(h.op), " is an answer a server sends; a worker sends init, push, pull or bye");
  }
  if (h.worker != w) {
    return str("field worker = ", h.worker, " but the message came from rank ", workerRanks[static_cast<size_t>(w)],
               ", which is worker ", w, "; each worker must send its own index");
  }
  if (h.server != index) {
    return str("field server = ", h.server, ", expected ", index, " (this server's index in the plan)");
  }
  if (h.fingerprint != fingerprint) {
    return str("field fingerprint = ", h.fingerprint, ", expected ", fingerprint,
               ": worker and server built their ShardPlan from different tensors or server counts");
  }
  const bool carriesValues = h.op == Op::kInit || h.op == Op::kPush;
  if (carriesValues && h.firstSlice != firstSlice) {
    return str("field firstSlice = ", h.firstSlice, ", expected ", firstSlice, " (this server's first slice)");
  }
  if (h.flags == kFlagFinal && h.op != Op::kBye) {
    return str("field flags = ", int{h.flags}, " on a ", opName(h.op), ": only a goodbye may ask for the final model");
  }
  if (h.flags == kFlagAgree) {
    return str("field flags = ", int{h.flags}, " on a ", opName(h.op), ": kFlagAgree marks a server's answer to a pull");
  }
  if (h.op == Op::kPull && h.version < 0) {
    return str("field version = ", h.version, ": a pull asks for a version >= 0 (0: any)");
  }
  if (h.flags == kFlagCodec) {
    const auto& names = compress::codecNames();
    if (h.op != Op::kPush) {
      return str("field flags = ", int{h.flags}, " on a ", opName(h.op), ": only a push may carry a codec message");
    }
    if (h.codec < 1 || h.codec > names.size()) {
      std::string known;
      for (size_t i = 0; i < names.size(); ++i) known += str(i ? ", " : "", i + 1, " ", names[i]);
      return str("field codec = ", h.codec, ": this server knows codecs 1 to ", names.size(), " (", known,
                 "); the worker runs another chorus version");
    }
    if (h.payloadBytes == 0 || h.payloadBytes > maxCodecPayload(load)) {
      return str("field payloadBytes = ", h.payloadBytes, " for a ", names[h.codec - 1u], " message: expected 1 to ",
                 maxCodecPayload(load), " bytes for this server's load of ", load, " floats");
    }
  } else if (carriesValues && h.payloadBytes != expected) {
    return str("field payloadBytes = ", h.payloadBytes, ", expected ", expected, " (4 x this server's load of ", load,
               " floats)");
  }
  if (!carriesValues && h.payloadBytes != 0) {
    return str("field payloadBytes = ", h.payloadBytes, ", expected 0: a ", opName(h.op), " carries no payload");
  }
  if (h.op == Op::kPush) {
    if (!std::isfinite(h.lr) || h.lr < 0) {
      return str("field lr = ", h.lr, ": the learning rate must be finite and >= 0");
    }
    const int64_t now = version();
    if (h.version < versionBase || h.version > now) {
      return str("field version = ", h.version, ": a push must be based on a version in [", versionBase, ", ", now,
                 "] (the version of the worker's last pull)");
    }
    if (!initialized) return "push before any init: call Client::init on one worker before pushing";
  }
  return "";
}

void Server::Impl::handle(int w) {
  const auto& bytes = *headerBuf[static_cast<size_t>(w)];
  Header h;
  std::string bad;
  uint64_t claimed = 0;
  try {
    h = decodeHeader(bytes);
    bad = validate(w, h);
    claimed = h.payloadBytes;
  } catch (const InvalidArgument& e) {
    bad = e.what();
    // An unknown op under the right magic still says how much payload follows; under a wrong
    // magic nothing in the header can be trusted, so nothing is drained.
    if (readU32(bytes.data()) == kMagic) claimed = readU64(bytes.data() + 48);
  }

  if (!bad.empty()) {
    if (claimed > kMaxPayloadBytes) {
      sendError(w, bad);
      fail(w, str("it claimed a payload of ", claimed, " bytes (more than ", kMaxPayloadBytes,
                  "), which cannot be drained: ", bad));
      return;
    }
    try {
      if (claimed > 0) {
        std::vector<uint8_t> drop(claimed);
        receivePayload(w, drop.data(), claimed);
      }
    } catch (const Error& e) {
      fail(w, e.what());
      return;
    } catch (const std::bad_alloc&) {
      sendError(w, bad);
      fail(w, str("no memory to drain its payload of ", claimed, " bytes: ", bad));
      return;
    }
    postHeader(w);
    sendError(w, bad);
    return;
  }

  std::vector<float> payload;
  std::vector<uint8_t> message;  // a codec push's payload
  try {
    if (h.flags == kFlagCodec) {
      message.resize(h.payloadBytes);
      receivePayload(w, message.data(), h.payloadBytes);
    } else if (h.payloadBytes > 0) {
      payload.resize(static_cast<size_t>(load));
      receivePayload(w, payload.data(), h.payloadBytes);
    }
  } catch (const Error& e) {
    fail(w, e.what());
    return;
  }
  if (h.flags == kFlagCodec) {
    const std::string why = decodePush(h, message, payload);
    if (!why.empty()) {
      postHeader(w);
      sendError(w, why);
      return;
    }
  }

  switch (h.op) {
    case Op::kInit:
      postHeader(w);
      onInit(payload);
      send(w, Op::kAck);
      answerPulls();
      break;
    case Op::kPush:
      postHeader(w);
      onPush(w, h, std::move(payload));
      break;
    case Op::kPull:
      postHeader(w);
      ++report.pulls;
      if (pullQueued[static_cast<size_t>(w)]) {
        sendError(w, "a pull while this worker's previous pull is still waiting; wait for its answer first");
        break;
      }
      pullQueued[static_cast<size_t>(w)] = true;
      pullFloor[static_cast<size_t>(w)] = h.version;
      answerPulls();
      break;
    case Op::kBye: {
      // A final pull leaves but stays watched, unanswered until the final model is due.
      const bool final = h.flags == kFlagFinal;
      const auto k = static_cast<size_t>(w);
      if (final) {
        postHeader(w);
        finalWait[k] = true;
      } else {
        live[k] = false;
        finalSent[k] = false;
      }
      bool closes;
      {
        std::lock_guard<std::mutex> lock(consMu);
        closes = cons.onLeave(w, false);
      }
      if (closes) closeRound(true);
      if (follower) closeFollowed();
      if (!final) send(w, Op::kAck);
      answerPulls();
      break;
    }
    default:
      break;  // validate() admits worker ops only
  }
  maybeCheckpoint(false);
}

void Server::Impl::onInit(const std::vector<float>& payload) {
  if (initialized) return;  // the first init (or the loaded checkpoint) wins
  for (int k = 0; k < sliceCount; ++k) {
    std::lock_guard<std::mutex> lock(sliceMu[static_cast<size_t>(k)]);
    std::copy(payload.begin() + sliceStart[static_cast<size_t>(k)], payload.begin() + sliceStart[static_cast<size_t>(k) + 1],
              values.begin() + sliceStart[static_cast<size_t>(k)]);
  }
  initialized = true;
}

// The dense gradient of a codec push, or "" and why it is not a valid message for this shard.
std::string Server::Impl::decodePush(const Header& h, const std::vector<uint8_t>& message, std::vector<float>& grad) {
  const std::string& name = compress::codecNames()[h.codec - 1u];
  auto& codec = decoders[h.codec];
  if (!codec) {
    compress::CodecConfig c;
    c.method = name;
    codec = compress::makeCodec(c);
  }
  grad.assign(static_cast<size_t>(load), 0.0f);
  try {
    codec->decodeAdd(message, grad);
  } catch (const InvalidArgument& e) {
    return str("the push's ", name, " message (", message.size(), " bytes) does not decode into this server's ", load,
               " floats: ", e.what());
  }
  ++report.codecPushes;
  return "";
}

// One optimizer step per slice, each under its slice's lock.
void Server::Impl::applySlices(const float* grad, double lr) {
  for (int k = 0; k < sliceCount; ++k) {
    const auto b = static_cast<size_t>(sliceStart[static_cast<size_t>(k)]);
    const auto n = static_cast<size_t>(sliceStart[static_cast<size_t>(k) + 1]) - b;
    std::lock_guard<std::mutex> lock(sliceMu[static_cast<size_t>(k)]);
    optimizers[static_cast<size_t>(k)]->step(std::span<float>(values.data() + b, n),
                                             std::span<const float>(grad + b, n), lr);
  }
}

void Server::Impl::onPush(int w, const Header& h, std::vector<float> grad) {
  ++report.pushes;
  Consistency::PushDecision d;
  try {
    std::lock_guard<std::mutex> lock(consMu);
    d = cons.onPush(w, h.version - versionBase, h.clock);
  } catch (const InvalidArgument& e) {
    sendError(w, e.what());
    return;
  }
  send(w, Op::kAck);
  if (d.verdict == Consistency::Verdict::kApply) {
    // asp/ssp: each push is 1/N of a step (lr applied to grad / N), so N pushes move the
    // parameters about as far as one bsp round of N.
    const double lr = h.lr;
    const float scale = 1.0f / static_cast<float>(workers);
    pool->submit(w, [this, g = std::move(grad), lr, scale]() mutable {
      const auto t0 = Clock::now();
      for (float& x : g) x *= scale;
      applySlices(g.data(), lr);
      {
        std::lock_guard<std::mutex> lock(consMu);
        cons.onApplied();
      }
      busyNs += static_cast<int64_t>(secondsSince(t0) * 1e9);
    });
  } else if (d.verdict == Consistency::Verdict::kAggregate && follower) {
    roundGrads[static_cast<size_t>(w)] = std::move(grad);
    roundLr = h.lr;
    closeFollowed();
  } else if (d.verdict == Consistency::Verdict::kAggregate) {
    if (roundSum.empty()) roundSum.assign(static_cast<size_t>(load), 0.0);
    for (size_t i = 0; i < grad.size(); ++i) roundSum[i] += grad[i];
    ++roundCount;
    roundLr = h.lr;
    if (d.closesRound) closeRound(false);
  }
  answerPulls();
}

// bsp: applies the average of the round's pushes, slice-parallel on the pool, and waits for it
// so the next round starts from the updated parameters.
void Server::Impl::closeRound(bool partial) {
  if (coordinator) {
    std::vector<uint8_t> members;
    int64_t round;
    {
      std::lock_guard<std::mutex> lock(consMu);
      members = cons.roundMembers();
      round = versionBase + cons.version();
    }
    sendDecisions(round, members);
  }
  const auto t0 = Clock::now();
  if (roundCount > 0) {
    auto avg = std::make_shared<std::vector<float>>(static_cast<size_t>(load));
    for (size_t i = 0; i < avg->size(); ++i) (*avg)[i] = static_cast<float>(roundSum[i] / roundCount);
    const double lr = roundLr;
    for (int k = 0; k < sliceCount; ++k) {
      pool->submit(-1, [this, avg, lr, k] {
        const auto b = static_cast<size_t>(sliceStart[static_cast<size_t>(k)]);
        const auto n = static_cast<size_t>(sliceStart[static_cast<size_t>(k) + 1]) - b;
        std::lock_guard<std::mutex> lock(sliceMu[static_cast<size_t>(k)]);
        optimizers[static_cast<size_t>(k)]->step(std::span<float>(values.data() + b, n),
                                                 std::span<const float>(avg->data() + b, n), lr);
      });
    }
    pool->waitAll();
  }
  {
    std::lock_guard<std::mutex> lock(consMu);
    cons.onApplied();
  }
  if (partial) ++report.bspPartialRounds;
  std::fill(roundSum.begin(), roundSum.end(), 0.0);
  roundCount = 0;
  busyNs += static_cast<int64_t>(secondsSince(t0) * 1e9);
}

void Server::Impl::answerPulls() {
  if (!initialized) return;  // pulls wait for the first init
  for (int w = 0; w < workers; ++w) {
    if (!pullQueued[static_cast<size_t>(w)]) continue;
    bool ok;
    {
      std::lock_guard<std::mutex> lock(consMu);
      ok = cons.canPull(w) && (!agrees() || versionBase + cons.version() >= pullFloor[static_cast<size_t>(w)]);
    }
    if (ok) answerPull(w);
  }
}

std::vector<float> Server::Impl::copyValues() {
  std::vector<float> out(static_cast<size_t>(load));
  for (int k = 0; k < sliceCount; ++k) {
    std::lock_guard<std::mutex> lock(sliceMu[static_cast<size_t>(k)]);
    std::copy(values.begin() + sliceStart[static_cast<size_t>(k)], values.begin() + sliceStart[static_cast<size_t>(k) + 1],
              out.begin() + sliceStart[static_cast<size_t>(k)]);
  }
  return out;
}

void Server::Impl::answerPull(int w) {
  pullQueued[static_cast<size_t>(w)] = false;
  pool->waitWorker(w);  // the worker's own pushes are in what it reads
  const auto t0 = Clock::now();
  {
    std::lock_guard<std::mutex> lock(consMu);
    cons.onPull(w);
  }
  // The version is read before the copy: every update it counts is complete, so the copy holds
  // at least those (asp may add a few in flight).
  const int64_t v = version();
  Outgoing& out = queueAnswer(w, Op::kParams, v);
  if (agrees()) out.head.flags = kFlagAgree;
  out.values = copyValues();
  busyNs += static_cast<int64_t>(secondsSince(t0) * 1e9);
  post(w, out);
}

void Server::Impl::send(int w, Op op, std::string text) {
  Outgoing& out = queueAnswer(w, op, version());
  out.text = std::move(text);
  post(w, out);
}

Server::Impl::Outgoing& Server::Impl::queueAnswer(int w, Op op, int64_t v) {
  Outgoing& out = outbox.emplace_back();
  out.head.op = op;
  out.head.worker = w;
  out.head.server = index;
  out.head.fingerprint = fingerprint;
  out.head.version = v;
  {
    std::lock_guard<std::mutex> lock(consMu);
    out.head.clock = cons.stats()[static_cast<size_t>(w)].clock;
  }
  out.head.firstSlice = firstSlice;
  return out;
}

// Sends a queued answer: the header (with the payload's size), then the payload if any.
void Server::Impl::post(int w, Outgoing& out) {
  const void* data = out.values.empty() ? static_cast<const void*>(out.text.data()) : out.values.data();
  const size_t bytes = out.values.empty() ? out.text.size() : out.values.size() * sizeof(float);
  out.head.payloadBytes = bytes;
  out.header = encodeHeader(out.head);
  const int rank = workerRanks[static_cast<size_t>(w)];
  out.works.push_back(group->sendAsync(rank, kHeaderTag, out.header.data(), kHeaderBytes));
  if (bytes > 0) out.works.push_back(group->sendAsync(rank, kPayloadTag, data, bytes));
  report.bytesSent += kHeaderBytes + bytes;
}

void Server::Impl::sendError(int w, const std::string& msg) {
  const std::string text = str(who(), ": ", msg);
  CHORUS_DEBUG(text, " (answered to worker ", w, ")");
  ++report.errorsSent;
  send(w, Op::kError, text);
}

// Drops answers whose sends have completed; with `block`, waits for all of them. A send to a
// worker that died fails here; its header receive reports the failure.
void Server::Impl::pruneOutbox(bool block) {
  std::erase_if(outbox, [&](Outgoing& out) {
    bool done = true;
    for (auto& work : out.works) {
      try {
        if (block) {
          work->wait();
        } else if (!work->test()) {
          done = false;
        }
      } catch (const Error&) {
      }
    }
    return done;
  });
}

// ---- checkpoints ----

void Server::Impl::maybeCheckpoint(bool force) {
  if (opts.checkpointPath.empty()) return;
  const int64_t v = version();
  if (!force && (opts.checkpointEvery <= 0 || v - lastCheckpoint < opts.checkpointEvery)) return;
  pool->waitAll();  // a consistent shard: no update half-applied
  saveCheckpoint();
  lastCheckpoint = version();
}

void Server::Impl::saveCheckpoint() {
  BodyWriter body;
  body.value<uint32_t>(static_cast<uint32_t>(index));
  body.value<uint64_t>(fingerprint);
  body.value<int64_t>(version());
  body.value<int64_t>(load);
  body.value<uint32_t>(static_cast<uint32_t>(sliceCount));
  {
    const std::vector<float> snapshot = copyValues();
    body.bytes(snapshot.data(), snapshot.size() * sizeof(float));
  }
  for (int k = 0; k < sliceCount; ++k) {
    ServerOptimizer::State st;
    {
      std::lock_guard<std::mutex> lock(sliceMu[static_cast<size_t>(k)]);
      st = optimizers[static_cast<size_t>(k)]->save();
    }
    body.value<int64_t>(st.steps);
    body.value<uint32_t>(static_cast<uint32_t>(st.buffers.size()));
    for (size_t b = 0; b < st.buffers.size(); ++b) {
      body.value<uint32_t>(static_cast<uint32_t>(st.names[b].size()));
      body.bytes(st.names[b].data(), st.names[b].size());
      body.value<int64_t>(static_cast<int64_t>(st.buffers[b].size()));
      body.bytes(st.buffers[b].data(), st.buffers[b].size() * sizeof(float));
    }
  }
  {
    std::lock_guard<std::mutex> lock(consMu);
    body.value<uint32_t>(static_cast<uint32_t>(workers));
    for (const WorkerStats& ws : cons.stats()) body.value<int64_t>(ws.clock);
  }
  const Digest digest = sha256(body.body().data(), body.body().size());
  const std::string tmp = str(opts.checkpointPath, ".tmp.", ::getpid());
  {
    FileWriter f(tmp);
    f.bytes(kCheckpointMagic, sizeof kCheckpointMagic);
    f.bytes(digest.data(), digest.size());
    f.bytes(body.body().data(), body.body().size());
    f.finish();
  }
  if (::rename(tmp.c_str(), opts.checkpointPath.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw SystemError(str(who(), ": renaming checkpoint ", tmp, " to ", opts.checkpointPath), err);
  }
}

void Server::Impl::loadCheckpoint() {
  const std::string& path = opts.checkpointPath;
  // The most a checkpoint of this shard can hold: magic, digest, the fixed fields, the values,
  // per slice its step count and at most kMaxCheckpointBuffers named buffers of the slice's
  // size (so at most kMaxCheckpointBuffers times the values in all), and the workers' clocks.
  const auto values64 = static_cast<uint64_t>(load) * sizeof(float);
  const uint64_t limit = sizeof kCheckpointMagic + sizeof(Digest) + 32 + values64 * (1 + kMaxCheckpointBuffers) +
                         4 + 8 * static_cast<uint64_t>(workers) +
                         static_cast<uint64_t>(sliceCount) * (12 + kMaxCheckpointBuffers * (12 + kMaxNameBytes));
  const std::vector<uint8_t> file = readWholeFile(path, limit, str("ps server ", index));
  size_t at = sizeof kCheckpointMagic;
  const bool v3 = file.size() >= sizeof kCheckpointMagic && std::memcmp(file.data(), kCheckpointMagic, sizeof kCheckpointMagic) == 0;
  const bool v2 = file.size() >= sizeof kCheckpointMagicV2 &&
                  std::memcmp(file.data(), kCheckpointMagicV2, sizeof kCheckpointMagicV2) == 0;
  if (v3 || v2) {
    // Verified before any field is read: a damaged file is never half-parsed.
    if (file.size() < at + sizeof(Digest)) {
      throw Error(str("server checkpoint ", path, " ends early: it is truncated or not a checkpoint; delete it "
                      "to start from scratch"));
    }
    Digest stored{};
    std::memcpy(stored.data(), file.data() + at, stored.size());
    at += stored.size();
    const Digest actual = sha256(file.data() + at, file.size() - at);
    if (!constantTimeEqual(stored.data(), actual.data(), stored.size())) {
      throw Error(str("ps server ", index, ": checkpoint ", path, " is corrupt: its SHA-256 checksum does not match "
                      "its contents (stored ", toHex(stored.data(), 8), "..., computed ", toHex(actual.data(), 8),
                      "...), so the file changed after it was written. Nothing was loaded; restore the file from a "
                      "copy, or delete it to start this shard from scratch"));
    }
  } else if (file.size() >= sizeof kCheckpointMagicV1 &&
             std::memcmp(file.data(), kCheckpointMagicV1, sizeof kCheckpointMagicV1) == 0) {
    CHORUS_WARN(who(), ": checkpoint ", path, " is in the older format CPSCKPT1, which has no checksum; loading it "
                "unverified. This server's next checkpoint is written as CPSCKPT3, with one");
  } else {
    throw Error(str("ps server ", index, ": ", path, " is not a parameter-server checkpoint (bad magic); delete it or "
                    "point checkpointPath elsewhere"));
  }
  BodyReader f(file.data() + at, file.size() - at, path);
  const auto server = f.value<uint32_t>();
  const auto fp = f.value<uint64_t>();
  const auto version = f.value<int64_t>();
  const auto fileLoad = f.value<int64_t>();
  const auto slices = f.value<uint32_t>();
  if (fp != fingerprint) {
    throw ConfigError(str("ps server ", index, ": checkpoint ", path, " was written for plan fingerprint ", fp,
                          " but this server's plan has fingerprint ", fingerprint,
                          ": the model's tensors or the number of servers changed. Resume with the same model and "
                          "servers, or delete the checkpoint to start from scratch"));
  }
  if (static_cast<int>(server) != index || fileLoad != load || static_cast<int>(slices) != sliceCount) {
    throw ConfigError(str("ps server ", index, ": checkpoint ", path, " belongs to server ", server, " (", fileLoad,
                          " values in ", slices, " slices), this is server ", index, " (", load, " values in ",
                          sliceCount, " slices); give each server its own checkpoint path"));
  }
  if (version < 0) throw Error(str("ps server ", index, ": checkpoint ", path, " holds a negative version"));
  // Everything is read and checked before the shard changes, so a refused file leaves it as it was.
  std::vector<float> loaded(values.size());
  f.bytes(loaded.data(), loaded.size() * sizeof(float));
  std::vector<ServerOptimizer::State> states(static_cast<size_t>(sliceCount));
  for (int k = 0; k < sliceCount; ++k) {
    ServerOptimizer::State& st = states[static_cast<size_t>(k)];
    st.steps = f.value<int64_t>();
    const auto nbuf = f.value<uint32_t>();
    if (nbuf > kMaxCheckpointBuffers) throw Error(str("ps server ", index, ": checkpoint ", path, " is corrupt"));
    for (uint32_t b = 0; b < nbuf; ++b) {
      const auto len = f.value<uint32_t>();
      if (len > kMaxNameBytes) throw Error(str("ps server ", index, ": checkpoint ", path, " is corrupt"));
      std::string name(len, '\0');
      f.bytes(name.data(), len);
      const auto count = f.value<int64_t>();
      const int64_t sliceNumel = sliceStart[static_cast<size_t>(k) + 1] - sliceStart[static_cast<size_t>(k)];
      if (count != sliceNumel) {
        throw Error(str("ps server ", index, ": checkpoint ", path, " has optimizer buffer '", name, "' of ", count,
                        " values for a slice of ", sliceNumel, "; it is corrupt"));
      }
      std::vector<float> buf(static_cast<size_t>(count));
      f.bytes(buf.data(), buf.size() * sizeof(float));
      st.names.push_back(std::move(name));
      st.buffers.push_back(std::move(buf));
    }
  }
  std::vector<int64_t> clocks;  // CPSCKPT3: each worker's pushes as counted then
  if (v3) {
    const auto n = f.value<uint32_t>();
    if (static_cast<int>(n) != workers) {
      throw ConfigError(str("ps server ", index, ": checkpoint ", path, " was written for ", n, " workers, this job has ",
                            workers, "; resume with the same workers, or delete it to start this shard from scratch"));
    }
    for (uint32_t w = 0; w < n; ++w) {
      clocks.push_back(f.value<int64_t>());
      if (clocks.back() < 0) throw Error(str("ps server ", index, ": checkpoint ", path, " is corrupt (a negative clock)"));
    }
  }
  if (f.left() != 0) {
    throw Error(str("ps server ", index, ": checkpoint ", path, " has ", f.left(),
                    " bytes after its last slice; it is corrupt. Delete it to start this shard from scratch"));
  }
  for (int k = 0; k < sliceCount; ++k) {
    try {
      optimizers[static_cast<size_t>(k)]->restore(states[static_cast<size_t>(k)]);
    } catch (const InvalidArgument& e) {
      throw ConfigError(str("ps server ", index, ": checkpoint ", path, " holds optimizer state that does not fit ",
                            "this server's optimizer (", opts.optimizer.name, "): ", e.what()));
    }
  }
  std::copy(loaded.begin(), loaded.end(), values.begin());
  versionBase = version;
  if (!clocks.empty()) cons.restoreClocks(clocks);
}

// ---- Server ----

Server::Server(std::shared_ptr<comm::ProcessGroup> group, int serverIndex, std::vector<int> workerRanks, ShardPlan plan,
               ServerOptions opts)
    : impl_(std::make_unique<Impl>(std::move(group), serverIndex, std::move(workerRanks), std::move(plan),
                                   std::move(opts))) {}

Server::~Server() = default;

ServerReport Server::run() {
  Impl& s = *impl_;
  const auto t0 = Clock::now();
  s.report.resumedFromCheckpoint = s.resumed;
  try {
    s.serve();
    if (s.coordinator) s.sendDecisions(-1, std::vector<uint8_t>(static_cast<size_t>(s.workers), 0));
  } catch (const std::exception& e) {
    // The receives this server posted (a header per live worker, a decision) and its answers
    // in flight point into buffers that die with it: abort() cancels them first.
    s.group->abort(str(s.who(), " failed: ", e.what()));
    throw;
  } catch (...) {
    s.group->abort(str(s.who(), " failed"));
    throw;
  }
  s.pool->waitAll();
  s.pruneOutbox(true);
  s.maybeCheckpoint(true);
  ServerReport r = s.report;
  r.version = s.version();
  {
    std::lock_guard<std::mutex> lock(s.consMu);
    r.workers = s.cons.stats();
  }
  r.busySeconds = static_cast<double>(s.busyNs.load()) / 1e9;
  r.wallSeconds = secondsSince(t0);
  return r;
}

std::vector<float> Server::values() const { return impl_->copyValues(); }

}  // namespace chorus::ps
