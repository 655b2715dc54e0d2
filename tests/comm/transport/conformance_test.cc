// The transport conformance suite (tests/util/transport_conformance.h) on every transport that
// runs inside one test process: each case on loopback, shm and tcp with 2 and 3 ranks (the
// cheap ones also with 5 and 8), and on mixed with pretend hosts [0,0,1] and [0,0,1,1], so
// its rings cross both shm and tcp links. Ranks are threads, each with its own transport.
// A few cases also run with ranks that are forked processes (shm, tcp, mixed): the only way
// to kill a peer (peer_dies), and a check that nothing depends on sharing one address space.
// mpi runs the same cases under mpirun: tests/programs/mpi_transport_check.cc.
//
// Test names say the case and where it ran: Threads/Conformance.Case/fifo_within_a_tag__mixed_hosts_0_0_1.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "chorus/comm/rendezvous/memory_store.h"
#include "chorus/comm/rendezvous/store.h"
#include "chorus/comm/transport/factory.h"
#include "chorus/common/error.h"
#include "util/loopback_transport.h"
#include "util/rank_threads.h"
#include "util/reserved_port.h"
#include "util/transport_conformance.h"

namespace chorus::comm {
namespace {

namespace conf = testutil::conformance;

constexpr Millis kConnectTimeout(30000);
const char* const kSecret = "conformance-secret";

// A transport and where its ranks run: hosts[r] is rank r's pretend host (only mixed reads
// it; the others run every rank on this host).
struct Layout {
  std::string transport;
  std::vector<int> hosts;
  int size() const { return static_cast<int>(hosts.size()); }
};

Layout onOneHost(const std::string& transport, int n) {
  return {transport, std::vector<int>(static_cast<size_t>(n), 0)};
}

std::string layoutName(const Layout& l) {
  if (l.transport != "mixed") return testutil::transportSizeName(l.transport, l.size());
  std::string name = "mixed_hosts";
  for (int h : l.hosts) name += str("_", h);
  return name;
}

TransportOptions optionsFor(const Layout& l, int rank, Store* store, const std::string& job) {
  TransportOptions o;
  o.rank = rank;
  o.size = l.size();
  o.store = store;
  o.prefix = job;
  o.jobId = job;
  o.secret = kSecret;
  o.timeout = kConnectTimeout;
  o.bindAddr = "127.0.0.1";
  if (l.transport == "mixed") o.host = str("host", l.hosts[static_cast<size_t>(rank)]);
  return o;
}

std::atomic<int> jobCounter{0};
std::string newJob() { return str("conf", getpid(), "-", jobCounter++); }

// ---- ranks as threads ----

// Runs the case on one thread per rank, each with its own transport; a rank that throws
// closes its transport so the others fail at once. Every transport lives until every rank
// has returned. Returns each rank's failure ("" if none).
std::vector<std::string> runOnThreads(const Layout& l, const conf::Case& c) {
  const int n = l.size();
  std::vector<std::unique_ptr<Transport>> ts(static_cast<size_t>(n));
  if (l.transport == "loopback") ts = testutil::createLoopbackTransports(n);
  MemoryStore store;
  const std::string job = newJob();
  std::vector<std::string> failures(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      auto& t = ts[static_cast<size_t>(r)];
      try {
        if (!t) t = createTransport(l.transport, optionsFor(l, r, &store, job));
        c.run(*t);
      } catch (...) {
        failures[static_cast<size_t>(r)] = testutil::messageOf(std::current_exception());
        if (t) t->close();
      }
    });
  }
  for (auto& th : threads) th.join();
  return failures;
}

// ---- ranks as processes ----

// Waits until `key` counts `expected` (every rank adds 1 to it).
void storeBarrier(Store& store, const std::string& key, int64_t expected) {
  const Deadline deadline(kConnectTimeout);
  while (store.add(key, 0) < expected) {
    if (deadline.expired()) throw TimeoutError(str("store barrier '", key, "': fewer than ", expected, " ranks came"));
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

// One rank's process: rank 0 hosts the store on `port`; every rank connects its transport
// through it, runs the case, and waits for the others before it closes anything. Writes what
// went wrong (nothing if all went well) to `out` and exits.
[[noreturn]] void processRank(const Layout& l, const conf::Case& c, int rank, int port, const std::string& job,
                              int out) {
  std::string failure;
  std::unique_ptr<TcpStoreServer> server;
  std::unique_ptr<TcpStore> store;
  std::unique_ptr<Transport> t;
  try {
    if (rank == 0) {
      StoreServerOptions so;
      so.port = port;
      so.secret = kSecret;
      server = std::make_unique<TcpStoreServer>(so);
    }
    store = std::make_unique<TcpStore>("127.0.0.1", port, kSecret, kConnectTimeout);
    t = createTransport(l.transport, optionsFor(l, rank, store.get(), job));
    c.run(*t);
  } catch (const std::exception& e) {
    failure = e.what();
    if (t) t->close();
  }
  if (store) {
    // The dying rank never comes. Rank 0 keeps the store up until every other rank is done
    // with it.
    const int64_t ranks = l.size() - (c.killsARank ? 1 : 0);
    try {
      store->add("done", 1);
      storeBarrier(*store, "done", ranks);
      if (rank == 0) {
        storeBarrier(*store, "left", ranks - 1);
      } else {
        store->add("left", 1);
      }
    } catch (const std::exception& e) {
      if (failure.empty()) failure = str("after the case: ", e.what());
    }
  }
  size_t off = 0;
  while (off < failure.size()) {
    const ssize_t k = ::write(out, failure.data() + off, failure.size() - off);
    if (k <= 0) break;
    off += static_cast<size_t>(k);
  }
  _exit(failure.empty() ? 0 : 1);
}

// Runs the case on one forked process per rank. Returns each rank's failure ("" if none); the
// dying rank of a case that kills one must have died by SIGKILL.
std::vector<std::string> runOnProcesses(const Layout& l, const conf::Case& c) {
  const int n = l.size();
  const test::ReservedPort reserved;  // held until every rank is done: rank 0's store binds it
  const std::string job = newJob();
  std::vector<pid_t> pids;
  std::vector<int> pipes;
  for (int r = 0; r < n; ++r) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw SystemError("pipe2", errno);
    const pid_t pid = ::fork();
    if (pid < 0) throw SystemError("fork", errno);
    if (pid == 0) {
      ::close(fds[0]);
      processRank(l, c, r, reserved.port(), job, fds[1]);
    }
    ::close(fds[1]);
    pids.push_back(pid);
    pipes.push_back(fds[0]);
  }
  std::vector<std::string> failures(static_cast<size_t>(n));
  std::vector<int> status(static_cast<size_t>(n), 0);
  std::vector<bool> exited(static_cast<size_t>(n), false);
  const Deadline deadline(Millis(120000));
  for (int left = n; left > 0;) {
    for (int r = 0; r < n; ++r) {
      if (exited[static_cast<size_t>(r)]) continue;
      if (::waitpid(pids[static_cast<size_t>(r)], &status[static_cast<size_t>(r)], WNOHANG) ==
          pids[static_cast<size_t>(r)]) {
        exited[static_cast<size_t>(r)] = true;
        --left;
      }
    }
    if (left > 0 && deadline.expired()) {
      for (int r = 0; r < n; ++r) {
        if (exited[static_cast<size_t>(r)]) continue;
        ::kill(pids[static_cast<size_t>(r)], SIGKILL);
        ::waitpid(pids[static_cast<size_t>(r)], nullptr, 0);
        exited[static_cast<size_t>(r)] = true;
        failures[static_cast<size_t>(r)] = "still running after 120 s (killed)";
        --left;
      }
    }
    if (left > 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  for (int r = 0; r < n; ++r) {
    std::string said;
    char buf[4096];
    for (ssize_t k; (k = ::read(pipes[static_cast<size_t>(r)], buf, sizeof buf)) > 0;)
      said.append(buf, static_cast<size_t>(k));
    ::close(pipes[static_cast<size_t>(r)]);
    std::string& f = failures[static_cast<size_t>(r)];
    if (!f.empty()) continue;
    const int s = status[static_cast<size_t>(r)];
    if (c.killsARank && r == conf::kDyingRank) {
      if (!(WIFSIGNALED(s) && WTERMSIG(s) == SIGKILL))
        f = str("the dying rank did not die by SIGKILL (status ", s, "): ", said);
    } else if (!WIFEXITED(s)) {
      f = str("died (status ", s, ")");
    } else if (WEXITSTATUS(s) != 0 || !said.empty()) {
      f = said.empty() ? str("exited with ", WEXITSTATUS(s)) : said;
    }
  }
  return failures;
}

// ---- the tests ----

struct Param {
  const conf::Case* c;
  Layout layout;
  bool processes;
};

std::vector<Layout> threadLayouts(bool wide) {
  std::vector<Layout> v;
  for (const char* transport : {"loopback", "shm", "tcp"}) {
    for (int n : {2, 3}) v.push_back(onOneHost(transport, n));
    if (wide) {
      for (int n : {5, 8}) v.push_back(onOneHost(transport, n));
    }
  }
  v.push_back({"mixed", {0, 0, 1}});
  v.push_back({"mixed", {0, 0, 1, 1}});
  return v;
}

std::vector<Param> threadParams() {
  std::vector<Param> v;
  for (const conf::Case& c : conf::cases()) {
    if (c.killsARank) continue;
    for (const Layout& l : threadLayouts(c.wide)) {
      if (l.size() >= c.minRanks) v.push_back({&c, l, false});
    }
  }
  return v;
}

std::vector<Param> processParams() {
  std::vector<Param> v;
  for (const char* name : {"all_pairs_exchange", "peer_closes", "peer_dies"}) {
    const conf::Case& c = conf::findCase(name);
    for (const Layout& l :
         {onOneHost("shm", 3), onOneHost("tcp", 3), Layout{"mixed", {0, 0, 1}}, Layout{"mixed", {0, 0, 1, 1}}}) {
      v.push_back({&c, l, true});
    }
  }
  return v;
}

std::string paramName(const ::testing::TestParamInfo<Param>& info) {
  return str(info.param.c->name, "__", layoutName(info.param.layout));
}

// What gtest prints for a parameter (instead of its bytes).
void PrintTo(const Param& p, std::ostream* os) {
  *os << p.c->name << " on " << layoutName(p.layout) << (p.processes ? " (processes)" : " (threads)");
}

class Conformance : public ::testing::TestWithParam<Param> {};

TEST_P(Conformance, Case) {
  const Param& p = GetParam();
  const auto failures = p.processes ? runOnProcesses(p.layout, *p.c) : runOnThreads(p.layout, *p.c);
  for (size_t r = 0; r < failures.size(); ++r) {
    EXPECT_EQ(failures[r], "") << "case " << p.c->name << " (" << p.c->checks << ") on " << layoutName(p.layout)
                               << (p.processes ? " (ranks are processes)" : "") << ": rank " << r << " failed";
  }
}

INSTANTIATE_TEST_SUITE_P(Threads, Conformance, ::testing::ValuesIn(threadParams()), paramName);
INSTANTIATE_TEST_SUITE_P(Processes, Conformance, ::testing::ValuesIn(processParams()), paramName);

// Every case runs somewhere, under its own name.
TEST(ConformanceSuite, EveryCaseRunsUnderAUniqueName) {
  std::set<std::string> names, ran;
  for (const conf::Case& c : conf::cases()) EXPECT_TRUE(names.insert(c.name).second) << "two cases named " << c.name;
  for (const Param& p : threadParams()) ran.insert(p.c->name);
  for (const Param& p : processParams()) ran.insert(p.c->name);
  EXPECT_EQ(ran, names);
  EXPECT_THROW(conf::findCase("no_such_case"), std::invalid_argument);
}

}  // namespace
}  // namespace chorus::comm
