// The local launcher. The steps of one job:
//
//   1. Host the rendezvous store (TcpStoreServer on --store-addr, an ephemeral port) with a
//      fresh job secret and job id, so the ranks need nothing but their environment.
//   2. Resolve the program on PATH once, build every rank's argv and environment, then
//      fork+exec each rank. Everything the child does between fork and exec is an
//      async-signal-safe system call (the store's thread may hold locks at fork time):
//      its own process group, default signal dispositions, death with the launcher, stdin
//      from /dev/null, stdout/stderr onto pipes. A close-on-exec pipe reports an exec failure.
//   3. One poll() loop watches the ranks' pipes and a self-pipe that the SIGCHLD, SIGINT and
//      SIGTERM handlers write to. Pipe data is cut into lines and each line is written with a
//      "[rank K] " prefix in one write, so lines of different ranks never interleave; a
//      partial last line is flushed when its pipe closes.
//   4. Exits are reaped with waitpid(WNOHANG). The first rank that exits non-zero or by a
//      signal makes the launcher send SIGTERM to every other rank's process group, and
//      SIGKILL to any still alive after the grace period. SIGINT/SIGTERM sent to the launcher
//      are forwarded the same way; a second one sends SIGKILL at once.
//   5. When every rank has exited, the pipes are drained (a rank's own children may still
//      hold them; the drain stops after a second), the summary is printed, and the store
//      server is shut down when it goes out of scope.
#include "launch.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <map>
#include <set>
#include <thread>

#include "args.h"
#include "chorus/common/clock.h"
#include "chorus/common/env.h"
#include "chorus/common/error.h"
#include "chorus/common/hmac.h"
#include "chorus/comm/rendezvous/bootstrap.h"
#include "chorus/comm/rendezvous/store.h"

extern char** environ;

namespace chorus::tools {

namespace {

constexpr size_t kReadChunk = 64 * 1024;
// A line longer than this is written out without waiting for its newline.
constexpr size_t kMaxLine = 64 * 1024;
constexpr Millis kDrainAfterExit{1000};

// State the signal handler touches: only sig_atomic_t flags and the self-pipe.
int gWakeWrite = -1;
pid_t gLauncherPid = 0;
volatile sig_atomic_t gInterrupts = 0;    // SIGINT/SIGTERM received so far
volatile sig_atomic_t gLastInterrupt = 0;  // which one came last
volatile sig_atomic_t gGrows = 0;          // SIGUSR1 received so far: grow an elastic job

extern "C" void onLauncherSignal(int sig) {
  // A rank between fork and exec still runs this handler: it must not act as the launcher.
  if (getpid() != gLauncherPid) _exit(128 + sig);
  int saved = errno;
  if (sig == SIGINT || sig == SIGTERM) {
    gLastInterrupt = sig;
    gInterrupts = gInterrupts + 1;
  }
  if (sig == SIGUSR1) gGrows = gGrows + 1;
  char b = 0;
  // Non-blocking: when the pipe is full a wake-up is already pending.
  ssize_t ignored = write(gWakeWrite, &b, 1);
  (void)ignored;
  errno = saved;
}

// Worker ids as "0,1,3" (the store's members value and the launcher's messages).
std::string idList(const std::vector<int>& ids) {
  std::string out;
  for (int id : ids) out += str(out.empty() ? "" : ",", id);
  return out;
}

std::string signalName(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev != nullptr ? str("SIG", abbrev) : str("signal ", sig);
}

std::string describeStatus(int status) {
  if (WIFEXITED(status)) return str("exited with status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    return str("was killed by signal ", sig, " (", signalName(sig), ")");
  }
  return str("ended with wait status ", status);
}

int exitCodeOf(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

std::string plural(size_t n, const char* word) { return str(n, " ", word, n == 1 ? "" : "s"); }

// Writes all of data to fd, retrying EINTR and waiting out EAGAIN. Returns false when the
// stream is gone (EPIPE, a closed terminal): the caller stops writing to it.
bool writeAll(int fd, const char* data, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, data, n);
    if (w > 0) {
      data += w;
      n -= static_cast<size_t>(w);
    } else if (w < 0 && errno == EINTR) {
      continue;
    } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      struct pollfd p = {fd, POLLOUT, 0};
      ::poll(&p, 1, 1000);
    } else {
      return false;
    }
  }
  return true;
}

void closeFd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

void makePipe(int fds[2]) {
  if (::pipe2(fds, O_CLOEXEC) != 0) throw SystemError("pipe2 for a rank's output", errno);
}

// One stream (stdout or stderr) of one rank, cut into prefixed lines.
struct LineStream {
  int fd = -1;       // read end of the pipe; -1 when closed or not piped
  int target = 1;    // the launcher's fd the lines go to
  std::string prefix;
  std::string buf;
  bool* targetOk = nullptr;  // cleared when the target stream is gone

  void emit(std::string_view text) {
    if (*targetOk) *targetOk = writeAll(target, text.data(), text.size());
  }

  // Reads what is available; returns false at end of stream.
  bool readSome() {
    char chunk[kReadChunk];
    ssize_t r;
    do {
      r = ::read(fd, chunk, sizeof chunk);
    } while (r < 0 && errno == EINTR);
    if (r <= 0) {
      if (r < 0 && errno == EAGAIN) return true;
      flushPartial();
      closeFd(fd);
      return false;
    }
    buf.append(chunk, static_cast<size_t>(r));
    std::string out;
    size_t start = 0;
    for (size_t nl; (nl = buf.find('\n', start)) != std::string::npos; start = nl + 1) {
      out += prefix;
      out.append(buf, start, nl + 1 - start);
    }
    buf.erase(0, start);
    if (buf.size() >= kMaxLine) {
      out += prefix + buf + "\n";
      buf.clear();
    }
    if (!out.empty()) emit(out);
    return true;
  }

  void flushPartial() {
    if (!buf.empty()) emit(prefix + buf + "\n");
    buf.clear();
  }
};

struct RankProc {
  int rank = 0;  // the process slot (the launch rank)
  int id = 0;    // elastic jobs: the worker id of the process in this slot (else = rank)
  bool spare = false;  // elastic: a standby worker not yet called into a generation
  pid_t pid = -1;
  bool running = false;
  int status = 0;
  LineStream out, err;
};

// Installs the launcher's signal handlers and restores the previous ones on destruction.
class SignalGuard {
 public:
  SignalGuard() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) throw SystemError("pipe2 for the launcher's signals", errno);
    wakeRead_ = fds[0];
    gWakeWrite = fds[1];
    gLauncherPid = ::getpid();
    gInterrupts = 0;
    gLastInterrupt = 0;
    gGrows = 0;
    struct sigaction sa {};
    sa.sa_handler = onLauncherSignal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (int sig : {SIGINT, SIGTERM, SIGCHLD, SIGPIPE, SIGUSR1}) {
      struct sigaction old {};
      ::sigaction(sig, nullptr, &old);
      saved_.push_back({sig, old});
      // A shell starts background jobs with SIGINT ignored; keep that choice.
      if (sig == SIGINT && old.sa_handler == SIG_IGN) continue;
      struct sigaction mine = sa;
      if (sig == SIGPIPE) mine.sa_handler = SIG_IGN;  // a closed stdout must not kill the launcher
      if (sig == SIGCHLD) mine.sa_flags |= SA_NOCLDSTOP;
      ::sigaction(sig, &mine, nullptr);
    }
  }
  ~SignalGuard() {
    for (auto& [sig, old] : saved_) ::sigaction(sig, &old, nullptr);
    closeFd(gWakeWrite);
    closeFd(wakeRead_);
  }
  SignalGuard(const SignalGuard&) = delete;
  SignalGuard& operator=(const SignalGuard&) = delete;

  int wakeFd() const { return wakeRead_; }
  // Whether the launcher found `sig` ignored: its ranks inherit that.
  bool wasIgnored(int sig) const {
    for (const auto& [s, old] : saved_) {
      if (s == sig) return old.sa_handler == SIG_IGN;
    }
    return false;
  }
  void drain() const {
    char buf[256];
    while (::read(wakeRead_, buf, sizeof buf) > 0) {
    }
  }

 private:
  int wakeRead_ = -1;
  std::vector<std::pair<int, struct sigaction>> saved_;
};

// argv or envp as the char* array exec wants; the strings stay owned here.
class CStrings {
 public:
  explicit CStrings(std::vector<std::string> v) : strings_(std::move(v)) {
    for (auto& s : strings_) ptrs_.push_back(s.data());
    ptrs_.push_back(nullptr);
  }
  CStrings(const CStrings&) = delete;
  CStrings& operator=(const CStrings&) = delete;
  CStrings(CStrings&&) = default;  // the strings' buffers move with the vector, so ptrs_ stay valid
  char* const* get() { return ptrs_.data(); }

 private:
  std::vector<std::string> strings_;
  std::vector<char*> ptrs_;
};

std::vector<std::string> rankEnvironment(const std::vector<std::pair<std::string, std::string>>& vars) {
  std::set<std::string> replaced;
  for (const auto& [k, v] : vars) replaced.insert(k);
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string entry(*e);
    size_t eq = entry.find('=');
    if (eq != std::string::npos && replaced.count(entry.substr(0, eq)) != 0) continue;
    env.push_back(std::move(entry));
  }
  for (const auto& [k, v] : vars) env.push_back(k + "=" + v);
  return env;
}

void signalGroup(const RankProc& r, int sig) {
  // The rank leads its own process group; fall back to the pid if setpgid had not happened.
  if (::kill(-r.pid, sig) != 0) ::kill(r.pid, sig);
}

}  // namespace

std::string resolveProgram(const std::string& name) {
  auto runnable = [](const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
  };
  if (name.empty()) throw InvalidArgument("no program given to launch");
  if (name.find('/') != std::string::npos) {
    if (!runnable(name)) {
      throw InvalidArgument(str("cannot run '", name, "': ", std::strerror(errno != 0 ? errno : EACCES),
                                " (check the path, and that it is an executable file)"));
    }
    return name;
  }
  const char* pathEnv = std::getenv("PATH");
  std::string path = pathEnv != nullptr ? pathEnv : "/usr/local/bin:/usr/bin:/bin";
  size_t start = 0;
  while (start <= path.size()) {
    size_t colon = path.find(':', start);
    if (colon == std::string::npos) colon = path.size();
    std::string dir = path.substr(start, colon - start);
    std::string candidate = (dir.empty() ? std::string(".") : dir) + "/" + name;
    if (runnable(candidate)) return candidate;
    start = colon + 1;
  }
  throw InvalidArgument(str("cannot find program '", name, "' on PATH; give its path instead, e.g. ./", name));
}

namespace {

// Node 0 binds the store on the endpoint's host. Under Kubernetes that is the pod's own DNS
// name (pod-0.service), whose record the cluster DNS may publish a little after the pod
// starts: wait for it to resolve, up to the job's timeout.
void waitUntilResolvable(const std::string& host, Millis timeout) {
  const Deadline deadline(timeout);
  bool said = false;
  for (;;) {
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    const int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &res);
    if (res != nullptr) ::freeaddrinfo(res);
    if (rc == 0) {
      if (said) std::cerr << "chorus launch: '" << host << "' resolves now" << std::endl;
      return;
    }
    if (rc != EAI_AGAIN && rc != EAI_NONAME && rc != EAI_FAIL) {
      throw Error(str("node 0 cannot resolve its rendezvous host '", host, "': ", gai_strerror(rc)));
    }
    if (deadline.expired()) {
      throw TimeoutError(str("node 0: its rendezvous host '", host, "' did not resolve within ", timeout.count(),
                             " ms (", gai_strerror(rc), "); give --rdzv-endpoint a name or address of this node (under ",
                             "Kubernetes, pod-0's hostname.subdomain, with a headless Service of that name that ",
                             "publishes not-ready addresses)"));
    }
    if (!said) {
      std::cerr << "chorus launch: waiting for node 0's rendezvous host '" << host << "' to resolve ("
                << gai_strerror(rc) << ")" << std::endl;
      said = true;
    }
    std::this_thread::sleep_for(std::min<Millis>(Millis(200), Millis(deadline.remainingMs())));
  }
}

}  // namespace

std::string selfExecutable() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) throw SystemError("readlink /proc/self/exe (the chorus binary re-runs itself as the ranks)", errno);
  return std::string(buf, static_cast<size_t>(n));
}

namespace {

// One job's ranks, from fork to the last exit. The destructor kills and reaps any rank still
// running, so every error path leaves no process behind.
class LocalJob {
 public:
  LocalJob(const LaunchOptions& opts, std::string program, const std::vector<std::string>& argv,
           const SignalGuard& signals)
      : opts_(opts), program_(std::move(program)), argv_(argv), signals_(signals),
        ranks_(static_cast<size_t>(opts.nproc + opts.spares)) {
    devNull_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devNull_ < 0) throw SystemError("open /dev/null for the ranks' stdin", errno);
    const int childSignals[kChildSignals] = {SIGINT, SIGTERM, SIGCHLD, SIGPIPE, SIGUSR1};
    for (int i = 0; i < kChildSignals; ++i) {
      childSignal_[i] = childSignals[i];
      childAction_[i] = {};
      childAction_[i].sa_handler = signals.wasIgnored(childSignals[i]) ? SIG_IGN : SIG_DFL;
    }
  }
  ~LocalJob() {
    for (auto& r : ranks_) {
      if (r.running) {
        signalGroup(r, SIGKILL);
        int st;
        while (::waitpid(r.pid, &st, 0) < 0 && errno == EINTR) {
        }
        r.running = false;
      }
      closeFd(r.out.fd);
      closeFd(r.err.fd);
    }
    for (auto& s : retired_) closeFd(s->fd);
    for (int& fd : execPipes_) closeFd(fd);
    closeFd(devNull_);
  }
  LocalJob(const LocalJob&) = delete;
  LocalJob& operator=(const LocalJob&) = delete;

  // Forks every rank (envs[k] is rank k's environment) and waits until each has exec'd.
  // Throws when a fork or an exec fails.
  void start(std::vector<CStrings>& envs) {
    for (int k = 0; k < static_cast<int>(ranks_.size()); ++k) {
      spawn(k, envs[static_cast<size_t>(k)].get());
      ranks_[static_cast<size_t>(k)].spare = k >= opts_.nproc;
    }
    running_ = ranks_.size();
    for (size_t k = 0; k < execPipes_.size(); ++k) checkExec(static_cast<int>(k), execPipes_[k]);
    for (int& fd : execPipes_) closeFd(fd);
  }

  // Ranks that may be restarted get their environment from here: (rank, restart number).
  void setRestartEnvironment(std::function<CStrings(int, int)> envFor) { restartEnv_ = std::move(envFor); }

  // Elastic jobs (LaunchOptions::minWorkers): how a generation's members are published, and a
  // replacement's environment (id, generation, rank, world).
  struct ElasticHooks {
    std::function<void(int, const std::vector<int>&)> publish;
    std::function<CStrings(int, int, int, int)> env;
    std::function<std::string(int)> heartbeat;  // a worker's heartbeat value ("" before its first)
    std::function<void(int, int)> callSpare;    // (id, generation): a spare joins it; generation -1: exit
    std::function<CStrings(int)> spareEnv;      // a new spare's environment (its id)
    std::function<bool(int)> finished;          // whether rank k said it finished its work
    Millis heartbeatTimeout{10000}, stallWarn{10000}, stallTimeout{300000};
  };
  void setElastic(ElasticHooks hooks) {
    elastic_ = std::move(hooks);
    members_.clear();
    for (int k = 0; k < opts_.nproc; ++k) members_.push_back(k);
    nextId_ = opts_.nproc + opts_.spares;
  }

  // Watches the ranks until all have exited and their output is drained. Returns the
  // launcher's exit status (see launchLocal).
  int watch() {
    while (true) {
      signals_.drain();
      forwardInterrupts();
      reap();
      watchHeartbeats();
      grow();
      escalate();
      if (!pollOutput()) break;
    }
    for (auto& r : ranks_) {
      r.out.flushPartial();
      r.err.flushPartial();
      closeFd(r.out.fd);
      closeFd(r.err.fd);
    }
    for (auto& s : retired_) {
      s->flushPartial();
      closeFd(s->fd);
    }
    if (failedRank_) {
      std::string line = str("rank ", *failedRank_, " ", describeStatus(failedStatus_), "; ");
      line += stoppedOthers_ > 0 ? str("stopped the other ", plural(stoppedOthers_, "rank"))
                                 : std::string("no other rank was still running");
      if (opts_.tagStderr) line += str(" (its own messages are the lines tagged [rank ", *failedRank_, "] above)");
      message(line);
      return exitCodeOf(failedStatus_);
    }
    if (interruptSignal_ != 0) return 128 + interruptSignal_;
    if (lostWorkers_ > 0 || grown_ > 0) {
      message(str("the job ended; ", plural(lostWorkers_, "worker"), " failed along the way, ",
                  plural(static_cast<size_t>(elasticRestartsUsed_), "replacement"), " and ", plural(grown_, "added worker"),
                  " joined; generation ", generation_, " finished with ", plural(members_.size(), "worker")));
    }
    if (toleratedRank_) {
      message(str("the job ended; rank ", *toleratedRank_, " had ", describeStatus(toleratedStatus_)));
      return exitCodeOf(toleratedStatus_);
    }
    return 0;
  }

 private:
  static constexpr int kChildSignals = 5;

  // An exec failure arrives as an errno on the close-on-exec pipe; success closes it empty.
  void checkExec(int k, int fd) {
    int err = 0;
    ssize_t got;
    do {
      got = ::read(fd, &err, sizeof err);
    } while (got < 0 && errno == EINTR);
    if (got == static_cast<ssize_t>(sizeof err)) {
      std::string hint = err == ENOENT    ? " (the program, or the interpreter on its #! line, does not exist)"
                         : err == ENOEXEC ? " (not a program for this machine; a script needs a #! line)"
                                          : "";
      throw Error(str("cannot start rank ", k, ": exec ", program_, ": ", std::strerror(err), hint));
    }
  }

  // Starts rank k again after it failed (LaunchOptions::maxRestarts). Its old output pipes
  // are kept until they reach their end, so its last lines still come out.
  void restart(RankProc& r) {
    const int k = r.rank;
    const int count = ++restarts_[static_cast<size_t>(k)];
    message(str("rank ", k, " ", describeStatus(r.status), "; restarting it (restart ", count, " of ",
                opts_.maxRestarts, ")"));
    beats_.erase(r.id);  // the new process gets heartbeatTimeout to send its first beat
    respawn(k, restartEnv_(k, count), k);
  }

  void spawn(int k, char* const* envp, int label = -1) {
    RankProc& r = ranks_[static_cast<size_t>(k)];
    r.rank = k;
    r.id = label < 0 ? k : label;
    int outPipe[2] = {-1, -1}, errPipe[2] = {-1, -1}, execPipe[2] = {-1, -1};
    auto closeAll = [&]() {
      for (int* fd : {&outPipe[0], &outPipe[1], &errPipe[0], &errPipe[1], &execPipe[0], &execPipe[1]}) closeFd(*fd);
    };
    try {
      if (opts_.tagStdout) makePipe(outPipe);
      if (opts_.tagStderr) makePipe(errPipe);
      makePipe(execPipe);
    } catch (...) {
      closeAll();
      throw;
    }
    pid_t pid = ::fork();
    if (pid == 0) {
      // The child: async-signal-safe calls only until execve.
      ::setpgid(0, 0);
      for (int i = 0; i < kChildSignals; ++i) ::sigaction(childSignal_[i], &childAction_[i], nullptr);
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != gLauncherPid) _exit(127);
      ::dup2(devNull_, 0);
      if (outPipe[1] >= 0) ::dup2(outPipe[1], 1);
      if (errPipe[1] >= 0) ::dup2(errPipe[1], 2);
      ::execve(program_.c_str(), argv_.get(), envp);
      int err = errno;
      ssize_t ignored = ::write(execPipe[1], &err, sizeof err);
      (void)ignored;
      _exit(127);
    }
    if (pid < 0) {
      int err = errno;
      closeAll();
      throw SystemError(str("fork for rank ", k, " of ", opts_.nproc, " (too many processes? lower -n)"), err);
    }
    ::setpgid(pid, pid);  // also in the parent, so signalling the group never races the child
    r.pid = pid;
    r.running = true;
    closeFd(outPipe[1]);
    closeFd(errPipe[1]);
    closeFd(execPipe[1]);
    execPipes_.push_back(execPipe[0]);
    r.out = LineStream{outPipe[0], 1, str("[rank ", r.id, "] "), "", &stdoutOk_};
    r.err = LineStream{errPipe[0], 2, str("[rank ", r.id, "] "), "", &stderrOk_};
  }

  void message(const std::string& text) {
    std::string line = str(opts_.messagePrefix, ": ", text, "\n");
    if (stderrOk_) stderrOk_ = writeAll(2, line.data(), line.size());
  }

  // Sends sig to every running rank but `except`; starts the grace period. Returns how many.
  size_t signalRunning(int sig, int except) {
    size_t count = 0;
    for (auto& r : ranks_) {
      if (r.running && r.rank != except) {
        signalGroup(r, sig);
        ++count;
      }
    }
    if (!killAt_) killAt_ = Clock::now() + opts_.grace;
    return count;
  }

  // SIGINT/SIGTERM to the launcher: the first is forwarded, a second kills.
  void forwardInterrupts() {
    sig_atomic_t seen = gInterrupts;
    if (seen == interruptsSeen_) return;
    bool first = interruptsSeen_ == 0;
    interruptsSeen_ = seen;
    if (!first) {
      signalRunning(SIGKILL, -1);
      return;
    }
    interruptSignal_ = gLastInterrupt;
    size_t count = signalRunning(interruptSignal_, -1);
    message(str("received ", signalName(interruptSignal_), "; forwarded it to ", plural(count, "rank"),
                " (send it again to kill them at once)"));
  }

  void reap() {
    std::vector<int> lost;  // elastic: slots whose worker failed in this pass
    for (auto& r : ranks_) {
      if (!r.running) continue;
      int st = 0;
      if (::waitpid(r.pid, &st, WNOHANG) != r.pid) continue;
      r.running = false;
      r.status = st;
      --running_;
      bool failed = !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
      // A worker may fail alone (tolerateBelow), but not with kFatalExitStatus, and the ranks
      // stopped because the job is ending are not "tolerated" failures.
      const bool tolerated = failed && r.rank < opts_.tolerateBelow && interruptSignal_ == 0 && !failedRank_ &&
                             !(WIFEXITED(st) && WEXITSTATUS(st) == kFatalExitStatus);
      if (r.spare) {  // a standby worker that was never called in: the members go on
        r.spare = false;
        if (failed && interruptSignal_ == 0 && !failedRank_) message(str("spare worker ", r.id, " ", describeStatus(st), "; the job goes on without it"));
        continue;
      }
      if (failed && r.rank >= opts_.restartFrom && elastic_.finished && elastic_.finished(r.rank)) {
        // It had done its work (chorus/done/<rank>) and died on its way out: nothing to redo.
        message(str("rank ", r.rank, " ", describeStatus(st), " after it had finished its work; not restarting it"));
        continue;
      }
      if (failed && r.rank >= opts_.restartFrom && restarts_[static_cast<size_t>(r.rank)] < opts_.maxRestarts &&
          interruptSignal_ == 0 && !failedRank_ && restartEnv_ && !(WIFEXITED(st) && WEXITSTATUS(st) == kFatalExitStatus)) {
        restart(r);
      } else if (failed && elastic_.publish && interruptSignal_ == 0 && !failedRank_ &&
                 !(WIFEXITED(st) && WEXITSTATUS(st) == kFatalExitStatus)) {
        lost.push_back(r.rank);
      } else if (tolerated) {
        message(str("rank ", r.rank, " ", describeStatus(st), "; the job goes on without it"));
        if (!toleratedRank_) {
          toleratedRank_ = r.rank;
          toleratedStatus_ = st;
        }
      } else if (failed && !failedRank_ && interruptSignal_ == 0) {
        failedRank_ = r.rank;
        failedStatus_ = st;
        signalGroup(r, SIGTERM);  // whatever the rank left behind in its group
        stoppedOthers_ = signalRunning(SIGTERM, r.rank);
      }
    }
    if (!lost.empty()) regenerate(lost);
    releaseSpares();
    if (running_ == 0 && !drainUntil_) {
      drainUntil_ = Clock::now() + kDrainAfterExit;
      if (failedRank_ || interruptSignal_ != 0) {
        for (auto& r : ranks_) ::kill(-r.pid, SIGKILL);  // leftovers in the ranks' groups
      }
    }
  }

  // Elastic: once no member runs, the spares still waiting are told to exit.
  void releaseSpares() {
    if (!elastic_.callSpare || sparesReleased_) return;
    for (const auto& r : ranks_) {
      if (r.running && !r.spare) return;
    }
    sparesReleased_ = true;
    for (const auto& r : ranks_) {
      if (r.running && r.spare) elastic_.callSpare(r.id, -1);
    }
  }

  // Elastic: the current generation's members still running, in their rank order.
  std::vector<int> runningMembers() const {
    std::vector<int> members;
    for (int id : members_) {
      for (const auto& r : ranks_) {
        if (r.running && r.id == id) members.push_back(id);
      }
    }
    return members;
  }

  // SIGUSR1 to the launcher grows an elastic job by one worker per signal: a waiting spare
  // joins the next generation, up to maxWorkers. The members see the generation in the store
  // (their heartbeat thread), leave the step in flight and re-form with it, as after a
  // failure; the spare receives the state by broadcast. A spare that joins so is not counted
  // as a replacement, and its slot is not refilled.
  void grow() {
    const sig_atomic_t seen = gGrows;
    if (seen == growsSeen_) return;
    const int asked = static_cast<int>(seen - growsSeen_);
    growsSeen_ = seen;
    if (failedRank_ || interruptSignal_ != 0) return;
    if (!elastic_.callSpare) {
      message("received SIGUSR1, which grows an elastic job by a waiting spare (chorus train --min with --spares); "
              "ignored");
      return;
    }
    const size_t maxWorkers = static_cast<size_t>(opts_.maxWorkers > 0 ? opts_.maxWorkers : opts_.nproc);
    for (int n = 0; n < asked; ++n) {
      std::vector<int> members = runningMembers();
      if (members.size() != members_.size()) {  // a failure is being handled, or the job ends
        message("received SIGUSR1 while a worker is leaving the job; not growing (send it again)");
        return;
      }
      if (opts_.elasticKeepPositions) {
        message("received SIGUSR1, but this job's workers hold different shards (tensor or pipeline parallel) and "
                "its world keeps its size; not growing");
        return;
      }
      if (members.size() >= maxWorkers) {
        message(str("received SIGUSR1, but the job has ", plural(members.size(), "worker"), ", the most --max ",
                    maxWorkers, " allows; not growing"));
        return;
      }
      if (opts_.elasticWorldCheck) {
        const std::string why = opts_.elasticWorldCheck(static_cast<int>(members.size()) + 1);
        if (!why.empty()) {
          message(str("received SIGUSR1, but the job cannot run with ", members.size() + 1, " workers: ", why,
                      "; not growing"));
          return;
        }
      }
      RankProc* spare = nullptr;
      for (auto& r : ranks_) {
        if (r.running && r.spare) {
          spare = &r;
          break;
        }
      }
      if (!spare) {
        message("received SIGUSR1, but no spare is waiting (--spares S starts them with the job; each joins once); "
                "not growing");
        return;
      }
      members.push_back(spare->id);
      ++generation_;
      elastic_.publish(generation_, members);
      members_ = members;
      spare->spare = false;
      elastic_.callSpare(spare->id, generation_);
      ++grown_;
      message(str("received SIGUSR1; generation ", generation_, ": ", plural(members.size(), "worker"), " (ids ", idList(members),
                  "), 1 spare joining"));
    }
  }

  // Elastic: the workers in `lost` (slots) failed. The next generation is the workers still
  // running, in their rank order, then a replacement per failed worker while replacements
  // remain and the members stay within maxWorkers; fewer than minWorkers left stops the job.
  void regenerate(const std::vector<int>& lost) {
    std::vector<int> members = runningMembers();
    lostWorkers_ += lost.size();
    const RankProc& first = ranks_[static_cast<size_t>(lost.front())];
    std::string what;
    for (int slot : lost) {
      const RankProc& r = ranks_[static_cast<size_t>(slot)];
      what += str(what.empty() ? "" : "; ", "worker ", r.id, " ", describeStatus(r.status));
    }
    const size_t maxWorkers = static_cast<size_t>(opts_.maxWorkers > 0 ? opts_.maxWorkers : opts_.nproc);
    std::vector<std::pair<int, int>> starts;  // (slot, new id)
    std::vector<RankProc*> called;             // spares that join instead
    std::vector<int> replacing;                // the ids that replace lost[0], lost[1], ...
    for (size_t i = 0; i < lost.size(); ++i) {
      if (elasticRestartsUsed_ >= opts_.elasticRestarts || members.size() + starts.size() + called.size() >= maxWorkers) break;
      RankProc* spare = nullptr;
      for (auto& r : ranks_) {
        if (r.running && r.spare && std::find(called.begin(), called.end(), &r) == called.end()) {
          spare = &r;
          break;
        }
      }
      if (spare) {
        called.push_back(spare);
        replacing.push_back(spare->id);
      } else {
        starts.emplace_back(lost[i], nextId_++);
        replacing.push_back(starts.back().second);
      }
      ++elasticRestartsUsed_;
    }
    if (opts_.elasticKeepPositions && replacing.size() < lost.size()) {
      failedRank_ = first.id;
      failedStatus_ = first.status;
      message(str(what, "; this job's workers hold different shards (tensor or pipeline parallel), so every one of ",
                  "its ", members_.size(), " places needs a worker, and no replacement is left (--restarts ",
                  opts_.elasticRestarts, ", all used); stopping the job"));
      stoppedOthers_ = signalRunning(SIGTERM, -1);
      return;
    }
    if (members.size() + starts.size() + called.size() < static_cast<size_t>(opts_.minWorkers)) {
      failedRank_ = first.id;
      failedStatus_ = first.status;
      message(str(what, "; ", plural(members.size(), "worker"), " left, fewer than --min ", opts_.minWorkers,
                  ", and no replacement left to start; stopping the job"));
      stoppedOthers_ = signalRunning(SIGTERM, -1);
      return;
    }
    if (opts_.elasticKeepPositions) {
      // Each replacement takes the place of the worker it replaces.
      members = members_;
      for (size_t i = 0; i < lost.size(); ++i) {
        const auto at = std::find(members.begin(), members.end(), ranks_[static_cast<size_t>(lost[i])].id);
        if (at != members.end()) *at = replacing[i];
      }
    } else {
      for (RankProc* r : called) members.push_back(r->id);
      for (const auto& [slot, id] : starts) members.push_back(id);
    }
    ++generation_;
    elastic_.publish(generation_, members);
    members_ = members;
    for (RankProc* r : called) {
      r->spare = false;
      elastic_.callSpare(r->id, generation_);
    }
    message(str(what, "; generation ", generation_, ": ", plural(members.size(), "worker"), " (ids ", idList(members), ")",
                called.empty() ? std::string() : str(", ", plural(called.size(), "spare"), " joining"),
                starts.empty() ? std::string() : str(", ", plural(starts.size(), "replacement"), " starting")));
    std::vector<int> freeSlots;  // lost slots no replacement took
    for (int slot : lost) {
      if (std::none_of(starts.begin(), starts.end(), [&](const auto& st) { return st.first == slot; })) freeSlots.push_back(slot);
    }
    for (const auto& [slot, id] : starts) {
      const int rank = static_cast<int>(std::find(members.begin(), members.end(), id) - members.begin());
      respawn(slot, elastic_.env(id, generation_, rank, static_cast<int>(members.size())), id);
    }
    // Spares that joined leave their places to new ones, while replacements remain for them.
    size_t idle = 0;
    for (const auto& r : ranks_) idle += r.running && r.spare ? 1 : 0;
    for (int slot : freeSlots) {
      if (called.empty() || !elastic_.spareEnv) break;
      if (static_cast<int>(idle) >= opts_.elasticRestarts - elasticRestartsUsed_) break;
      const int id = nextId_++;
      respawn(slot, elastic_.spareEnv(id), id);
      ranks_[static_cast<size_t>(slot)].spare = true;
      ++idle;
    }
  }

  // Starts a new process in a slot whose process has exited, keeping the old one's output pipes
  // until they reach their end.
  void respawn(int slot, CStrings env, int id) {
    RankProc& r = ranks_[static_cast<size_t>(slot)];
    retired_.push_back(std::make_unique<LineStream>(std::move(r.out)));
    retired_.push_back(std::make_unique<LineStream>(std::move(r.err)));
    r.out.fd = r.err.fd = -1;
    spawn(slot, env.get(), id);
    const int fd = execPipes_.back();
    execPipes_.pop_back();
    try {
      checkExec(slot, fd);
    } catch (...) {
      ::close(fd);
      throw;
    }
    ::close(fd);
    ++running_;
  }

  // Elastic: the workers' heartbeats (train/elastic.h), read twice a second. A worker whose
  // beat stops for heartbeatTimeout is hung (stopped, frozen); one whose collective calls lag
  // behind the others' gets a stall report after stallWarn and is hung after stallTimeout. A
  // hung worker is named and killed, and the next generation goes on without it (regenerate);
  // a restartable rank (LaunchOptions::maxRestarts) is then restarted like one that died.
  void watchHeartbeats() {
    if (!elastic_.heartbeat || failedRank_ || interruptSignal_ != 0) return;
    const auto now = Clock::now();
    if (now < nextBeatCheck_) return;
    nextBeatCheck_ = now + Millis(500);
    struct Seen {
      RankProc* r;
      int64_t generation;
      uint64_t calls;
      std::string last;
    };
    std::vector<Seen> seen;
    for (auto& r : ranks_) {
      if (!r.running) continue;
      const std::string v = elastic_.heartbeat(r.id);
      Beat& b = beats_[r.id];
      if (v.empty()) continue;  // not joined yet
      if (v != b.value) {
        b.value = v;
        b.changed = now;
      }
      // "<generation>,<beat>,<calls>,<last call>"
      const size_t c1 = v.find(','), c2 = v.find(',', c1 + 1), c3 = v.find(',', c2 + 1);
      if (c1 == std::string::npos || c2 == std::string::npos || c3 == std::string::npos) continue;
      const int64_t generation = std::strtoll(v.c_str(), nullptr, 10);
      const uint64_t calls = std::strtoull(v.c_str() + c2 + 1, nullptr, 10);
      if (generation != b.generation || calls != b.calls) {
        b.generation = generation;
        b.calls = calls;
        b.callsChanged = now;
        b.warned = false;
      }
      if (now - b.changed > elastic_.heartbeatTimeout) {
        exclude(r, str("sent no heartbeat for ", std::chrono::duration_cast<Millis>(now - b.changed).count(),
                       " ms (stopped, or its process is frozen)"));
        continue;
      }
      if (!r.spare) seen.push_back({&r, generation, calls, v.substr(c3 + 1)});  // a spare runs no collective
    }
    // Stalls: within the current generation, the workers whose calls lag behind the most.
    uint64_t most = 0;
    for (const Seen& x : seen) {
      if (x.generation == generation_) most = std::max(most, x.calls);
    }
    for (const Seen& x : seen) {
      if (x.generation != generation_ || x.calls >= most) continue;
      Beat& b = beats_[x.r->id];
      const auto behind = now - b.callsChanged;
      if (behind > elastic_.stallTimeout) {
        exclude(*x.r, str("has issued ", x.calls, " collective calls of generation ", generation_, " and no more for ",
                          std::chrono::duration_cast<Millis>(behind).count(), " ms while the others wait in call ",
                          most, " (its own code does not return)"));
      } else if (behind > elastic_.stallWarn && !b.warned) {
        b.warned = true;
        std::string waiting, waitingIn;
        for (const Seen& y : seen) {
          if (y.generation != generation_ || y.calls != most) continue;
          waiting += str(waiting.empty() ? "" : ",", y.r->id);
          waitingIn = y.last;
        }
        message(str("stall: worker ", x.r->id, " (pid ", x.r->pid, ") has issued ", x.calls,
                    " collective calls of generation ", generation_, " and no more for ",
                    std::chrono::duration_cast<Millis>(behind).count() / 1000, " s; workers ", waiting, " have issued ",
                    most, " and wait in the last, ", waitingIn, "; it is excluded after ",
                    elastic_.stallTimeout.count() / 1000, " s"));
      }
    }
  }

  void exclude(RankProc& r, const std::string& why) {
    message(str(elastic_.publish ? "worker " : "rank ", r.id, " (pid ", r.pid, ") ", why, "; excluding it (SIGKILL)"));
    signalGroup(r, SIGKILL);
    beats_.erase(r.id);
  }

  // SIGKILL for ranks that outlive the grace period.
  void escalate() {
    if (!killAt_ || running_ == 0 || Clock::now() < *killAt_) return;
    for (auto& r : ranks_) {
      if (!r.running) continue;
      message(str("rank ", r.rank, " did not exit within ", opts_.grace.count(), " ms of SIGTERM; sending SIGKILL"));
      signalGroup(r, SIGKILL);
    }
    killAt_ = Clock::time_point::max();  // SIGKILL cannot be ignored: no second round
  }

  // Waits for output, a signal or the next deadline, and relays what arrived. Returns false
  // once every rank has exited and the output is drained.
  bool pollOutput() {
    std::vector<struct pollfd> fds;
    std::vector<LineStream*> streams;
    fds.push_back({signals_.wakeFd(), POLLIN, 0});
    for (auto& r : ranks_) {
      for (LineStream* s : {&r.out, &r.err}) {
        if (s->fd < 0) continue;
        fds.push_back({s->fd, POLLIN, 0});
        streams.push_back(s);
      }
    }
    for (auto& s : retired_) {
      if (s->fd < 0) continue;
      fds.push_back({s->fd, POLLIN, 0});
      streams.push_back(s.get());
    }
    const auto now = Clock::now();
    if (running_ == 0 && (streams.empty() || now >= *drainUntil_)) return false;
    int timeoutMs = elastic_.heartbeat ? 500 : 1000;  // a bound in case a wake-up is ever lost; heartbeats
    auto until = [&](Clock::time_point t) {
      int64_t ms = std::chrono::duration_cast<Millis>(t - now).count() + 1;
      timeoutMs = static_cast<int>(std::clamp<int64_t>(ms, 0, timeoutMs));
    };
    if (killAt_ && running_ > 0) until(*killAt_);
    if (drainUntil_) until(*drainUntil_);
    int ready = ::poll(fds.data(), fds.size(), timeoutMs);
    if (ready < 0 && errno != EINTR) throw SystemError("poll on the ranks' output", errno);
    for (size_t i = 1; i < fds.size() && ready > 0; ++i) {
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) streams[i - 1]->readSome();
    }
    return true;
  }

  const LaunchOptions& opts_;
  const std::string program_;
  CStrings argv_;
  const SignalGuard& signals_;
  int devNull_ = -1;
  int childSignal_[kChildSignals];
  struct sigaction childAction_[kChildSignals];

  std::vector<RankProc> ranks_;
  std::vector<int> execPipes_;
  std::vector<int> restarts_ = std::vector<int>(ranks_.size(), 0);  // per rank
  std::function<CStrings(int, int)> restartEnv_;
  ElasticHooks elastic_;
  std::vector<int> members_;  // elastic: the current generation's worker ids, in rank order
  int generation_ = 0;
  int nextId_ = 0;
  bool sparesReleased_ = false;
  int elasticRestartsUsed_ = 0;
  size_t lostWorkers_ = 0;
  struct Beat {
    std::string value;
    Clock::time_point changed, callsChanged;
    int64_t generation = -1;
    uint64_t calls = 0;
    bool warned = false;
  };
  std::map<int, Beat> beats_;  // by worker id
  Clock::time_point nextBeatCheck_{};
  std::vector<std::unique_ptr<LineStream>> retired_;  // output of restarted ranks' earlier processes
  size_t running_ = 0;
  bool stdoutOk_ = true;
  bool stderrOk_ = true;

  std::optional<int> failedRank_;
  int failedStatus_ = 0;
  std::optional<int> toleratedRank_;  // the first failure among opts_.tolerateBelow ranks
  int toleratedStatus_ = 0;
  size_t stoppedOthers_ = 0;
  int interruptSignal_ = 0;
  sig_atomic_t interruptsSeen_ = 0;
  sig_atomic_t growsSeen_ = 0;
  size_t grown_ = 0;  // spares that joined a healthy job (SIGUSR1)
  std::optional<Clock::time_point> killAt_;     // when ranks still running get SIGKILL
  std::optional<Clock::time_point> drainUntil_;  // output wait after the last exit
};

}  // namespace

int lastLaunchInterrupt() { return gLastInterrupt; }

int launchLocal(const LaunchOptions& opts, const std::vector<std::string>& argv) {
  if (opts.nproc < 1) throw InvalidArgument(str("the number of ranks must be at least 1, got ", opts.nproc));
  if (argv.empty()) throw InvalidArgument("no program given to launch");
  std::string program = resolveProgram(argv[0]);

  comm::StoreServerOptions storeOpts;
  std::string dialAddr, jobId;
  int storePort = 0;
  std::optional<comm::TcpStoreServer> server;
  const bool multiNode = opts.nnodes > 1;
  if (multiNode) {
    if (opts.nodeRank < 0 || opts.nodeRank >= opts.nnodes)
      throw InvalidArgument(str("node rank ", opts.nodeRank, " is not one of the ", opts.nnodes, " nodes (0 .. ",
                                opts.nnodes - 1, ")"));
    if (opts.rdzvHost.empty() || opts.rdzvPort < 1 || opts.rdzvPort > 65535)
      throw InvalidArgument("a multi-node job needs the rendezvous endpoint HOST:PORT (a port from 1 to 65535)");
    if (opts.secret.empty())
      throw InvalidArgument("a multi-node job needs one job secret on every node (CHORUS_JOB_SECRET or --secret-file)");
    // Node 0 hosts the store where the endpoint says; every node dials it. The job id is the
    // same on every node: it is derived from the endpoint and the secret (not revealing it).
    dialAddr = opts.rdzvHost;
    storePort = opts.rdzvPort;
    const std::string seed = str(opts.rdzvHost, ":", opts.rdzvPort, "/", opts.secret);
    const Digest d = sha256(seed.data(), seed.size());
    jobId = "m" + toHex(d.data(), 8);
    storeOpts.secret = opts.secret;
    if (opts.nodeRank == 0) {
      waitUntilResolvable(opts.rdzvHost, opts.timeoutMs > 0 ? Millis(opts.timeoutMs) : defaultTimeout());
      storeOpts.bindAddr = opts.rdzvHost;
      storeOpts.port = opts.rdzvPort;
      try {
        server.emplace(storeOpts);
      } catch (const Error& e) {
        throw Error(str("node 0 cannot host the rendezvous store on ", opts.rdzvHost, ":", opts.rdzvPort, ": ", e.what(),
                        "; give --rdzv-endpoint an address of this node and a free port"));
      }
    }
  } else {
    // Loopback unless every interface is asked for explicitly.
    dialAddr = opts.storeAddr.empty() ? "127.0.0.1" : opts.storeAddr;
    if (opts.storeAddr == "0.0.0.0") {
      storeOpts.bindAddr = "";
      storeOpts.anyInterface = true;
      dialAddr = "127.0.0.1";
    } else {
      storeOpts.bindAddr = dialAddr;
    }
    storeOpts.port = 0;
    storeOpts.secret = comm::makeSecret();
    jobId = str("c", ::getpid(), "-", comm::makeSecret().substr(0, 8));
    server.emplace(storeOpts);
    storePort = server->port();
  }

  // Every rank's environment, built before the first fork.
  const int n = opts.nproc;
  const int world = n * opts.nnodes, first = n * opts.nodeRank;
  if (opts.maxRestarts < 0) throw InvalidArgument(str("maxRestarts must be >= 0, got ", opts.maxRestarts));
  const bool restarts = opts.maxRestarts > 0 && opts.restartFrom < n;
  const bool elastic = opts.minWorkers > 0;
  if (elastic) {
    if (multiNode || restarts || opts.tolerateBelow > 0)
      throw InvalidArgument("an elastic job (--min) runs on one node without parameter servers");
    const int maxWorkers = opts.maxWorkers > 0 ? opts.maxWorkers : n;
    if (opts.minWorkers > n || n > maxWorkers)
      throw InvalidArgument(str("elastic limits: need --min <= -n <= --max, got ", opts.minWorkers, " <= ", n, " <= ",
                                maxWorkers));
  }
  if (opts.spares < 0 || (opts.spares > 0 && !elastic))
    throw InvalidArgument(str("spares = ", opts.spares, ": standby workers (--spares) need an elastic job (--min)"));
  // Local rank k of this node's `localSize`, rank first + k of `size`; an elastic worker's id
  // and generation.
  auto varsOfWorker = [&](int k, int localSize, int size, int restart, int id, int generation, bool spare = false) {
    std::vector<std::pair<std::string, std::string>> vars = {
        {"CHORUS_RANK", str(first + k)},
        {"CHORUS_WORLD_SIZE", str(size)},
        {"CHORUS_LOCAL_RANK", str(k)},
        {"CHORUS_LOCAL_WORLD_SIZE", str(localSize)},
        {"CHORUS_STORE_ADDR", dialAddr},
        {"CHORUS_STORE_PORT", str(storePort)},
        {"CHORUS_JOB_ID", jobId},
        {"CHORUS_JOB_SECRET", storeOpts.secret},
    };
    if (multiNode) {
      vars.emplace_back("CHORUS_NODE_RANK", str(opts.nodeRank));
      vars.emplace_back("CHORUS_NNODES", str(opts.nnodes));
    }
    if (!opts.transport.empty()) vars.emplace_back("CHORUS_TRANSPORT", opts.transport);
    if (opts.timeoutMs > 0) vars.emplace_back("CHORUS_TIMEOUT_MS", str(opts.timeoutMs));
    if (restarts) {
      vars.emplace_back("CHORUS_REJOIN", restart > 0 ? "join" : "accept");
      vars.emplace_back("CHORUS_RESTART_COUNT", str(restart));
    }
    if (elastic) {
      vars.emplace_back("CHORUS_ELASTIC", "1");
      vars.emplace_back("CHORUS_ELASTIC_ID", str(id));
      vars.emplace_back("CHORUS_ELASTIC_GEN", str(generation));
      if (spare) vars.emplace_back("CHORUS_ELASTIC_SPARE", "1");
    }
    for (const auto& kv : opts.extraEnv) vars.push_back(kv);
    return rankEnvironment(vars);
  };
  auto varsOf = [&](int k, int restart) { return varsOfWorker(k, n, world, restart, k, 0); };
  std::vector<CStrings> envs;
  envs.reserve(static_cast<size_t>(n));
  for (int k = 0; k < n; ++k) envs.emplace_back(varsOf(k, 0));
  // Spares: a placeholder rank (the last) until the generation that calls them in says theirs.
  auto spareVars = [varsOfWorker, n, world](int id) { return varsOfWorker(n - 1, n, world, 0, id, 0, true); };
  for (int i = 0; i < opts.spares; ++i) envs.emplace_back(spareVars(n + i));

  SignalGuard signals;
  LocalJob job(opts, std::move(program), argv, signals);
  if (restarts) job.setRestartEnvironment([varsOf](int k, int restart) { return CStrings(varsOf(k, restart)); });
  std::unique_ptr<comm::TcpStore> elasticStore;
  if (elastic) {
    // The launcher's own connection to its store: where it publishes each generation.
    elasticStore = std::make_unique<comm::TcpStore>(dialAddr, storePort, storeOpts.secret, Millis(30000));
    auto publish = [store = elasticStore.get()](int generation, const std::vector<int>& members) {
      store->set(str("chorus/elastic/members/", generation), comm::toBytes(idList(members)));
    };
    publish(0, [n] {
      std::vector<int> v;
      for (int k = 0; k < n; ++k) v.push_back(k);
      return v;
    }());
    LocalJob::ElasticHooks hooks;
    hooks.publish = publish;
    hooks.env = [varsOfWorker](int id, int generation, int rank, int size) {
      return CStrings(varsOfWorker(rank, size, size, 0, id, generation));
    };
    hooks.heartbeat = [store = elasticStore.get()](int id) {
      const std::string key = str("chorus/elastic/hb/", id);
      if (!store->check({key})) return std::string();
      return comm::toString(store->get(key, Millis(5000)));
    };
    hooks.callSpare = [store = elasticStore.get()](int id, int generation) {
      store->set(str("chorus/elastic/spare/", id), comm::toBytes(str(generation)));
    };
    hooks.spareEnv = [spareVars](int id) { return CStrings(spareVars(id)); };
    hooks.heartbeatTimeout = Millis(envInt("CHORUS_HEARTBEAT_TIMEOUT_MS"));
    hooks.stallWarn = Millis(static_cast<int64_t>(envDouble("CHORUS_STALL_WARN_S") * 1000));
    hooks.stallTimeout = opts.timeoutMs > 0 ? Millis(opts.timeoutMs) : defaultTimeout();
    job.setElastic(std::move(hooks));
  } else if (restarts) {
    // Restartable ranks (parameter-server jobs) beat too: one whose beat stops (stopped,
    // frozen) is killed, and so restarted like one that died. No generations, no stall reports
    // (their ranks run no collectives).
    elasticStore = std::make_unique<comm::TcpStore>(dialAddr, storePort, storeOpts.secret, Millis(30000));
    LocalJob::ElasticHooks hooks;
    hooks.heartbeat = [store = elasticStore.get()](int id) {
      const std::string key = str("chorus/elastic/hb/", id);
      if (!store->check({key})) return std::string();
      return comm::toString(store->get(key, Millis(5000)));
    };
    hooks.finished = [store = elasticStore.get()](int rank) { return store->check({str("chorus/done/", rank)}); };
    hooks.heartbeatTimeout = Millis(envInt("CHORUS_HEARTBEAT_TIMEOUT_MS"));
    hooks.stallWarn = hooks.stallTimeout = Millis(int64_t{1} << 40);  // never (and no overflow in ns)
    job.setElastic(std::move(hooks));
  }
  job.start(envs);
  return job.watch();
}

namespace {

ArgParser makeLaunchParser() {
  ArgParser p("chorus launch", ArgParser::Positional::kStopThere);
  p.addValue("-n,--nproc", "N", "number of ranks to start on this host (required)");
  p.addValue("--transport", "NAME", "transport the ranks use: auto, shm or tcp (sets CHORUS_TRANSPORT)");
  p.addValue("--timeout-ms", "MS", "timeout of every blocking call in the ranks (sets CHORUS_TIMEOUT_MS)");
  p.addValue("--store-addr", "ADDR", "address the rendezvous store binds; 0.0.0.0 for every interface", "127.0.0.1");
  p.addValue("--servers", "S", "also start S parameter servers: ranks N..N+S-1 (sets CHORUS_PS_SERVERS)");
  p.addSwitch("--keep-going",
              "with --servers: a worker that fails does not stop the others (asp, ssp), unless it exits with "
              "status 3 (training diverged)");
  p.addValue("--restarts", "R",
             "with --servers: restart a failed server up to R times while the job runs; it reloads its shard and "
             "the workers reconnect (tcp; sets CHORUS_REJOIN). With --min: start up to R replacement workers in all, "
             "which join the job at its next generation");
  p.addValue("--min", "M",
             "elastic: a worker that fails does not stop the job; the others re-form without it (chorus train), "
             "as long as M workers remain");
  p.addValue("--max", "X", "elastic: at most X workers, replacements included (default: -n)");
  p.addSwitch("--keep-positions",
              "elastic: a replacement takes the failed worker's rank and the world keeps its size (tensor- and "
              "pipeline-parallel jobs; chorus train --min sets it for them)");
  p.addValue("--grace-ms", "MS", "how long ranks get to exit after SIGTERM (a rank failed, or the launcher was interrupted) before SIGKILL",
             "3000");
  p.addValue("--nnodes", "N", "nodes of a multi-node job: one launcher per node, each starting -n ranks", "1");
  p.addValue("--node-rank", "K", "this node's index (0 .. nnodes-1); node 0 hosts the store", "0");
  p.addValue("--rdzv-endpoint", "HOST:PORT",
             "with --nnodes > 1: where node 0 hosts the rendezvous store (an address of node 0 every node reaches)");
  p.addValue("--secret-file", "FILE",
             "with --nnodes > 1: the job secret, the same on every node (else CHORUS_JOB_SECRET)");
  p.addSwitch("-h,--help", "show this help");
  return p;
}

}  // namespace

namespace {

// Kubernetes and torchrun's environment (docs/cluster.md#kubernetes): each multi-node flag the
// command line leaves out comes from torchrun's PET_* variables when they are set (Kubeflow's
// trainer sets them in every pod), and the node rank from an Indexed Job's
// JOB_COMPLETION_INDEX. The flag, its value, and the variables it came from.
struct EnvFlag {
  std::string flag, value, source;
};

std::vector<EnvFlag> launchFlagsFromEnvironment(const ArgParser& p) {
  std::vector<EnvFlag> out;
  auto env = [](const char* name) -> std::string {
    const char* v = std::getenv(name);
    return v == nullptr ? "" : v;
  };
  int nnodes = 1;
  if (p.has("--nnodes")) {
    nnodes = static_cast<int>(p.getInt("--nnodes", 1, 4096));
  } else if (const std::string v = env("PET_NNODES"); !v.empty()) {
    if (v.find(':') != std::string::npos) {
      throw UsageError(str("chorus launch: PET_NNODES='", v, "' is a torchrun range of nodes (MIN:MAX); chorus launch ",
                           "runs a fixed number of nodes: set it to one count"));
    }
    char* end = nullptr;
    const long n = std::strtol(v.c_str(), &end, 10);
    if (end == v.c_str() || *end != '\0' || n < 1 || n > 4096) {
      throw UsageError(str("chorus launch: PET_NNODES='", v, "' is not a node count from 1 to 4096"));
    }
    nnodes = static_cast<int>(n);
    out.push_back({"--nnodes", v, "PET_NNODES"});
  }
  if (!p.has("--nproc")) {
    if (std::string v = env("PET_NPROC_PER_NODE"); !v.empty()) {
      if (v == "gpu") {
        throw UsageError("chorus launch: PET_NPROC_PER_NODE=gpu: chorus runs ranks on CPUs here; set a number of ranks");
      }
      if (v == "auto" || v == "cpu") {
        cpu_set_t set;
        CPU_ZERO(&set);
        const int cpus = ::sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
        v = std::to_string(std::max(1, cpus));
      }
      out.push_back({"--nproc", v, "PET_NPROC_PER_NODE"});
    }
  }
  if (nnodes > 1 && !p.has("--node-rank")) {
    if (const std::string v = env("PET_NODE_RANK"); !v.empty()) {
      out.push_back({"--node-rank", v, "PET_NODE_RANK"});
    } else if (const std::string i = env("JOB_COMPLETION_INDEX"); !i.empty()) {
      out.push_back({"--node-rank", i, "JOB_COMPLETION_INDEX"});
    }
  }
  if (nnodes > 1 && !p.has("--rdzv-endpoint")) {
    if (const std::string v = env("PET_RDZV_ENDPOINT"); !v.empty()) {
      out.push_back({"--rdzv-endpoint", v, "PET_RDZV_ENDPOINT"});
    } else if (const std::string a = env("PET_MASTER_ADDR"); !a.empty()) {
      const std::string port = env("PET_MASTER_PORT");
      out.push_back({"--rdzv-endpoint", str(a, ":", port.empty() ? "29500" : port),
                     port.empty() ? "PET_MASTER_ADDR" : "PET_MASTER_ADDR, PET_MASTER_PORT"});
    }
  }
  return out;
}

}  // namespace

std::string launchHelp() {
  return str(
      "usage: chorus launch -n N [flags] [--] PROGRAM [ARGS...]\n"
      "\n"
      "Starts N ranks of PROGRAM on this host, like torchrun. The launcher hosts the rendezvous\n"
      "store and gives each rank CHORUS_RANK, CHORUS_WORLD_SIZE, CHORUS_LOCAL_RANK,\n"
      "CHORUS_LOCAL_WORLD_SIZE, CHORUS_STORE_ADDR, CHORUS_STORE_PORT, CHORUS_JOB_ID and\n"
      "CHORUS_JOB_SECRET, so ProcessGroup::fromEnvironment() joins the job. Every line a rank\n"
      "prints is tagged \"[rank K] \". If a rank fails, the others are stopped (SIGTERM, then\n"
      "SIGKILL after the grace period) and the launcher exits with that rank's status.\n"
      "SIGINT and SIGTERM are forwarded to every rank. Ranks read stdin from /dev/null.\n"
      "With --servers S, ranks N..N+S-1 are parameter servers and the N workers come first\n"
      "(chorus train reads CHORUS_PS_SERVERS); --keep-going lets workers fail alone, and\n"
      "--restarts R starts a failed server again (it reloads its shard; the workers reconnect).\n"
      "With --min M the job is elastic: a worker that fails does not stop the others, which\n"
      "re-form without it in their own processes (chorus train; docs/fault-tolerance.md);\n"
      "--restarts R starts up to R replacements, --max X caps the workers; below M it stops.\n"
      "(chorus train --spares S also starts S replacements with the job, waiting; SIGUSR1 to\n"
      "its launcher brings one into the running job, up to --max.)\n"
      "\n"
      "flags:\n",
      makeLaunchParser().flagTable(),
      "With --nnodes N, one launcher runs on each of N nodes (--node-rank K) and starts -n ranks\n"
      "there, ranks K*n .. K*n+n-1 of N*n; node 0 hosts the store on --rdzv-endpoint, and every\n"
      "node needs the same secret (CHORUS_JOB_SECRET or --secret-file). A rank that fails stops\n"
      "its own node's ranks; the other nodes' ranks then fail naming it and their launchers stop.\n"
      "Flags left out come from the environment when it has them, as under Kubernetes\n"
      "(docs/cluster.md): --nnodes from PET_NNODES, -n from PET_NPROC_PER_NODE (a number, or\n"
      "auto: this process's CPUs), --node-rank from PET_NODE_RANK or an Indexed Job's\n"
      "JOB_COMPLETION_INDEX, --rdzv-endpoint from PET_RDZV_ENDPOINT or\n"
      "PET_MASTER_ADDR:PET_MASTER_PORT; node 0 waits for its endpoint's name to resolve.\n"
      "\n"
      "flags:\n",
      makeLaunchParser().flagTable(),
      "\n"
      "examples:\n"
      "  chorus launch -n 4 --transport shm ./train --epochs 3\n"
      "  # on node 0 (10.0.0.1) and node 1, with CHORUS_JOB_SECRET set to one value on both:\n"
      "  chorus launch --nnodes 2 --node-rank 0 --rdzv-endpoint 10.0.0.1:29400 -n 2 -- ./train\n"
      "  chorus launch --nnodes 2 --node-rank 1 --rdzv-endpoint 10.0.0.1:29400 -n 2 -- ./train\n");
}

int launchCommand(const std::vector<std::string>& args) {
  ArgParser p = makeLaunchParser();
  p.parse(args);
  if (p.has("--help")) {
    std::cout << launchHelp();
    return 0;
  }
  if (const auto fromEnv = launchFlagsFromEnvironment(p); !fromEnv.empty()) {
    std::vector<std::string> all;
    std::string said;
    for (const auto& [flag, value, source] : fromEnv) {
      all.insert(all.end(), {flag, value});
      said += str(said.empty() ? "" : ", ", flag, " ", value, " (", source, ")");
    }
    all.insert(all.end(), args.begin(), args.end());
    p = makeLaunchParser();
    p.parse(all);
    std::cerr << "chorus launch: from the environment: " << said << std::endl;
  }
  if (!p.has("--nproc")) {
    throw UsageError("chorus launch: give the number of ranks: chorus launch -n N [flags] -- PROGRAM [ARGS...]");
  }
  if (p.rest().empty()) {
    throw UsageError("chorus launch: no program given: chorus launch -n N [flags] -- PROGRAM [ARGS...]");
  }
  LaunchOptions opts;
  opts.nproc = static_cast<int>(p.getInt("--nproc", 1, 4096));
  if (p.has("--servers")) {
    const int servers = static_cast<int>(p.getInt("--servers", 0, 4096));
    if (p.has("--keep-going")) opts.tolerateBelow = opts.nproc;
    if (p.has("--restarts")) {
      opts.restartFrom = opts.nproc;
      opts.maxRestarts = static_cast<int>(p.getInt("--restarts", 0, 1000));
    }
    opts.nproc += servers;
    opts.extraEnv.push_back({"CHORUS_PS_SERVERS", std::to_string(servers)});
  } else if (p.has("--min")) {
    opts.minWorkers = static_cast<int>(p.getInt("--min", 1, 4096));
    opts.maxWorkers = p.has("--max") ? static_cast<int>(p.getInt("--max", 1, 4096)) : opts.nproc;
    if (p.has("--restarts")) opts.elasticRestarts = static_cast<int>(p.getInt("--restarts", 0, 100000));
    if (opts.minWorkers > opts.nproc || opts.nproc > opts.maxWorkers)
      throw UsageError(str("chorus launch: need --min <= -n <= --max; got ", opts.minWorkers, ", ", opts.nproc, ", ",
                           opts.maxWorkers));
    if (p.has("--keep-going"))
      throw UsageError("chorus launch: --keep-going is for parameter-server workers; an elastic job (--min) "
                       "already goes on without a failed worker");
    opts.elasticKeepPositions = p.has("--keep-positions");
  } else if (p.has("--max") || p.has("--keep-positions")) {
    throw UsageError(str("chorus launch: ", p.has("--max") ? "--max bounds" : "--keep-positions shapes",
                         " an elastic job; give --min M too"));
  } else if (p.has("--keep-going") || p.has("--restarts")) {
    throw UsageError(str("chorus launch: ", p.has("--keep-going") ? "--keep-going" : "--restarts",
                         " applies to parameter-server jobs; give --servers S too"));
  }
  if (opts.maxRestarts > 0 && p.has("--transport") && p.get("--transport") != "tcp" && p.get("--transport") != "auto") {
    throw UsageError("chorus launch: --restarts needs the tcp transport (a restarted server reconnects over tcp); "
                     "use --transport tcp or auto");
  }
  if (p.has("--transport")) {
    std::string t = p.get("--transport");
    if (t == "mpi") {
      throw UsageError(
          "chorus launch: the mpi transport runs under mpirun, not chorus launch; use "
          "`CHORUS_TRANSPORT=mpi mpirun -n N PROGRAM ...` (or choose --transport auto, shm or tcp)");
    }
    opts.transport = p.getChoice("--transport", {"auto", "shm", "tcp"});
  }
  if (p.has("--timeout-ms")) opts.timeoutMs = p.getInt("--timeout-ms", 1, int64_t{1} << 40);
  opts.storeAddr = p.get("--store-addr");
  opts.grace = Millis(p.getInt("--grace-ms", 0, int64_t{1} << 31));
  opts.nnodes = static_cast<int>(p.getInt("--nnodes", 1, 4096));
  opts.nodeRank = static_cast<int>(p.getInt("--node-rank", 0, 4095));
  if (opts.nodeRank >= opts.nnodes)
    throw UsageError(str("chorus launch: --node-rank ", opts.nodeRank, " is not one of the --nnodes ", opts.nnodes,
                         " nodes (0 .. ", opts.nnodes - 1, ")"));
  if (opts.nnodes > 1) {
    if (!p.has("--rdzv-endpoint"))
      throw UsageError(str("chorus launch: --nnodes ", opts.nnodes, " needs --rdzv-endpoint HOST:PORT, where node 0 ",
                           "hosts the store (the same on every node)"));
    const std::string ep = p.get("--rdzv-endpoint");
    const size_t colon = ep.rfind(':');
    char* end = nullptr;
    const long port = colon == std::string::npos ? 0 : std::strtol(ep.c_str() + colon + 1, &end, 10);
    if (colon == std::string::npos || colon == 0 || end == nullptr || *end != '\0' || port < 1 || port > 65535)
      throw UsageError(str("chorus launch: --rdzv-endpoint '", ep, "' is not HOST:PORT with a port from 1 to 65535"));
    opts.rdzvHost = ep.substr(0, colon);
    opts.rdzvPort = static_cast<int>(port);
    if (p.has("--secret-file")) {
      std::ifstream in(p.get("--secret-file"));
      if (!in) throw UsageError(str("chorus launch: cannot read --secret-file ", p.get("--secret-file")));
      std::getline(in, opts.secret);
      while (!opts.secret.empty() && std::isspace(static_cast<unsigned char>(opts.secret.back()))) opts.secret.pop_back();
    } else if (const char* s = std::getenv("CHORUS_JOB_SECRET")) {
      opts.secret = s;
    }
    if (opts.secret.empty())
      throw UsageError("chorus launch: a multi-node job needs the same job secret on every node: set "
                       "CHORUS_JOB_SECRET (e.g. to `openssl rand -hex 16`) or give --secret-file FILE");
    if (p.has("--servers"))
      throw UsageError("chorus launch: --servers starts parameter servers on one node; it is not combined with "
                       "--nnodes yet (run the parameter-server job under mpirun or srun across nodes)");
    if (p.has("--min")) throw UsageError("chorus launch: an elastic job (--min) runs on one node; --nnodes is not yet supported with it");
  } else if (p.has("--rdzv-endpoint") || p.has("--secret-file")) {
    throw UsageError(str("chorus launch: ", p.has("--rdzv-endpoint") ? "--rdzv-endpoint" : "--secret-file",
                         " is for multi-node jobs; give --nnodes N too"));
  }
  return launchLocal(opts, p.rest());
}

}  // namespace chorus::tools
