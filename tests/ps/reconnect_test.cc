// A parameter server that dies while its workers train, and the restarted process that takes
// its place (tcp transports with acceptRejoin, ranks as threads of this process): the workers
// notice, wait for the new process, resynchronize with it (client.h) and finish. Checked: with
// a checkpoint the new server resumes from it and every later push lands on it; without one it
// starts from the values a worker last pulled, not from scratch; a client that may not
// reconnect fails with PeerError as before; bsp rounds go on after the restart. And a worker
// that dies and is restarted: the new process rejoins (Client::rejoin) at the step the server
// counted for it, under bsp, asp and ssp.
#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/comm/group.h"
#include "chorus/comm/rendezvous/memory_store.h"
#include "chorus/comm/transport/factory.h"
#include "chorus/comm/transport/tcp/context.h"
#include "chorus/ps/client.h"
#include "chorus/ps/server.h"

namespace chorus::ps {
namespace {

constexpr int kWorkers = 2;
constexpr int kSize = kWorkers + 1;  // ranks 0, 1: workers; rank 2: the server
constexpr int kServerRank = kWorkers;
constexpr int kNumel = 10;
constexpr Millis kTimeout(10000);
constexpr float kStart = 1.0f;

comm::TransportOptions options(comm::Store* store, int rank, bool rejoin) {
  comm::TransportOptions o;
  o.rank = rank;
  o.size = kSize;
  o.store = store;
  o.prefix = "ps-reconnect";
  o.secret = "ps-reconnect-secret";
  o.timeout = kTimeout;
  o.acceptRejoin = true;
  o.rejoin = rejoin;
  return o;
}

std::shared_ptr<comm::ProcessGroup> group(std::unique_ptr<comm::tcp::Context> ctx) {
  comm::GroupOptions g;
  g.timeout = kTimeout;
  return comm::ProcessGroup::create(std::shared_ptr<comm::Transport>(std::move(ctx)), g);
}

// Sets up every rank's transport at once (setup needs them all at the same time).
std::vector<std::unique_ptr<comm::tcp::Context>> connectWorld(comm::Store* store) {
  std::vector<std::unique_ptr<comm::tcp::Context>> ctx(kSize);
  std::vector<std::thread> ts;
  for (int r = 0; r < kSize; ++r) {
    ts.emplace_back([&, r] { ctx[static_cast<size_t>(r)] = std::make_unique<comm::tcp::Context>(options(store, r, false)); });
  }
  for (auto& t : ts) t.join();
  return ctx;
}

// Blocks until `count` parties have arrived.
class Gate {
 public:
  void arrive() {
    std::lock_guard<std::mutex> lock(mu_);
    ++arrived_;
    cv_.notify_all();
  }
  void waitFor(int count) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return arrived_ >= count; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
};

struct Outcome {
  ServerReport first, second;
  std::vector<float> finalValues;
  std::vector<int64_t> reconnects = std::vector<int64_t>(kWorkers, 0);
  std::vector<std::string> workerErrors = std::vector<std::string>(kWorkers);
  std::vector<std::vector<float>> before = std::vector<std::vector<float>>(kWorkers);  // last pull before the kill
};

// Trains `steps` push/pull rounds per worker (gradient 1 everywhere, lr 1), kills the server
// (closes its transport, as if its process died), restarts it in its place, and trains
// `steps` more.
Outcome run(Mode mode, const std::string& checkpoint, int steps) {
  comm::MemoryStore store;
  ShardPlan plan = ShardPlan::make({TensorSpec{"w", kNumel}}, 1);
  ServerOptions so;
  so.consistency.mode = mode;
  so.consistency.workers = kWorkers;
  so.checkpointPath = checkpoint;
  so.checkpointEvery = 1;
  Outcome out;

  std::vector<std::unique_ptr<comm::tcp::Context>> ctx = connectWorld(&store);
  comm::Transport* firstServerTransport = ctx[kServerRank].get();
  auto firstServer = std::make_unique<Server>(group(std::move(ctx[kServerRank])), 0, std::vector<int>{0, 1}, plan, so);

  Gate trained, restarted;
  std::thread serverThread([&] {
    try {
      out.first = firstServer->run();
    } catch (const std::exception&) {
      // The transport was closed under it: this is the "death".
    }
  });
  std::vector<std::thread> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&, w, g = group(std::move(ctx[static_cast<size_t>(w)]))] {
      try {
        Client c(g, w, {kServerRank}, plan, kTimeout, /*reconnectTimeout=*/kTimeout);
        std::vector<float> p(kNumel, kStart);
        const std::vector<float> grad(kNumel, 1.0f);
        if (w == 0) c.init({std::span<const float>(p)});
        c.pull({std::span<float>(p)});
        for (int s = 0; s < steps; ++s) {
          c.push({std::span<const float>(grad)}, 1.0);
          c.pull({std::span<float>(p)});
        }
        out.before[static_cast<size_t>(w)] = p;
        trained.arrive();
        restarted.waitFor(1);
        for (int s = 0; s < steps; ++s) {
          c.push({std::span<const float>(grad)}, 1.0);
          c.pull({std::span<float>(p)});
        }
        c.bye();
        out.reconnects[static_cast<size_t>(w)] = c.reconnects();
      } catch (const std::exception& e) {
        out.workerErrors[static_cast<size_t>(w)] = e.what();
        trained.arrive();
      }
    });
  }
  trained.waitFor(kWorkers);
  firstServerTransport->close();
  serverThread.join();
  firstServer.reset();

  // The restarted process: rejoins, then resumes from the checkpoint if there is one.
  so.resume = true;
  std::thread second([&] {
    auto g = group(std::make_unique<comm::tcp::Context>(options(&store, kServerRank, true)));
    Server srv(g, 0, {0, 1}, plan, so);
    restarted.arrive();
    out.second = srv.run();
    out.finalValues = srv.values();
  });
  for (auto& t : workers) t.join();
  second.join();
  return out;
}

// Every worker finished without an error and resynchronized exactly once.
void expectEveryWorkerReconnectedOnce(const Outcome& o) {
  for (int w = 0; w < kWorkers; ++w) {
    ASSERT_EQ(o.workerErrors[static_cast<size_t>(w)], "") << "worker " << w;
    EXPECT_EQ(o.reconnects[static_cast<size_t>(w)], 1) << "worker " << w;
  }
}

std::string tempPath(const std::string& name) {
  return str(::testing::TempDir(), "chorus_ps_reconnect_", ::getpid(), "_", name);
}

TEST(PsReconnect, AspServerResumesFromItsCheckpointAndWorkersFinish) {
  const std::string ckpt = tempPath("asp.ckpt");
  std::remove(ckpt.c_str());
  const int steps = 5;
  Outcome o = run(Mode::kAsp, ckpt, steps);
  ASSERT_NO_FATAL_FAILURE(expectEveryWorkerReconnectedOnce(o));
  EXPECT_TRUE(o.second.resumedFromCheckpoint);
  // checkpointEvery = 1 and every push of the first part was acknowledged after it was
  // applied... in asp the ack comes first, so the checkpoint may lack the last few; every push
  // after the restart is applied on top of what it loaded.
  EXPECT_GE(o.second.version, steps * kWorkers);
  EXPECT_LE(o.second.version, 2 * steps * kWorkers);
  EXPECT_EQ(o.second.pushes, steps * kWorkers);
  // asp, gradient 1, lr 1, N = 2: each applied push moves every value by -1/2.
  ASSERT_EQ(o.finalValues.size(), static_cast<size_t>(kNumel));
  for (float v : o.finalValues) EXPECT_FLOAT_EQ(v, kStart - 0.5f * static_cast<float>(o.second.version));
  std::remove(ckpt.c_str());
}

TEST(PsReconnect, WithoutACheckpointTheServerStartsFromTheWorkersValues) {
  const int steps = 4;
  Outcome o = run(Mode::kAsp, "", steps);
  ASSERT_NO_FATAL_FAILURE(expectEveryWorkerReconnectedOnce(o));
  EXPECT_FALSE(o.second.resumedFromCheckpoint);
  EXPECT_EQ(o.second.version, steps * kWorkers);
  // The new server took a worker's last pulled values as its init (both pulled the same
  // lineage, so either one), then applied steps * workers pushes of -1/2 each.
  ASSERT_EQ(o.finalValues.size(), static_cast<size_t>(kNumel));
  const float lastPulled[] = {o.before[0][0], o.before[1][0]};
  const float moved = 0.5f * static_cast<float>(steps * kWorkers);
  EXPECT_TRUE(o.finalValues[0] == lastPulled[0] - moved || o.finalValues[0] == lastPulled[1] - moved)
      << o.finalValues[0] << " is not a worker's last pull (" << lastPulled[0] << ", " << lastPulled[1] << ") minus "
      << moved;
  EXPECT_LT(o.finalValues[0], kStart - moved);  // not from scratch
}

TEST(PsReconnect, BspRoundsGoOnAfterTheRestart) {
  const std::string ckpt = tempPath("bsp.ckpt");
  std::remove(ckpt.c_str());
  const int steps = 4;
  Outcome o = run(Mode::kBsp, ckpt, steps);
  ASSERT_NO_FATAL_FAILURE(expectEveryWorkerReconnectedOnce(o));
  EXPECT_TRUE(o.second.resumedFromCheckpoint);
  // bsp applies after both pushes of a round: the first server finished `steps` rounds (each
  // checkpointed before its pulls were answered), the new one `steps` more on top of them.
  EXPECT_EQ(o.second.version, 2 * steps);
  EXPECT_EQ(o.second.bspPartialRounds, 0);
  // Gradient 1, lr 1: each round moves every value by -1.
  for (float v : o.finalValues) EXPECT_FLOAT_EQ(v, kStart - static_cast<float>(2 * steps));
  std::remove(ckpt.c_str());
}

// ---- a worker that dies and is restarted (ServerOptions::workerRestarts) ----

struct WorkerRestart {
  ServerReport report;
  std::vector<float> finalValues;
  int64_t resumedAt = -1;             // what Client::rejoin returned to the new worker 1
  int64_t secondPushes = 0;           // the new worker 1's pushes
  std::vector<std::string> errors = std::vector<std::string>(kWorkers);
};

// Worker 1 pushes `before` times, dies (its transport closes, as when its process is killed)
// and a new process takes rank 1 (a tcp context with rejoin): it calls rejoin() and pushes
// until its clock reaches `steps`. Worker 0 pushes `steps` times, the second half after the
// death. Gradient 1, lr 1, one server with workerRestarts = 1.
WorkerRestart runWorkerRestart(Mode mode, int steps, int before) {
  comm::MemoryStore store;
  ShardPlan plan = ShardPlan::make({TensorSpec{"w", kNumel}}, 1);
  ServerOptions so;
  so.consistency.mode = mode;
  so.consistency.workers = kWorkers;
  so.consistency.staleness = 1;
  so.workerRestarts = 1;
  WorkerRestart out;
  std::vector<std::unique_ptr<comm::tcp::Context>> ctx = connectWorld(&store);
  Gate died;
  std::thread server([&, g = group(std::move(ctx[kServerRank]))] {
    Server srv(g, 0, {0, 1}, plan, so);
    out.report = srv.run();
    out.finalValues = srv.values();
  });
  const std::vector<float> grad(kNumel, 1.0f);
  std::thread w0([&, g = group(std::move(ctx[0]))] {
    try {
      Client c(g, 0, {kServerRank}, plan, kTimeout);
      std::vector<float> p(kNumel, kStart);
      c.init({std::span<const float>(p)});
      c.pull({std::span<float>(p)});
      for (int s = 0; s < steps; ++s) {
        if (s == steps / 2) died.waitFor(1);
        c.push({std::span<const float>(grad)}, 1.0);
        c.pull({std::span<float>(p)});
      }
      c.bye();
    } catch (const std::exception& e) {
      out.errors[0] = e.what();
    }
  });
  std::thread w1([&, first = std::move(ctx[1])]() mutable {
    try {
      comm::Transport* t = first.get();
      auto g = group(std::move(first));
      {
        Client c(g, 1, {kServerRank}, plan, kTimeout);
        std::vector<float> p(kNumel, kStart);
        c.pull({std::span<float>(p)});
        for (int s = 0; s < before; ++s) {
          c.push({std::span<const float>(grad)}, 1.0);
          c.pull({std::span<float>(p)});
        }
        t->close();  // the process dies: the server sees the connection fail
      }
      g.reset();
      died.arrive();
      // The restarted process.
      auto g2 = group(std::make_unique<comm::tcp::Context>(options(&store, 1, true)));
      Client c(g2, 1, {kServerRank}, plan, kTimeout);
      std::vector<float> p(kNumel, 0.0f);
      out.resumedAt = c.rejoin({std::span<float>(p)});
      for (int64_t s = out.resumedAt; s < steps; ++s) {
        c.push({std::span<const float>(grad)}, 1.0);
        c.pull({std::span<float>(p)});
        ++out.secondPushes;
      }
      c.bye();
    } catch (const std::exception& e) {
      out.errors[1] = e.what();
      died.arrive();
    }
  });
  w0.join();
  w1.join();
  server.join();
  return out;
}

class WorkerRestartTest : public ::testing::TestWithParam<Mode> {};

TEST_P(WorkerRestartTest, ARestartedWorkerRejoinsWhereTheServerCountedIt) {
  const Mode mode = GetParam();
  const int steps = 8, before = 3;
  WorkerRestart o = runWorkerRestart(mode, steps, before);
  for (int w = 0; w < kWorkers; ++w) ASSERT_EQ(o.errors[static_cast<size_t>(w)], "") << "worker " << w;
  const ServerReport& r = o.report;
  EXPECT_EQ(r.failedWorkers, std::vector<int>{1});
  EXPECT_EQ(r.rejoinedWorkers, std::vector<int>{1});
  EXPECT_EQ(r.workers[1].rejoins, 1);
  EXPECT_FALSE(r.workers[1].left && r.workers[1].failed);
  // It resumes at its own count: none of its steps skipped, none done twice.
  EXPECT_EQ(o.resumedAt, before);
  EXPECT_EQ(o.secondPushes, steps - before);
  EXPECT_EQ(r.workers[1].pushes, before + o.secondPushes);
  EXPECT_EQ(r.workers[1].clock, steps);
  EXPECT_EQ(r.workers[0].pushes, steps);
  ASSERT_EQ(o.finalValues.size(), static_cast<size_t>(kNumel));
  if (mode == Mode::kBsp) {
    // Every round averages gradients of 1 at lr 1: -1 per round, partial rounds included.
    EXPECT_GE(r.version, steps);
    for (float v : o.finalValues) EXPECT_FLOAT_EQ(v, kStart - static_cast<float>(r.version));
  } else {
    // Every push is applied once, as 1/N of a step.
    EXPECT_EQ(r.version, r.pushes);
    for (float v : o.finalValues) EXPECT_FLOAT_EQ(v, kStart - 0.5f * static_cast<float>(r.pushes));
  }
  if (mode == Mode::kSsp) {
    EXPECT_LE(r.workers[0].maxClockGap, 1);
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, WorkerRestartTest, ::testing::Values(Mode::kBsp, Mode::kAsp, Mode::kSsp),
                         [](const ::testing::TestParamInfo<Mode>& i) { return std::string(modeName(i.param)); });

TEST(PsReconnect, WithoutReconnectingADeadServerIsAPeerError) {
  comm::MemoryStore store;
  ShardPlan plan = ShardPlan::make({TensorSpec{"w", kNumel}}, 1);
  std::vector<std::unique_ptr<comm::tcp::Context>> ctx = connectWorld(&store);
  ctx[kServerRank].reset();  // the server's process is gone
  ctx[1].reset();
  Client c(group(std::move(ctx[0])), 0, {kServerRank}, plan, Millis(2000));
  std::vector<float> p(kNumel, kStart);
  try {
    c.pull({std::span<float>(p)});
    FAIL() << "a pull from a dead server returned";
  } catch (const PeerError& e) {
    EXPECT_EQ(e.peer(), kServerRank) << e.what();
  }
}

}  // namespace
}  // namespace chorus::ps
