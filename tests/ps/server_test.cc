// The parameter server end to end, ranks as threads: workers (ranks 0..N-1) run Clients,
// servers (ranks N..N+S-1) run Servers. Checks bsp against a one-process reference, the
// ssp/asp/backup-worker rules through the servers' reports, malformed messages, checkpoints
// and a worker that dies.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "chorus/common/hmac.h"
#include "chorus/compress/factory.h"
#include "chorus/ps/client.h"
#include "chorus/ps/protocol.h"
#include "chorus/ps/server.h"
#include "util/rank_threads.h"

namespace chorus::ps {
namespace {

using testutil::RankOptions;

// The harness hands each rank a reference; Server and Client take a shared_ptr that does not
// own it.
std::shared_ptr<comm::ProcessGroup> borrow(comm::ProcessGroup& g) {
  return std::shared_ptr<comm::ProcessGroup>(std::shared_ptr<comm::ProcessGroup>(), &g);
}

// 20 elements over 2 servers: w1 (7) and b1 (2) on server 0, w2 split 1 | 10 across them.
std::vector<TensorSpec> modelSpecs(const std::string& lastName = "w2") {
  return {{"w1", 7}, {"b1", 2}, {lastName, 11}};
}

std::vector<std::vector<float>> initialParams(const ShardPlan& plan) {
  std::vector<std::vector<float>> p;
  for (size_t t = 0; t < plan.tensors().size(); ++t) {
    std::vector<float> v(static_cast<size_t>(plan.tensors()[t].numel));
    for (size_t i = 0; i < v.size(); ++i) v[i] = 0.5f - 0.07f * static_cast<float>(i) + 0.3f * static_cast<float>(t);
    p.push_back(std::move(v));
  }
  return p;
}

// Worker w's deterministic gradient at parameters p: p * c_w + d_w.
std::vector<std::vector<float>> gradient(const std::vector<std::vector<float>>& p, int w) {
  const float c = 0.1f * static_cast<float>(w + 1);
  std::vector<std::vector<float>> g = p;
  for (size_t t = 0; t < g.size(); ++t) {
    for (size_t i = 0; i < g[t].size(); ++i) {
      const float d = 0.01f * static_cast<float>(i + 1) * static_cast<float>(w + 1) - 0.05f * static_cast<float>(t);
      g[t][i] = p[t][i] * c + d;
    }
  }
  return g;
}

std::vector<std::span<const float>> cspans(const std::vector<std::vector<float>>& v) {
  return {v.begin(), v.end()};
}
std::vector<std::span<float>> spans(std::vector<std::vector<float>>& v) { return {v.begin(), v.end()}; }

std::vector<float> flat(const std::vector<std::vector<float>>& v) {
  std::vector<float> out;
  for (const auto& t : v) out.insert(out.end(), t.begin(), t.end());
  return out;
}

// The formulas of optimizer.h, element by element, in double, rounded to float when stored.
struct ReferenceOptimizer {
  OptimizerOptions o;
  std::vector<float> buf, m, v;
  int64_t t = 0;
  void step(std::vector<float>& p, const std::vector<float>& g, double lr) {
    if (buf.empty()) buf.assign(p.size(), 0.0f), m.assign(p.size(), 0.0f), v.assign(p.size(), 0.0f);
    ++t;
    for (size_t i = 0; i < p.size(); ++i) {
      if (o.name == "sgd") {
        double d = g[i] + o.weightDecay * p[i];
        if (o.momentum > 0) {
          const double b = t == 1 ? d : o.momentum * buf[i] + (1 - o.dampening) * d;
          buf[i] = static_cast<float>(b);
          d = o.nesterov ? d + o.momentum * b : b;
        }
        p[i] = static_cast<float>(p[i] - lr * d);
      } else {  // adam
        const double gi = g[i] + o.weightDecay * p[i];
        const double mi = o.beta1 * m[i] + (1 - o.beta1) * gi;
        const double vi = o.beta2 * v[i] + (1 - o.beta2) * gi * gi;
        m[i] = static_cast<float>(mi);
        v[i] = static_cast<float>(vi);
        const double stepSize = lr / (1 - std::pow(o.beta1, static_cast<double>(t)));
        const double bc2 = std::sqrt(1 - std::pow(o.beta2, static_cast<double>(t)));
        p[i] = static_cast<float>(p[i] - stepSize * mi / (std::sqrt(vi) / bc2 + o.eps));
      }
    }
  }
};

// bsp in one process: every step averages the workers' gradients (summed in double, as the
// server does) and applies one optimizer step.
std::vector<float> bspReference(const ShardPlan& plan, const OptimizerOptions& o, int workers, int steps, double lr) {
  auto p = initialParams(plan);
  ReferenceOptimizer opt;
  opt.o = o;
  for (int s = 0; s < steps; ++s) {
    std::vector<double> sum(static_cast<size_t>(plan.totalNumel()), 0.0);
    for (int w = 0; w < workers; ++w) {
      const auto g = flat(gradient(p, w));
      for (size_t i = 0; i < g.size(); ++i) sum[i] += g[i];
    }
    std::vector<float> avg(sum.size());
    for (size_t i = 0; i < sum.size(); ++i) avg[i] = static_cast<float>(sum[i] / workers);
    std::vector<float> fp = flat(p);
    opt.step(fp, avg, lr);
    size_t at = 0;
    for (auto& t : p) {
      for (float& x : t) x = fp[at++];
    }
  }
  return flat(p);
}

// Relative tolerance of the bsp comparisons (plus 1e-7 absolute near zero): the server and the
// reference run the same formulas on the same floats, so they agree to a few ulps.
constexpr double kRelTol = 1e-6;

void expectNear(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], kRelTol * std::fabs(want[i]) + 1e-7) << what << " element " << i;
  }
}

// One job: N workers, S servers. `work` runs on each worker with its Client (after worker 0's
// init); the job collects each server's report and final values, and each worker's last pull.
struct Job {
  int workers = 3, servers = 2;
  ShardPlan plan = ShardPlan::make(modelSpecs(), 2);
  ServerOptions server;
  RankOptions ranks;
  std::function<void(Client&, int)> work;
  std::function<void(Client&, int)> prepare;  // if set: on each worker's client before init

  std::vector<ServerReport> reports;
  std::vector<std::vector<float>> serverValues;
  std::vector<std::vector<float>> workerParams;
  std::vector<double> pullWait;
  std::vector<double> workerSeconds;

  std::vector<int> serverRanks() const {
    std::vector<int> r;
    for (int s = 0; s < servers; ++s) r.push_back(workers + s);
    return r;
  }
  std::vector<int> workerRanks() const {
    std::vector<int> r;
    for (int w = 0; w < workers; ++w) r.push_back(w);
    return r;
  }

  // Runs the ranks; returns each rank's outcome.
  std::vector<std::exception_ptr> run() {
    server.consistency.workers = workers;
    server.serverRanks = serverRanks();
    reports.assign(static_cast<size_t>(servers), {});
    serverValues.assign(static_cast<size_t>(servers), {});
    workerParams.assign(static_cast<size_t>(workers), {});
    pullWait.assign(static_cast<size_t>(workers), 0);
    workerSeconds.assign(static_cast<size_t>(workers), 0);
    return testutil::runRanksCollect(workers + servers, ranks, [&](comm::ProcessGroup& g) {
      const int r = g.rank();
      if (r >= workers) {
        const int s = r - workers;
        Server srv(borrow(g), s, workerRanks(), plan, server);
        reports[static_cast<size_t>(s)] = srv.run();
        serverValues[static_cast<size_t>(s)] = srv.values();
        return;
      }
      const auto t0 = std::chrono::steady_clock::now();
      Client c(borrow(g), r, serverRanks(), plan);
      if (prepare) prepare(c, r);
      if (r == 0) c.init(cspans(initialParams(plan)));
      work(c, r);
      c.bye();
      pullWait[static_cast<size_t>(r)] = c.pullWaitSeconds();
      workerSeconds[static_cast<size_t>(r)] =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    });
  }
  void runOk() {
    const auto outcome = run();
    for (size_t r = 0; r < outcome.size(); ++r) {
      ASSERT_EQ(outcome[r], nullptr) << "rank " << r << ": " << testutil::messageOf(outcome[r]);
    }
  }
  std::vector<float> allServerValues() const {
    std::vector<float> out;
    for (const auto& v : serverValues) out.insert(out.end(), v.begin(), v.end());
    return out;
  }
};

// The usual loop: pull, compute the gradient, optionally sleep, push; a final pull.
std::function<void(Client&, int)> trainLoop(Job& job, int steps, double lr,
                                            std::function<void(int, int)> pause = nullptr) {
  return [&job, steps, lr, pause](Client& c, int w) {
    auto p = initialParams(job.plan);
    for (int s = 0; s < steps; ++s) {
      c.pull(spans(p));
      const auto g = gradient(p, w);
      if (pause) pause(w, s);
      c.push(cspans(g), lr);
    }
    c.pull(spans(p));
    job.workerParams[static_cast<size_t>(w)] = flat(p);
  };
}

void sleepMs(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

// ---- 1. bsp equals the one-process reference ----

class BspTest : public ::testing::TestWithParam<std::string> {};

TEST_P(BspTest, SgdMomentumMatchesReference) {
  Job job;
  job.ranks.transport = GetParam();
  job.server.optimizer.name = "sgd";
  job.server.optimizer.momentum = 0.9;
  job.server.optimizer.weightDecay = 0.01;
  job.work = trainLoop(job, 6, 0.1);
  job.runOk();
  const auto want = bspReference(job.plan, job.server.optimizer, job.workers, 6, 0.1);
  expectNear(job.allServerValues(), want, "server values");
  for (int w = 0; w < job.workers; ++w) expectNear(job.workerParams[static_cast<size_t>(w)], want, "worker pull");
  for (const auto& r : job.reports) {
    EXPECT_EQ(r.version, 6);
    EXPECT_EQ(r.pushes, 6 * job.workers);
    EXPECT_EQ(r.errorsSent, 0);
    EXPECT_TRUE(r.failedWorkers.empty());
    for (const auto& st : r.workers) {
      EXPECT_EQ(st.applied, 6);
      EXPECT_EQ(st.dropped, 0);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Transports, BspTest, ::testing::Values("loopback", "shm", "tcp"));

TEST(PsServer, BspAdamMatchesReference) {
  Job job;
  job.server.optimizer.name = "adam";
  job.server.applyThreads = 3;
  job.work = trainLoop(job, 5, 0.01);
  job.runOk();
  const auto want = bspReference(job.plan, job.server.optimizer, job.workers, 5, 0.01);
  expectNear(job.allServerValues(), want, "server values");
  expectNear(job.workerParams[1], want, "worker 1's pull");
}

// asp with one worker is plain sequential training (the 1/N scale is 1).
TEST(PsServer, AspOneWorkerIsSequential) {
  Job job;
  job.workers = 1;
  job.server.consistency.mode = Mode::kAsp;
  job.server.optimizer.momentum = 0.5;
  job.work = trainLoop(job, 5, 0.1);
  job.runOk();
  expectNear(job.allServerValues(), bspReference(job.plan, job.server.optimizer, 1, 5, 0.1), "server values");
}

// ---- 2. ssp bounds the clock gap ----

class SspTest : public ::testing::TestWithParam<int> {};

TEST_P(SspTest, ClockGapStaysWithinStaleness) {
  const int s = GetParam();
  Job job;
  job.servers = 1;
  job.plan = ShardPlan::make(modelSpecs(), 1);
  job.server.consistency.mode = Mode::kSsp;
  job.server.consistency.staleness = s;
  constexpr int kSlow = 2;
  job.work = trainLoop(job, 8, 0.05, [](int w, int) {
    if (w == kSlow) sleepMs(25);
  });
  job.runOk();
  const ServerReport& r = job.reports[0];
  EXPECT_EQ(r.version, 8 * job.workers);
  for (int w = 0; w < job.workers; ++w) {
    const WorkerStats& st = r.workers[static_cast<size_t>(w)];
    EXPECT_LE(st.maxClockGap, s) << "worker " << w;
    EXPECT_EQ(st.applied, 8);
    if (w != kSlow) {
      // The fast workers ran ahead to the bound and then waited for the slow one.
      EXPECT_EQ(st.maxClockGap, s) << "worker " << w;
      EXPECT_GT(job.pullWait[static_cast<size_t>(w)], 0.05) << "worker " << w;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Staleness, SspTest, ::testing::Values(1, 2));

// ---- 3. asp never waits and records staleness ----

TEST(PsServer, AspRecordsStaleness) {
  Job job;
  job.server.consistency.mode = Mode::kAsp;
  constexpr int kSlow = 2;
  job.work = trainLoop(job, 12, 0.05, [](int w, int) { sleepMs(w == kSlow ? 15 : 2); });
  job.runOk();
  for (const ServerReport& r : job.reports) {
    EXPECT_EQ(r.version, 12 * job.workers);
    for (int w = 0; w < job.workers; ++w) {
      const WorkerStats& st = r.workers[static_cast<size_t>(w)];
      EXPECT_EQ(st.applied, 12);
      EXPECT_GT(st.sumStaleness, 0) << "worker " << w << " on server " << r.server;
      EXPECT_LE(st.maxStaleness, 12 * job.workers);
    }
  }
  // The fast workers did not wait for the slow one.
  EXPECT_LT(job.workerSeconds[0], job.workerSeconds[kSlow]);
  for (float x : job.allServerValues()) EXPECT_TRUE(std::isfinite(x));
  EXPECT_NE(job.allServerValues(), flat(initialParams(job.plan)));
}

// ---- 3b. the final pull: the evaluating worker gets the model every worker's steps went into ----

class FinalPullTest : public ::testing::TestWithParam<std::string> {};

// Worker 0 ends long before the others (asp) and asks for the final model. Its wait outlasts
// the group's timeout several times over, so only the servers' keepalives keep it going; the
// answer is the servers' model after every push, which its own last pull was not.
TEST_P(FinalPullTest, WaitsForTheOtherWorkersLastPushes) {
  Job job;
  job.ranks.transport = GetParam();
  job.ranks.timeout = Millis(500);
  job.server.consistency.mode = Mode::kAsp;
  constexpr int kSlowSteps = 14;
  std::vector<float> ownPull, finalModel;
  double finalSeconds = 0;
  job.work = [&](Client& c, int w) {
    auto p = initialParams(job.plan);
    const int steps = w == 0 ? 3 : kSlowSteps;
    for (int s = 0; s < steps; ++s) {
      c.pull(spans(p));
      const auto g = gradient(p, w);
      if (w != 0) sleepMs(100);
      c.push(cspans(g), 0.05);
    }
    c.pull(spans(p));
    if (w != 0) return;
    ownPull = flat(p);
    const auto t0 = std::chrono::steady_clock::now();
    c.finalPull(spans(p));
    finalSeconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    finalModel = flat(p);
    EXPECT_THROW(c.finalPull(spans(p)), InvalidArgument);  // said goodbye already
  };
  job.runOk();
  for (const ServerReport& r : job.reports) {
    EXPECT_EQ(r.version, 3 + 2 * kSlowSteps) << "server " << r.server;
    EXPECT_TRUE(r.failedWorkers.empty()) << "server " << r.server;
  }
  EXPECT_EQ(finalModel, job.allServerValues());
  EXPECT_NE(ownPull, finalModel);
  EXPECT_GT(finalSeconds, 2 * 0.5);  // longer than two timeouts: kept alive
}

INSTANTIATE_TEST_SUITE_P(Transports, FinalPullTest, ::testing::Values("loopback", "tcp"));

// A final pull from a worker that is the last one: answered at once, after its own pushes.
TEST(PsServer, FinalPullOfTheLastWorkerIsImmediate) {
  Job job;
  job.workers = 1;
  job.server.consistency.mode = Mode::kBsp;
  std::vector<float> finalModel;
  job.work = [&](Client& c, int) {
    auto p = initialParams(job.plan);
    for (int s = 0; s < 4; ++s) {
      c.pull(spans(p));
      c.push(cspans(gradient(p, 0)), 0.05);
    }
    c.finalPull(spans(p));
    finalModel = flat(p);
  };
  job.runOk();
  EXPECT_EQ(finalModel, job.allServerValues());
  EXPECT_EQ(job.reports[0].version, 4);
}

// ---- 4. bsp with a backup worker drops the straggler's late pushes ----

TEST(PsServer, BackupWorkerDropsLatePushes) {
  Job job;
  job.workers = 4;
  job.server.consistency.backup = 1;
  constexpr int kSlow = 3;
  job.work = trainLoop(job, 6, 0.05, [](int w, int) {
    if (w == kSlow) sleepMs(40);
  });
  job.runOk();
  for (const ServerReport& r : job.reports) {
    EXPECT_GT(r.workers[kSlow].dropped, 0);
    EXPECT_GE(r.version, 6);  // the fast workers' rounds closed without the slow one
    EXPECT_EQ(r.pushes, 6 * job.workers);
  }
  for (int w = 0; w < kSlow; ++w) {
    EXPECT_LT(job.workerSeconds[static_cast<size_t>(w)], 0.5 * job.workerSeconds[kSlow]) << "worker " << w;
  }
}

// ---- 4b. backup workers: every server applies the same pushes ----

// Sends a raw header and `payloadBytes` of payload (whatever the header claims) to `server`;
// returns the answer's op and payload bytes.
std::pair<Op, std::string> rawCall(comm::ProcessGroup& g, int server, const Header& h, const void* payload,
                                   size_t payloadBytes) {
  const auto bytes = encodeHeader(h);
  g.send(server, kHeaderTag, bytes.data(), bytes.size());
  if (payloadBytes > 0) g.send(server, kPayloadTag, payload, payloadBytes);
  std::array<uint8_t, kHeaderBytes> in{};
  g.recv(server, kHeaderTag, in.data(), in.size());
  const Header a = decodeHeader(in);
  std::string msg(a.payloadBytes, '\0');
  if (!msg.empty()) g.recv(server, kPayloadTag, msg.data(), msg.size());
  return {a.op, msg};
}

// Server s's part of a whole-model vector: its slices in order.
std::vector<float> shardOf(const ShardPlan& plan, int s, const std::vector<float>& whole) {
  std::vector<float> out;
  for (int k = plan.firstSlice(s); k < plan.firstSlice(s) + plan.sliceCount(s); ++k) {
    const Slice& sl = plan.slices()[static_cast<size_t>(k)];
    out.insert(out.end(), whole.begin() + sl.key, whole.begin() + sl.key + sl.numel);
  }
  return out;
}

// Three workers, one backup, two servers, one round, with raw messages so that the servers see
// the pushes in different orders: server 0 gets workers 0 and 2 first, server 1 gets 1 and 2.
// Deciding alone, server 1 would apply workers 1 and 2 while server 0 applies 0 and 2: one
// model, two different updates. With the agreement both apply 0 and 2 and drop 1.
TEST(PsServer, BackupWorkersTheServersAgreeOnEachRound) {
  constexpr int kWorkers = 3, kServers = 2;
  const ShardPlan plan = ShardPlan::make(modelSpecs(), kServers);
  ServerOptions so;
  so.consistency.workers = kWorkers;
  so.consistency.backup = 1;
  so.serverRanks = {kWorkers, kWorkers + 1};
  constexpr double kLr = 0.1;
  const std::vector<float> init = flat(initialParams(plan));
  std::vector<ServerReport> reports(kServers);
  std::vector<std::vector<float>> values(kServers);
  std::vector<std::vector<float>> pulled(kWorkers * kServers);
  std::atomic<int> phase{0};
  auto waitPhase = [&](int p) {
    while (phase.load() < p) sleepMs(2);
  };
  auto outcome = testutil::runRanksCollect(kWorkers + kServers, RankOptions{}, [&](comm::ProcessGroup& g) {
    const int r = g.rank();
    if (r >= kWorkers) {
      Server srv(borrow(g), r - kWorkers, {0, 1, 2}, plan, so);
      reports[static_cast<size_t>(r - kWorkers)] = srv.run();
      values[static_cast<size_t>(r - kWorkers)] = srv.values();
      return;
    }
    const std::vector<float> grad = flat(gradient(initialParams(plan), r));
    auto request = [&](int s, Op op) {
      Header h;
      h.op = op;
      h.worker = r;
      h.server = s;
      h.fingerprint = plan.fingerprint();
      h.lr = kLr;
      h.firstSlice = plan.firstSlice(s);
      return h;
    };
    auto push = [&](int s) {
      Header h = request(s, Op::kPush);
      const std::vector<float> part = shardOf(plan, s, grad);
      h.payloadBytes = part.size() * sizeof(float);
      const auto [op, msg] = rawCall(g, kWorkers + s, h, part.data(), h.payloadBytes);
      EXPECT_EQ(op, Op::kAck) << "worker " << r << " server " << s << ": " << msg;
    };
    if (r == 0) {
      for (int s = 0; s < kServers; ++s) {
        Header h = request(s, Op::kInit);
        const std::vector<float> part = shardOf(plan, s, init);
        h.payloadBytes = part.size() * sizeof(float);
        EXPECT_EQ(rawCall(g, kWorkers + s, h, part.data(), h.payloadBytes).first, Op::kAck);
      }
      phase = 1;
      waitPhase(2);
      push(0);
      phase = 3;
      waitPhase(4);
      push(1);  // the member server 1 waits for
    } else if (r == 1) {
      waitPhase(1);
      push(1);
      phase = 2;
      waitPhase(4);
      push(0);  // late on server 0, whose round has closed
    } else {
      waitPhase(3);
      push(0);  // server 0's second push: it closes the round with workers 0 and 2
      push(1);
      phase = 4;
    }
    for (int s = 0; s < kServers; ++s) {
      const auto [op, msg] = rawCall(g, kWorkers + s, request(s, Op::kPull), nullptr, 0);
      EXPECT_EQ(op, Op::kParams);
      pulled[static_cast<size_t>(r * kServers + s)].assign(reinterpret_cast<const float*>(msg.data()),
                                                           reinterpret_cast<const float*>(msg.data()) + msg.size() / 4);
      EXPECT_EQ(rawCall(g, kWorkers + s, request(s, Op::kBye), nullptr, 0).first, Op::kAck);
    }
  });
  for (size_t r = 0; r < outcome.size(); ++r) {
    ASSERT_EQ(outcome[r], nullptr) << "rank " << r << ": " << testutil::messageOf(outcome[r]);
  }
  // sgd without momentum: one step on the average of workers 0 and 2.
  const std::vector<float> g0 = flat(gradient(initialParams(plan), 0)), g2 = flat(gradient(initialParams(plan), 2));
  std::vector<float> want = init;
  for (size_t i = 0; i < want.size(); ++i) {
    want[i] = static_cast<float>(init[i] - kLr * ((static_cast<double>(g0[i]) + g2[i]) / 2));
  }
  for (int s = 0; s < kServers; ++s) {
    const ServerReport& rep = reports[static_cast<size_t>(s)];
    SCOPED_TRACE(str("server ", s));
    EXPECT_EQ(rep.version, 1);
    EXPECT_EQ(rep.decisions, 1);
    EXPECT_EQ(rep.workers[0].applied, 1);
    EXPECT_EQ(rep.workers[1].applied, 0);
    EXPECT_EQ(rep.workers[1].dropped, 1);
    EXPECT_EQ(rep.workers[2].applied, 1);
    expectNear(values[static_cast<size_t>(s)], shardOf(plan, s, want), "shard");
    for (int w = 0; w < kWorkers; ++w) expectNear(pulled[static_cast<size_t>(w * kServers + s)], values[static_cast<size_t>(s)], "pull");
  }
}

// Server 0 a round ahead of a follower when a worker pulls: server 0 has closed round 0 (workers
// 0 and 1) and told server 1, which still waits for worker 1's push. Answered as they stand,
// the worker would hold version 1 from server 0 and version 0 from server 1, and its next push
// would count in round 1 on server 0 and in round 0 on server 1, whose decision drops it. The
// client pulls from server 1 again, asking for version 1; server 1 answers once worker 1's
// push is in and round 0 is applied, and the push counts in round 1 on both.
TEST(PsServer, BackupWorkersPullOneVersionFromEveryServer) {
  constexpr int kWorkers = 3, kServers = 2;
  const ShardPlan plan = ShardPlan::make(modelSpecs(), kServers);
  ServerOptions so;
  so.consistency.workers = kWorkers;
  so.consistency.backup = 1;
  so.serverRanks = {kWorkers, kWorkers + 1};
  constexpr double kLr = 0.1;
  const std::vector<float> init = flat(initialParams(plan));
  std::vector<ServerReport> reports(kServers);
  std::vector<int64_t> versions;
  int64_t realigned = -1;
  std::atomic<int> phase{0};
  auto waitPhase = [&](int p) {
    while (phase.load() < p) sleepMs(2);
  };
  auto outcome = testutil::runRanksCollect(kWorkers + kServers, RankOptions{}, [&](comm::ProcessGroup& g) {
    const int r = g.rank();
    if (r >= kWorkers) {
      Server srv(borrow(g), r - kWorkers, {0, 1, 2}, plan, so);
      reports[static_cast<size_t>(r - kWorkers)] = srv.run();
      return;
    }
    if (r == 2) {  // the client under test
      Client c(borrow(g), r, {kWorkers, kWorkers + 1}, plan);
      auto p = initialParams(plan);
      waitPhase(2);
      c.pull(spans(p));
      versions = c.versions();
      realigned = c.realignedPulls();
      c.push(cspans(gradient(p, r)), kLr);
      phase = 4;
      c.pull(spans(p));
      c.bye();
      return;
    }
    auto request = [&](int s, Op op, int64_t version) {
      Header h;
      h.op = op;
      h.worker = r;
      h.server = s;
      h.fingerprint = plan.fingerprint();
      h.version = version;
      h.lr = kLr;
      h.firstSlice = plan.firstSlice(s);
      return h;
    };
    const std::vector<float> grad = flat(gradient(initialParams(plan), r));
    auto send = [&](int s, Op op, int64_t version, const std::vector<float>& whole) {
      Header h = request(s, op, version);
      const std::vector<float> part = shardOf(plan, s, whole);
      h.payloadBytes = part.size() * sizeof(float);
      const auto [answer, msg] = rawCall(g, kWorkers + s, h, part.data(), h.payloadBytes);
      EXPECT_EQ(answer, Op::kAck) << "worker " << r << " server " << s << ": " << msg;
    };
    if (r == 0) {
      for (int s = 0; s < kServers; ++s) send(s, Op::kInit, 0, init);
      for (int s = 0; s < kServers; ++s) send(s, Op::kPush, 0, grad);
      phase = 1;
      waitPhase(4);  // round 1: with worker 2's push
      for (int s = 0; s < kServers; ++s) {
        EXPECT_EQ(rawCall(g, kWorkers + s, request(s, Op::kPull, 0), nullptr, 0).first, Op::kParams);
      }
      for (int s = 0; s < kServers; ++s) send(s, Op::kPush, 1, grad);
    } else {
      waitPhase(1);
      send(0, Op::kPush, 0, grad);  // closes round 0 on server 0, which tells server 1
      phase = 2;
      sleepMs(200);  // worker 2 pulls meanwhile
      send(1, Op::kPush, 0, grad);
    }
    for (int s = 0; s < kServers; ++s) {
      EXPECT_EQ(rawCall(g, kWorkers + s, request(s, Op::kBye, 0), nullptr, 0).first, Op::kAck);
    }
  });
  for (size_t r = 0; r < outcome.size(); ++r) {
    ASSERT_EQ(outcome[r], nullptr) << "rank " << r << ": " << testutil::messageOf(outcome[r]);
  }
  EXPECT_EQ(versions, (std::vector<int64_t>{1, 1}));
  // One realigning pull, unless worker 1's push reached server 1 before worker 2's first pull
  // (a scheduler stall of 200 ms); then none was needed.
  EXPECT_LE(realigned, 1);
  EXPECT_GE(realigned, 0);
  for (int s = 0; s < kServers; ++s) {
    const ServerReport& rep = reports[static_cast<size_t>(s)];
    SCOPED_TRACE(str("server ", s));
    EXPECT_EQ(rep.version, 2);
    EXPECT_EQ(rep.workers[0].applied, 2);
    EXPECT_EQ(rep.workers[1].applied, 1);
    EXPECT_EQ(rep.workers[2].applied, 1);
    EXPECT_EQ(rep.workers[2].dropped, 0);
  }
}

// Many rounds with a slow worker: whatever the arrival order, every server applies and drops
// the same pushes, worker by worker.
TEST(PsServer, BackupWorkersAgreeOverManyRounds) {
  Job job;
  job.workers = 4;
  job.servers = 3;
  job.plan = ShardPlan::make(modelSpecs(), 3);
  job.server.consistency.backup = 1;
  job.work = trainLoop(job, 12, 0.05, [](int w, int s) {
    if (w == 3 || (w + s) % 3 == 0) sleepMs(3 * (1 + (w + s) % 4));
  });
  job.runOk();
  for (size_t s = 1; s < job.reports.size(); ++s) {
    for (int w = 0; w < job.workers; ++w) {
      EXPECT_EQ(job.reports[s].workers[static_cast<size_t>(w)].applied, job.reports[0].workers[static_cast<size_t>(w)].applied)
          << "server " << s << " worker " << w;
    }
    EXPECT_EQ(job.reports[s].version, job.reports[0].version);
    EXPECT_EQ(job.reports[s].decisions, job.reports[0].decisions);
  }
  EXPECT_EQ(job.reports[0].decisions, job.reports[0].version);
}

// ---- 5. malformed messages ----

// Sends a raw header (and `payloadBytes` of zeros) to `server` and returns the answer's op and
// message.
std::pair<Op, std::string> rawRequest(comm::ProcessGroup& g, int server, const Header& h, size_t payloadBytes) {
  const std::vector<uint8_t> zeros(payloadBytes, 0);
  return rawCall(g, server, h, zeros.data(), payloadBytes);
}

TEST(PsServer, MalformedMessagesAreRefusedAndServingGoesOn) {
  Job job;
  job.workers = 3;
  job.servers = 1;
  job.plan = ShardPlan::make(modelSpecs(), 1);
  job.server.consistency.mode = Mode::kAsp;
  const int server = job.workers;  // its rank
  const uint64_t load = static_cast<uint64_t>(job.plan.load(0));
  std::vector<std::string> messages;
  std::atomic<bool> rawDone{false};
  job.server.consistency.workers = job.workers;
  auto outcome = testutil::runRanksCollect(4, job.ranks, [&](comm::ProcessGroup& g) {
    const int r = g.rank();
    if (r == server) {
      Server srv(borrow(g), 0, {0, 1, 2}, job.plan, job.server);
      job.reports.assign(1, srv.run());
      return;
    }
    if (r == 2) {
      // A payload too large to drain: refused, and the server stops listening to this worker.
      Header h;
      h.op = Op::kPush;
      h.worker = 2;
      h.fingerprint = job.plan.fingerprint();
      h.payloadBytes = kMaxPayloadBytes + 4;
      const auto [op, msg] = rawRequest(g, server, h, 0);
      EXPECT_EQ(op, Op::kError);
      EXPECT_NE(msg.find("payloadBytes"), std::string::npos) << msg;
      return;
    }
    Client c(borrow(g), r, {server}, job.plan);
    auto p = initialParams(job.plan);
    if (r == 0) {
      c.init(cspans(p));
      c.pull(spans(p));
      c.push(cspans(gradient(p, 0)), 0.1);
      c.pull(spans(p));
      c.bye();
      return;
    }
    // Worker 1: a client built from another plan (same sizes, another tensor name).
    {
      Client other(borrow(g), 1, {server}, ShardPlan::make(modelSpecs("w2b"), 1));
      try {
        other.push(cspans(p), 0.1);
        ADD_FAILURE() << "a push with another plan's fingerprint was accepted";
      } catch (const ServerError& e) {
        messages.push_back(e.what());
      }
    }
    Header h;
    h.op = Op::kPush;
    h.worker = 1;
    h.fingerprint = job.plan.fingerprint();
    h.lr = 0.1;
    h.payloadBytes = 4 * load;
    h.firstSlice = 0;
    auto expectError = [&](Header bad, size_t payload, const std::string& field) {
      const auto [op, msg] = rawRequest(g, server, bad, payload);
      EXPECT_EQ(op, Op::kError) << field;
      EXPECT_NE(msg.find(field), std::string::npos) << "the error does not name " << field << ": " << msg;
    };
    Header bad = h;
    bad.payloadBytes = 4 * load + 8;
    expectError(bad, bad.payloadBytes, "payloadBytes");
    bad = h;
    bad.firstSlice = 1;
    expectError(bad, bad.payloadBytes, "firstSlice");
    bad = h;
    bad.fingerprint ^= 1;
    expectError(bad, bad.payloadBytes, "fingerprint");
    bad = h;
    bad.worker = 0;
    expectError(bad, bad.payloadBytes, "field worker");
    bad = h;
    bad.version = 1000;
    expectError(bad, bad.payloadBytes, "field version");
    bad = h;
    bad.op = Op::kParams;
    bad.payloadBytes = 0;
    expectError(bad, 0, "field op");
    bad = h;
    bad.flags = kFlagFinal;  // only a goodbye asks for the final model
    expectError(bad, bad.payloadBytes, "only a goodbye may ask for the final model");
    bad = h;
    bad.flags = kFlagAgree;  // an answer's flag
    expectError(bad, bad.payloadBytes, "kFlagAgree marks a server's answer to a pull");
    bad = h;
    bad.op = Op::kPull;
    bad.payloadBytes = 0;
    bad.version = -1;
    expectError(bad, 0, "a pull asks for a version >= 0");
    // A wrong magic: nothing in the header can be trusted, so no payload is sent.
    auto raw = encodeHeader(h);
    raw[0] ^= 0xff;
    g.send(server, kHeaderTag, raw.data(), raw.size());
    std::array<uint8_t, kHeaderBytes> in{};
    g.recv(server, kHeaderTag, in.data(), in.size());
    const Header a = decodeHeader(in);
    EXPECT_EQ(a.op, Op::kError);
    std::string msg(a.payloadBytes, '\0');
    g.recv(server, kPayloadTag, msg.data(), msg.size());
    EXPECT_NE(msg.find("magic"), std::string::npos) << msg;
    // The server still serves this worker.
    c.pull(spans(p));
    c.push(cspans(gradient(p, 1)), 0.1);
    c.pull(spans(p));
    rawDone = true;
    c.bye();
  });
  for (size_t r = 0; r < outcome.size(); ++r) {
    ASSERT_EQ(outcome[r], nullptr) << "rank " << r << ": " << testutil::messageOf(outcome[r]);
  }
  EXPECT_TRUE(rawDone);
  ASSERT_EQ(messages.size(), 1u);
  EXPECT_NE(messages[0].find("fingerprint"), std::string::npos) << messages[0];
  const ServerReport& r = job.reports[0];
  EXPECT_EQ(r.version, 2);  // the two good pushes
  EXPECT_EQ(r.errorsSent, 13);  // fingerprint push, its destructor's bye, nine raw, the magic, the huge one
  EXPECT_EQ(r.failedWorkers, std::vector<int>{2});
}

// ---- 6. checkpoints ----

std::string tempPath(const std::string& name) {
  return str(::testing::TempDir(), "/ps_server_test_", getpid(), "_", name);
}

TEST(PsServer, ResumeFromCheckpointContinuesTraining) {
  const std::string base = tempPath("ckpt");
  auto pathOf = [&](int s) { return str(base, ".", s); };
  for (int s = 0; s < 2; ++s) std::remove(pathOf(s).c_str());
  OptimizerOptions sgd;
  sgd.momentum = 0.9;

  // Uninterrupted: 6 steps.
  Job full;
  full.workers = 1;
  full.server.optimizer = sgd;
  full.work = trainLoop(full, 6, 0.1);
  full.runOk();

  // 3 steps, checkpoints every 2 updates and at the end.
  Job first;
  first.workers = 1;
  first.server.optimizer = sgd;
  first.server.checkpointEvery = 2;
  std::vector<std::vector<float>> saved(2);
  auto runServers = [&](Job& job, bool resume, std::vector<std::vector<float>>* before) {
    job.reports.assign(2, {});
    job.serverValues.assign(2, {});
    job.workerParams.assign(1, {});
    job.server.consistency.workers = 1;
    return testutil::runRanksCollect(3, job.ranks, [&](comm::ProcessGroup& g) {
      const int r = g.rank();
      if (r >= 1) {
        ServerOptions o = job.server;
        o.checkpointPath = pathOf(r - 1);
        o.resume = resume;
        Server srv(borrow(g), r - 1, {0}, job.plan, o);
        if (before) (*before)[static_cast<size_t>(r - 1)] = srv.values();
        job.reports[static_cast<size_t>(r - 1)] = srv.run();
        job.serverValues[static_cast<size_t>(r - 1)] = srv.values();
        return;
      }
      Client c(borrow(g), 0, {1, 2}, job.plan);
      c.init(cspans(initialParams(job.plan)));
      job.work(c, 0);
      c.bye();
    });
  };
  first.work = trainLoop(first, 3, 0.1);
  for (const auto& e : runServers(first, false, nullptr)) ASSERT_EQ(e, nullptr) << testutil::messageOf(e);
  for (int s = 0; s < 2; ++s) {
    EXPECT_EQ(first.reports[static_cast<size_t>(s)].version, 3);
    EXPECT_EQ(access(pathOf(s).c_str(), F_OK), 0) << "no checkpoint at " << pathOf(s);
    saved[static_cast<size_t>(s)] = first.serverValues[static_cast<size_t>(s)];
  }

  // Resume: the servers start from the saved shard (init is ignored), the worker's first pull
  // returns it, and 3 more steps land where the uninterrupted run did (momentum restored).
  Job second;
  second.workers = 1;
  second.server.optimizer = sgd;
  std::vector<float> firstPull;
  second.work = [&](Client& c, int w) {
    auto p = initialParams(second.plan);
    c.pull(spans(p));
    firstPull = flat(p);
    for (int s = 0; s < 3; ++s) {
      if (s > 0) c.pull(spans(p));
      c.push(cspans(gradient(p, w)), 0.1);
    }
    EXPECT_EQ(c.versions(), (std::vector<int64_t>{5, 5}));
  };
  std::vector<std::vector<float>> loaded(2);
  for (const auto& e : runServers(second, true, &loaded)) ASSERT_EQ(e, nullptr) << testutil::messageOf(e);
  std::vector<float> savedFlat;
  for (int s = 0; s < 2; ++s) {
    EXPECT_EQ(loaded[static_cast<size_t>(s)], saved[static_cast<size_t>(s)]) << "server " << s;
    EXPECT_TRUE(second.reports[static_cast<size_t>(s)].resumedFromCheckpoint);
    EXPECT_EQ(second.reports[static_cast<size_t>(s)].version, 6);
    // The worker's count of pushes goes on from the checkpoint's 3 (a fresh client says 1..3).
    EXPECT_EQ(second.reports[static_cast<size_t>(s)].workers[0].clock, 6);
    savedFlat.insert(savedFlat.end(), saved[static_cast<size_t>(s)].begin(), saved[static_cast<size_t>(s)].end());
  }
  EXPECT_EQ(firstPull, savedFlat);
  expectNear(second.allServerValues(), full.allServerValues(), "resumed vs uninterrupted");

  // A checkpoint of another plan is refused by name.
  testutil::runRanks(2, RankOptions{}, [&](comm::ProcessGroup& g) {
    if (g.rank() != 1) return;
    ServerOptions o;
    o.consistency.workers = 1;
    o.checkpointPath = pathOf(0);
    o.resume = true;
    try {
      Server srv(borrow(g), 0, {0}, ShardPlan::make(modelSpecs("other"), 2), o);
      ADD_FAILURE() << "a checkpoint of another plan was loaded";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("fingerprint"), std::string::npos) << e.what();
    }
  });
  for (int s = 0; s < 2; ++s) std::remove(pathOf(s).c_str());
}

// A shard checkpoint carries a SHA-256 of its body, checked before any field is read: one
// flipped byte and the server refuses the file, naming it and the checksum, instead of loading
// wrong values. A file of the older format (CPSCKPT1, the same body without the digest) still
// loads, unverified.
TEST(PsServer, CheckpointChecksumRefusesAFlippedByte) {
  const std::string path = tempPath("checksum");
  std::remove(path.c_str());
  Job job;
  job.workers = 1;
  job.servers = 1;
  job.plan = ShardPlan::make(modelSpecs(), 1);
  job.server.optimizer.momentum = 0.9;  // optimizer buffers in the file too
  job.server.checkpointPath = path;
  job.work = trainLoop(job, 3, 0.1);
  job.runOk();
  auto readAll = [](const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  };
  auto writeAll = [](const std::string& p, const std::string& bytes) {
    std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
  };
  const std::string good = readAll(path);
  ASSERT_GT(good.size(), 40u);
  ASSERT_EQ(good.substr(0, 8), "CPSCKPT3");

  // Loads the file at `p` into a fresh server; returns its values, or the error's message.
  auto resumeFrom = [&](const std::string& p, std::vector<float>* values) {
    std::string message;
    testutil::runRanks(2, RankOptions{}, [&](comm::ProcessGroup& g) {
      if (g.rank() != 1) return;
      ServerOptions o = job.server;
      o.consistency.workers = 1;
      o.checkpointPath = p;
      o.resume = true;
      try {
        Server srv(borrow(g), 0, {0}, job.plan, o);
        *values = srv.values();
      } catch (const Error& e) {
        message = e.what();
      }
    });
    return message;
  };
  std::vector<float> loaded;
  EXPECT_EQ(resumeFrom(path, &loaded), "");
  EXPECT_EQ(loaded, job.serverValues[0]);

  for (size_t at : {good.size() / 2, size_t{8}, good.size() - 1}) {  // the values, the digest, the last buffer
    std::string bad = good;
    bad[at] = static_cast<char>(bad[at] ^ 0x01);
    writeAll(path, bad);
    std::vector<float> none;
    const std::string m = resumeFrom(path, &none);
    EXPECT_NE(m.find(path), std::string::npos) << "byte " << at << ": " << m;
    EXPECT_NE(m.find("checksum does not match"), std::string::npos) << "byte " << at << ": " << m;
    EXPECT_NE(m.find("delete it"), std::string::npos) << "byte " << at << ": " << m;
    EXPECT_TRUE(none.empty()) << "byte " << at << ": a corrupt checkpoint was loaded";
  }

  // The older formats: CPSCKPT2, the body without the workers' clocks (a u32 count and one i64
  // per worker at its end), and CPSCKPT1, without the digest too.
  const std::string body2 = good.substr(40, good.size() - 40 - (4 + 8));
  const Digest digest = sha256(reinterpret_cast<const uint8_t*>(body2.data()), body2.size());
  writeAll(path, "CPSCKPT2" + std::string(reinterpret_cast<const char*>(digest.data()), digest.size()) + body2);
  std::vector<float> v2;
  EXPECT_EQ(resumeFrom(path, &v2), "");
  EXPECT_EQ(v2, job.serverValues[0]);
  writeAll(path, "CPSCKPT1" + body2);
  std::vector<float> old;
  EXPECT_EQ(resumeFrom(path, &old), "");
  EXPECT_EQ(old, job.serverValues[0]);
  std::remove(path.c_str());
}

// ---- idle limit ----

TEST(PsServer, IdleLimitEndsRunWithTimeoutError) {
  const ShardPlan plan = ShardPlan::make(modelSpecs(), 1);
  testutil::runRanks(2, RankOptions{}, [&](comm::ProcessGroup& g) {
    if (g.rank() == 0) {  // a worker that never speaks
      sleepMs(400);
      return;
    }
    ServerOptions o;
    o.idle = Millis(100);
    Server srv(borrow(g), 0, {0}, plan, o);
    const auto t0 = std::chrono::steady_clock::now();
    try {
      srv.run();
      ADD_FAILURE() << "run() returned although no worker spoke";
    } catch (const TimeoutError& e) {
      EXPECT_NE(std::string(e.what()).find("idle"), std::string::npos) << e.what();
    }
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 0.35);
  });
}

// ---- 7. compressed pushes ----

std::unique_ptr<compress::Codec> codecOf(const std::string& method, double ratio = 0.01) {
  compress::CodecConfig c;
  c.method = method;
  c.ratio = ratio;
  return compress::makeCodec(c);
}

// Top-k of every entry loses nothing, so bsp with codec pushes lands exactly where dense
// pushes do; the servers decoded every push.
TEST(PsServer, LosslessCodecPushesMatchDenseReference) {
  Job job;
  job.server.optimizer.name = "sgd";
  job.server.optimizer.momentum = 0.9;
  job.prepare = [](Client& c, int w) { c.compressPushes(codecOf("topk", 1.0), 7 + static_cast<uint64_t>(w)); };
  job.work = trainLoop(job, 5, 0.1);
  job.runOk();
  const auto want = bspReference(job.plan, job.server.optimizer, job.workers, 5, 0.1);
  expectNear(job.allServerValues(), want, "server values");
  for (const auto& r : job.reports) {
    EXPECT_EQ(r.version, 5);
    EXPECT_EQ(r.pushes, 5 * job.workers);
    EXPECT_EQ(r.codecPushes, 5 * job.workers);
    EXPECT_EQ(r.errorsSent, 0);
  }
}

// Top-k at a quarter, one worker, plain sgd: each server moves by lr times what it decoded, the
// decoded gradient plus the residual the client kept is the gradient pushed (error feedback),
// each slice sends its own share (layer-wise, segments = slices), and fewer bytes go out.
TEST(PsServer, SparsePushesKeepTheirResidualPerServer) {
  Job job;
  job.workers = 1;
  job.server.optimizer.name = "sgd";
  const double lr = 0.5;
  std::vector<std::vector<float>> residuals(2);
  uint64_t pushed = 0;
  job.prepare = [](Client& c, int) { c.compressPushes(codecOf("topk", 0.25), 1); };
  job.work = [&](Client& c, int) {
    auto p = initialParams(job.plan);
    c.push(cspans(gradient(p, 0)), lr);
    for (int s = 0; s < 2; ++s) residuals[static_cast<size_t>(s)] = c.codecState(s).buffers.at("residual");
    pushed = c.bytesPushed();
  };
  job.runOk();
  const auto p0 = flat(initialParams(job.plan));
  const auto g = flat(gradient(initialParams(job.plan), 0));
  size_t at = 0;
  int64_t sent = 0;
  for (int s = 0; s < 2; ++s) {
    const auto& values = job.serverValues[static_cast<size_t>(s)];
    const auto& res = residuals[static_cast<size_t>(s)];
    ASSERT_EQ(values.size(), res.size());
    for (size_t i = 0; i < values.size(); ++i, ++at) {
      const double decoded = (p0[at] - values[i]) / lr;
      if (decoded != 0) ++sent;
      EXPECT_NEAR(decoded + res[i], g[at], 1e-5) << "server " << s << " element " << i;
      EXPECT_TRUE(decoded == 0 || res[i] == 0) << "an entry both sent and kept, element " << at;
    }
    EXPECT_EQ(job.reports[static_cast<size_t>(s)].codecPushes, 1);
  }
  // Slices of 7, 2, 1 | 10 entries: ceil(0.25 n) each at least 1 -> 2 + 1 + 1 + 3.
  EXPECT_EQ(sent, 7);
  EXPECT_LT(pushed, 4u * 20);
}

// Codec pushes that are wrong are refused by name, and the server goes on serving.
TEST(PsServer, MalformedCodecPushesAreRefused) {
  Job job;
  job.workers = 1;
  job.servers = 1;
  job.plan = ShardPlan::make(modelSpecs(), 1);
  job.server.consistency.mode = Mode::kAsp;
  job.server.consistency.workers = 1;
  const int server = 1;
  const uint64_t topk = 1 + static_cast<uint64_t>(std::find(compress::codecNames().begin(),
                                                            compress::codecNames().end(), "topk") -
                                                  compress::codecNames().begin());
  auto outcome = testutil::runRanksCollect(2, job.ranks, [&](comm::ProcessGroup& g) {
    if (g.rank() == server) {
      Server srv(borrow(g), 0, {0}, job.plan, job.server);
      job.reports.assign(1, srv.run());
      return;
    }
    Client c(borrow(g), 0, {server}, job.plan);
    auto p = initialParams(job.plan);
    c.init(cspans(p));
    c.pull(spans(p));
    Header h;
    h.op = Op::kPush;
    h.flags = kFlagCodec;
    h.codec = static_cast<uint16_t>(topk);
    h.fingerprint = job.plan.fingerprint();
    h.lr = 0.1;
    h.payloadBytes = 24;
    auto expectError = [&](Header bad, const std::string& words) {
      const auto [op, msg] = rawRequest(g, server, bad, bad.payloadBytes);
      EXPECT_EQ(op, Op::kError) << words;
      EXPECT_NE(msg.find(words), std::string::npos) << msg;
    };
    expectError(h, "does not decode into this server's 20 floats");  // 24 zero bytes: no topk message
    Header bad = h;
    bad.codec = 999;
    expectError(bad, "field codec = 999");
    bad = h;
    bad.payloadBytes = maxCodecPayload(20) + 1;
    expectError(bad, "field payloadBytes");
    bad = h;
    bad.op = Op::kInit;
    expectError(bad, "only a push may carry a codec message");
    // A codec the server would not know is refused by the client.
    struct Foreign : compress::Codec {
      std::string name() const override { return "mine"; }
      compress::Message encode(std::span<const float>, compress::CodecState&) override { return {}; }
      void decodeAdd(const compress::Message&, std::span<float>) const override {}
    };
    try {
      c.compressPushes(std::make_unique<Foreign>(), 1);
      ADD_FAILURE() << "a foreign codec was accepted";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("'mine' is not one the servers can decode"), std::string::npos) << e.what();
    }
    // Still served: a good codec push is applied.
    c.compressPushes(codecOf("topk", 0.5), 3);
    c.push(cspans(gradient(p, 0)), 0.1);
    c.pull(spans(p));
    c.bye();
  });
  for (size_t r = 0; r < outcome.size(); ++r) {
    ASSERT_EQ(outcome[r], nullptr) << "rank " << r << ": " << testutil::messageOf(outcome[r]);
  }
  EXPECT_EQ(job.reports[0].errorsSent, 4);
  EXPECT_EQ(job.reports[0].codecPushes, 1);
  EXPECT_EQ(job.reports[0].version, 1);
}

// ---- 8. a worker that dies ----

class DeathTest : public ::testing::TestWithParam<std::string> {};

TEST_P(DeathTest, AspGoesOnWithoutADeadWorker) {
  Job job;
  job.ranks.transport = GetParam();
  job.server.consistency.mode = Mode::kAsp;
  constexpr int kVictim = 1;
  job.work = [&](Client& c, int w) {
    auto p = initialParams(job.plan);
    for (int s = 0; s < 8; ++s) {
      c.pull(spans(p));
      if (w == kVictim && s == 3) throw std::runtime_error("worker 1 dies");
      c.push(cspans(gradient(p, w)), 0.05);
    }
    c.pull(spans(p));
  };
  const auto outcome = job.run();
  for (size_t r = 0; r < outcome.size(); ++r) {
    if (r == kVictim) {
      EXPECT_EQ(testutil::messageOf(outcome[r]), "worker 1 dies");
    } else {
      EXPECT_EQ(outcome[r], nullptr) << "rank " << r << ": " << testutil::messageOf(outcome[r]);
    }
  }
  for (const ServerReport& r : job.reports) {
    EXPECT_EQ(r.failedWorkers, std::vector<int>{kVictim});
    EXPECT_TRUE(r.workers[kVictim].failed);
    EXPECT_EQ(r.workers[kVictim].pushes, 3);
    EXPECT_EQ(r.workers[0].pushes, 8);
    EXPECT_EQ(r.version, 8 + 3 + 8);
  }
}

INSTANTIATE_TEST_SUITE_P(Transports, DeathTest, ::testing::Values("loopback", "tcp"));

// In bsp the round the dead worker never pushed to closes with the others' pushes.
TEST(PsServer, BspGoesOnWithoutADeadWorker) {
  Job job;
  constexpr int kVictim = 1;
  job.work = [&](Client& c, int w) {
    auto p = initialParams(job.plan);
    for (int s = 0; s < 6; ++s) {
      c.pull(spans(p));
      if (w == kVictim && s == 3) throw std::runtime_error("worker 1 dies");
      c.push(cspans(gradient(p, w)), 0.05);
    }
    c.pull(spans(p));
  };
  const auto outcome = job.run();
  EXPECT_EQ(testutil::messageOf(outcome[kVictim]), "worker 1 dies");
  for (size_t r = 0; r < outcome.size(); ++r) {
    if (r != kVictim) {
      EXPECT_EQ(outcome[r], nullptr) << "rank " << r << ": " << testutil::messageOf(outcome[r]);
    }
  }
  for (const ServerReport& r : job.reports) {
    EXPECT_EQ(r.failedWorkers, std::vector<int>{kVictim});
    EXPECT_EQ(r.version, 6);
    EXPECT_LE(r.bspPartialRounds, 1);
    EXPECT_EQ(r.workers[0].applied, 6);
  }
}

}  // namespace
}  // namespace chorus::ps
