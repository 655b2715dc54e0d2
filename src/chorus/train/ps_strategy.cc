// A parameter-server worker (see ps_strategy.h).
#include "chorus/train/ps_strategy.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <span>
#include <sstream>

#include "chorus/amp/autocast.h"
#include "chorus/common/env.h"
#include "chorus/common/error.h"
#include "chorus/compress/dgc.h"
#include "chorus/compress/factory.h"
#include "chorus/ps/client.h"
#include "chorus/train/loop.h"
#include "chorus/train/models.h"
#include "chorus/train/trainer.h"

namespace chorus::train {
namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

std::vector<std::span<float>> spansOf(std::vector<torch::Tensor>& ts) {
  std::vector<std::span<float>> out;
  for (auto& t : ts) out.emplace_back(t.data_ptr<float>(), static_cast<size_t>(t.numel()));
  return out;
}
std::vector<std::span<const float>> constSpansOf(std::vector<torch::Tensor>& ts) {
  std::vector<std::span<const float>> out;
  for (auto& t : ts) out.emplace_back(t.data_ptr<float>(), static_cast<size_t>(t.numel()));
  return out;
}

// The error a worker stops with when its loss or gradient is not finite (docs/train.md,
// "Divergence"): the step, the worker, the servers' shard checkpoints and what to change.
DivergenceError workerDivergence(const Config& cfg, int worker, int64_t step, int64_t epoch, int64_t stepInEpoch,
                                 int64_t stepsPerEpoch, double loss, bool gradFinite, double lr) {
  std::ostringstream m;
  m << "training diverged at step " << step << " (epoch " << epoch + 1 << ", step " << stepInEpoch + 1 << " of "
    << stepsPerEpoch << ") on worker " << worker << ": ";
  if (!std::isfinite(loss)) {
    m << "its loss is " << (std::isnan(loss) ? std::string("nan") : str(loss))
      << (gradFinite ? "" : " and its gradient is not finite");
  } else {
    m << "its gradient is not finite (the loss is " << loss << ")";
  }
  m << "; it was not pushed.\n";
  const fs::path shard = fs::path(cfg.output.dir) / "ps" / "server0.ckpt";
  if (fs::exists(shard)) {
    m << "  last checkpoint: the servers' shards, " << (fs::path(cfg.output.dir) / "ps").string()
      << "/server*.ckpt (written every ps.checkpoint_every = " << cfg.ps.checkpointEvery
      << " updates); after the change below, --resume continues from them\n";
  } else {
    m << "  no server checkpoint was written, so the run has to start over (ps.checkpoint_every = N checkpoints "
         "the shards every N updates)\n";
  }
  m << "  what to change: a lower optim.lr (" << lr << " at this step";
  if (cfg.schedule.warmupSteps > 0) m << "; or a longer schedule.warmup_steps, now " << cfg.schedule.warmupSteps;
  m << ")";
  if (cfg.ps.mode == "asp")
    m << "; ps.mode = \"ssp\" with a small ps.staleness, or \"bsp\" (stale gradients amplify it)";
  if (cfg.ps.mode == "ssp") m << "; a lower ps.staleness (now " << cfg.ps.staleness << ") or ps.mode = \"bsp\"";
  return DivergenceError(m.str(), step, worker);
}

}  // namespace

ps::ShardPlan shardPlanFor(torch::nn::Module& model, int servers) {
  std::vector<ps::TensorSpec> specs;
  for (auto& item : model.named_parameters()) specs.push_back(ps::TensorSpec{item.key(), item.value().numel()});
  return ps::ShardPlan::make(std::move(specs), servers);
}

struct PsWorkerStrategy::Impl {
  Impl(const Config& c, std::shared_ptr<comm::ProcessGroup> g, int w)
      : cfg(c), group(std::move(g)), worker(group->rank()), workers(w), servers(static_cast<int>(c.ps.servers)),
        prec(amp::parsePrecision(c.precision)) {}

  const Config& cfg;
  std::shared_ptr<comm::ProcessGroup> group;
  const int worker, workers, servers;
  const amp::Precision prec;
  Task* task = nullptr;
  torch::nn::Sequential model{nullptr};
  std::vector<torch::Tensor> params;  // the model's, in the plan's order
  std::unique_ptr<ps::Client> client;
  // compression.method, a codec: pushes become its messages from step compression.dense_steps on.
  std::unique_ptr<compress::Codec> pendingCodec;
  compress::DgcCodec* dgc = nullptr;  // the client's codec when it is DGC (its epoch)
  int64_t joinedAt = -1;  // a restarted worker: the step the servers' counts say it resumes at
  // Worker 0 at the end: it evaluates the servers' final model, waited for this long.
  bool finalModel = false;
  double finalWaitSeconds = 0;
  int64_t localBatch() const { return cfg.train.batchSize / workers; }
};

PsWorkerStrategy::PsWorkerStrategy(const Config& cfg, std::shared_ptr<comm::ProcessGroup> group, int workers)
    : impl_(std::make_unique<Impl>(cfg, std::move(group), workers)) {}

PsWorkerStrategy::~PsWorkerStrategy() = default;

Roles PsWorkerStrategy::roles() const {
  Roles r;
  r.group = nullptr;
  r.lead = impl_->worker == 0;
  r.dataRank = impl_->worker;
  r.dataRanks = impl_->workers;
  r.evaluates = r.lead;
  r.checkpoints = false;
  r.rankLog = str("ps/worker", impl_->worker, ".jsonl");
  return r;
}

void PsWorkerStrategy::setup(Task& task) {
  Impl& m = *impl_;
  m.task = &task;
  m.model = seededModel(m.cfg.train.seed, [&] { return task.makeModel(); });
  for (auto& p : m.model->parameters()) m.params.push_back(p);
  std::vector<int> serverRanks(static_cast<size_t>(m.servers));
  for (int s = 0; s < m.servers; ++s) serverRanks[static_cast<size_t>(s)] = m.workers + s;
  // With restartable servers (CHORUS_REJOIN), a dead server is waited for, up to the group's
  // timeout, and the client resynchronizes with its restarted process.
  const Millis reconnect = envString("CHORUS_REJOIN").empty() ? Millis(0) : m.group->timeout();
  m.client = std::make_unique<ps::Client>(m.group, m.worker, serverRanks, shardPlanFor(*m.model, m.servers), Millis(0),
                                          reconnect);
  if (compress::isCodecMethod(m.cfg.compression.method)) {
    m.pendingCodec = compress::makeCodec(codecConfig(m.cfg.compression, m.workers));
  }
  torch::NoGradGuard ng;
  if (envString("CHORUS_REJOIN") == "join") {
    // This process takes the place of a worker that failed (ps.restarts): the servers hold the
    // model, and their count of its pushes says where it resumes.
    m.joinedAt = m.client->rejoin(spansOf(m.params));
    std::cerr << str("chorus train: worker ", m.worker, " (restart ", envInt("CHORUS_RESTART_COUNT"),
                     ") rejoined the job at step ", m.joinedAt, ", where the servers' count of its pushes stands\n");
    return;
  }
  if (m.worker == 0) m.client->init(constSpansOf(m.params));
  m.client->pull(spansOf(m.params));  // every worker starts from the servers' model
}

int64_t PsWorkerStrategy::joinedAtStep() { return impl_->joinedAt; }

TrainState PsWorkerStrategy::loadCheckpoint(const std::string& path) {
  throw InvalidArgument(str("a parameter-server worker keeps no checkpoint (", path,
                            "); the servers reload their shards with --resume"));
}

void PsWorkerStrategy::saveCheckpoint(const std::string& path, const TrainState&) {
  throw InvalidArgument(str("a parameter-server worker keeps no checkpoint (", path,
                            "); the servers checkpoint their shards every ps.checkpoint_every updates"));
}

StepOutcome PsWorkerStrategy::step(const Batch& batch, const StepInfo& info) {
  Impl& m = *impl_;
  for (auto& p : m.params) p.mutable_grad() = torch::Tensor();
  torch::Tensor loss;
  {
    amp::Autocast ac(m.prec, torch::kCPU);
    loss = m.task->loss(m.model->forward(batch.input), batch.target);
  }
  loss.backward();
  StepOutcome out;
  out.stats.loss = loss.item<double>();
  out.stats.computeSeconds = since(info.start);
  out.stats.sleptSeconds = stragglerSleep(m.cfg.train, m.worker, out.stats.computeSeconds);
  std::vector<torch::Tensor> grads;
  for (auto& p : m.params) grads.push_back(p.grad().defined() ? p.grad().contiguous() : torch::zeros_like(p));
  // Divergence: a non-finite gradient pushed would poison every worker's model, so the worker
  // stops before the push. Workers share no collective to agree on it; each checks its own,
  // and its exit stops the job (chorus train exits with a status the launcher never tolerates).
  out.diverged.loss = !std::isfinite(out.stats.loss);
  out.diverged.gradient = !allFinite(grads);
  if (out.diverged.any()) return out;
  if (m.pendingCodec && info.globalStep >= m.cfg.compression.denseSteps) {
    m.dgc = dynamic_cast<compress::DgcCodec*>(m.pendingCodec.get());
    // Each worker's randomness of its own (random-k, stochastic rounding).
    const uint64_t seed = codecSeed(m.cfg.compression) + 0x632BE59BD9B4E019ull * static_cast<uint64_t>(m.worker + 1);
    m.client->compressPushes(std::move(m.pendingCodec), seed);
  }
  if (m.dgc) m.dgc->setEpoch(info.epoch);
  const Clock::time_point t1 = Clock::now();
  m.client->push(constSpansOf(grads), info.lr);
  const Clock::time_point t2 = Clock::now();
  {
    torch::NoGradGuard ng;
    m.client->pull(spansOf(m.params));
  }
  const Clock::time_point t3 = Clock::now();
  out.stats.steps = 1;
  out.stats.pushSeconds = seconds(t1, t2);
  out.stats.pullSeconds = seconds(t2, t3);
  out.stats.commSeconds = out.stats.pushSeconds + out.stats.pullSeconds;
  return out;
}

JsonObject PsWorkerStrategy::divergedRecord(const Divergence& d, const LoopStatus& s) {
  JsonObject o;
  o.add("event", "diverged").add("worker", impl_->worker).add("step", s.globalStep + 1).add("epoch", s.epoch);
  o.add("loss_finite", !d.loss).add("grad_finite", !d.gradient);
  return o;
}

void PsWorkerStrategy::raiseDivergence(const Divergence& d, const LoopStatus& s) {
  throw workerDivergence(impl_->cfg, impl_->worker, s.globalStep + 1, s.epoch, s.stepInEpoch, s.stepsPerEpoch, s.loss,
                         !d.gradient, s.lr);
}

void PsWorkerStrategy::prepareFinalEvaluation() {
  Impl& m = *impl_;
  if (m.worker != 0) return;
  const Clock::time_point t0 = Clock::now();
  torch::NoGradGuard ng;
  m.client->finalPull(spansOf(m.params));
  m.finalModel = true;
  m.finalWaitSeconds = since(t0);
}

EvalMetrics PsWorkerStrategy::evaluate(Task& task) {
  Impl& m = *impl_;
  if (m.worker != 0) return {};
  m.model->eval();
  EvalRunner run;
  run.group = nullptr;
  run.forward = [&](const torch::Tensor& x) {
    amp::Autocast ac(m.prec, torch::kCPU);
    return m.model->forward(x);
  };
  EvalMetrics r = task.evaluate(run);
  m.model->train();
  return r;
}

void PsWorkerStrategy::finish() { impl_->client->bye(); }

JsonObject PsWorkerStrategy::startRecord(const LoopStatus& s) {
  const Config& cfg = impl_->cfg;
  return JsonObject()
      .add("event", "start")
      .add("world", impl_->workers)
      .add("servers", impl_->servers)
      .add("ps_mode", cfg.ps.mode)
      .add("model", cfg.model.name)
      .add("params", parameterCount(*impl_->model))
      .add("precision", cfg.precision)
      .add("transport", std::string(impl_->group->transportName()))
      .add("steps_per_epoch", s.stepsPerEpoch)
      .add("total_steps", s.totalSteps);
}

JsonObject PsWorkerStrategy::stepRecord(const LoopStatus& s) {
  const StepStats& w = s.window;
  const double n = static_cast<double>(w.steps);
  JsonObject o;
  o.add("event", "step").add("worker", impl_->worker).add("step", s.globalStep).add("epoch", s.epoch);
  o.add("elapsed_s", s.elapsedSeconds);
  o.add("loss", w.meanLoss()).add("lr", s.lr);
  o.add("step_s", w.stepSeconds / n).add("compute_s", w.computeSeconds / n);
  o.add("push_s", w.pushSeconds / n).add("pull_s", w.pullSeconds / n);
  o.add("samples_per_s", static_cast<double>(w.steps * impl_->localBatch()) / std::max(1e-9, w.stepSeconds));
  o.add("bytes_sent", s.windowBytes);
  const auto& v = impl_->client->versions();
  o.add("version", v.empty() ? int64_t{0} : *std::min_element(v.begin(), v.end()));
  // How far this worker's parameters lag the step count: steps done minus the version it
  // read, per worker push (asp/ssp versions count every worker's pushes).
  o.add("clock", impl_->client->clock()).add("reconnects", impl_->client->reconnects());
  return o;
}

void PsWorkerStrategy::evalFields(JsonObject& record, const LoopStatus& s) {
  record.add("elapsed_s", s.elapsedSeconds);
  // The last evaluation is of the servers' final model; final_wait_s is how long worker 0
  // waited for the other workers' last pushes.
  if (impl_->finalModel) record.add("final_model", true).add("final_wait_s", impl_->finalWaitSeconds);
}

JsonObject PsWorkerStrategy::summaryRecord(const LoopStatus& s, TrainResult& result) {
  const Impl& m = *impl_;
  const StepStats& t = s.total;
  result.samplesPerSec =
      t.stepSeconds > 0 ? static_cast<double>(s.stepsThisRun * m.localBatch()) / t.stepSeconds : 0;
  JsonObject o;
  o.add("event", "summary").add("worker", m.worker).add("workers", m.workers).add("servers", m.servers);
  o.add("ps_mode", m.cfg.ps.mode).add("steps", s.stepsThisRun).add("train_s", t.stepSeconds).add("elapsed_s", s.elapsedSeconds);
  o.add("start_unix_s", s.startUnixSeconds);
  o.add("samples_per_s", result.samplesPerSec).add("compute_s", t.computeSeconds).add("straggler_sleep_s", t.sleptSeconds);
  o.add("push_s", t.pushSeconds).add("pull_s", t.pullSeconds).add("bytes_sent", s.bytesSinceStart);
  o.add("test_acc", result.testAccuracy).add("test_loss", result.testLoss).add("peak_rss_mb", s.peakRssMaxMb);
  o.add("reconnects", m.client->reconnects()).add("bytes_pushed", m.client->bytesPushed());
  o.add("compression", m.cfg.compression.method);
  if (m.finalModel) o.add("final_wait_s", m.finalWaitSeconds);
  return o;
}

}  // namespace chorus::train
