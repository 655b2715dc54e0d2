#include "rank_threads.h"

#include <unistd.h>

#include <atomic>
#include <thread>

#include "chorus/common/error.h"
#include "chorus/comm/rendezvous/memory_store.h"
#include "chorus/comm/transport/factory.h"
#include "loopback_transport.h"

namespace chorus::testutil {

namespace {

// Distinguishes the jobs of one test process (store prefixes, shm segment names) and of
// concurrent test processes (the pid).
std::atomic<int> runCounter{0};

}  // namespace

namespace {

// Runs the ranks; failed[r] is the order in which rank r failed (0 first), -1 if it did not.
std::vector<std::exception_ptr> runImpl(int n, const RankOptions& opts, const RankFn& fn, std::vector<int>& failed) {
  CHORUS_CHECK(n >= 1, "runRanks needs at least one rank");
  const int run = runCounter++;
  const std::string job = str("rt", getpid(), "-", run);
  comm::MemoryStore store;

  std::vector<std::shared_ptr<comm::Transport>> transports(static_cast<size_t>(n));
  const std::vector<int> hosts = !opts.hosts.empty() || opts.transport != "mixed" ? opts.hosts : defaultHosts(n);
  CHORUS_CHECK(hosts.empty() || hosts.size() == static_cast<size_t>(n), "RankOptions::hosts has ", hosts.size(),
               " entries for ", n, " ranks");
  if (opts.transport == "loopback") {
    auto created = createLoopbackTransports(n);
    for (int r = 0; r < n; ++r) {
      transports[static_cast<size_t>(r)] = std::move(created[static_cast<size_t>(r)]);
      if (!hosts.empty()) transports[static_cast<size_t>(r)]->setHosts(hosts);
    }
  }

  std::atomic<int> failures{0};
  failed.assign(static_cast<size_t>(n), -1);
  std::vector<std::exception_ptr> outcome(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      auto& transport = transports[static_cast<size_t>(r)];
      // Declared outside the try: on failure the transport is closed before the group's
      // destructor waits for its queued calls, so those fail at once instead of timing out.
      std::shared_ptr<comm::ProcessGroup> group;
      try {
        if (!transport) {
          comm::TransportOptions t;
          t.rank = r;
          t.size = n;
          t.store = &store;
          t.prefix = job;
          t.secret = "rank-threads-secret";
          t.jobId = job;
          t.timeout = opts.connectTimeout;
          t.bindAddr = "127.0.0.1";
          if (!hosts.empty()) t.host = str("host", hosts[static_cast<size_t>(r)]);
          transport = comm::createTransport(opts.transport, t);
        }
        comm::GroupOptions g;
        g.timeout = opts.timeout;
        g.defaultAlgo = opts.algo;
        group = comm::ProcessGroup::create(transport, g);
        fn(*group);
      } catch (...) {
        failed[static_cast<size_t>(r)] = failures++;
        outcome[static_cast<size_t>(r)] = std::current_exception();
        if (opts.closeOnError && transport) transport->close();
      }
      group.reset();
    });
  }
  for (auto& t : threads) t.join();
  return outcome;
}

}  // namespace

std::vector<std::exception_ptr> runRanksCollect(int n, const RankOptions& opts, const RankFn& fn) {
  std::vector<int> failed;
  return runImpl(n, opts, fn, failed);
}

void runRanks(int n, const RankOptions& opts, const RankFn& fn) {
  std::vector<int> failed;
  auto outcome = runImpl(n, opts, fn, failed);
  int first = -1;
  for (int r = 0; r < n; ++r) {
    if (failed[static_cast<size_t>(r)] >= 0 &&
        (first < 0 || failed[static_cast<size_t>(r)] < failed[static_cast<size_t>(first)])) {
      first = r;
    }
  }
  if (first >= 0) std::rethrow_exception(outcome[static_cast<size_t>(first)]);
}

void runRanks(int n, const std::string& transport, const RankFn& fn) {
  RankOptions opts;
  opts.transport = transport;
  runRanks(n, opts, fn);
}

std::vector<int> defaultHosts(int n) {
  std::vector<int> hosts(static_cast<size_t>(n), 0);
  for (int r = (n + 1) / 2; r < n; ++r) hosts[static_cast<size_t>(r)] = 1;
  return hosts;
}

const std::vector<std::string>& testTransports() {
  static const std::vector<std::string> names = {"loopback", "shm", "tcp", "mixed"};
  return names;
}

std::string transportSizeName(const std::string& transport, int n) { return str(transport, "_", n, "ranks"); }

std::string messageOf(const std::exception_ptr& e) {
  if (!e) return "";
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
    return "unknown exception";
  }
}

}  // namespace chorus::testutil
