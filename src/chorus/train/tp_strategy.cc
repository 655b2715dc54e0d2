// Tensor parallelism over a mesh (see tp_strategy.h).
#include "chorus/train/tp_strategy.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "chorus/amp/autocast.h"
#include "chorus/amp/grad_scaler.h"
#include "chorus/common/error.h"
#include "chorus/parallel/data/ddp.h"
#include "chorus/parallel/mesh.h"
#include "chorus/parallel/tensor/sharding.h"
#include "chorus/train/loop.h"
#include "chorus/train/models.h"
#include "chorus/train/optim.h"
#include "chorus/train/sharded_checkpoint.h"
#include "chorus/train/strategy_util.h"
#include "chorus/train/text_task.h"
#include "chorus/train/trainer.h"

namespace chorus::train {
namespace {

using Clock = std::chrono::steady_clock;

double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// The checks the config's validation does not make because they concern this strategy alone.
const Config& checked(const Config& cfg) {
  if (cfg.model.name != "gpt")
    throw ConfigError(str("the tensor-parallel strategy trains model.name = \"gpt\" (now \"", cfg.model.name, "\")"));
  if (cfg.parallel.pp != 1)
    throw ConfigError(str("the tensor-parallel strategy runs parallel.pp = 1 (now ", cfg.parallel.pp,
                          "); the layer-wise strategy runs pp > 1"));
  if (cfg.ps.servers > 0)
    throw ConfigError("a GPT trains with all-reduce data parallelism, not the parameter server; set ps.servers = 0");
  const std::string& m = cfg.compression.method;
  if (m != "none" && m != "fp16" && m != "bf16")
    throw ConfigError(str("compression.method = \"", m, "\" is not supported for model.name = \"gpt\" (its codecs ",
                          "keep per-bucket state that GPT checkpoints do not hold yet); use none, fp16 or bf16"));
  return cfg;
}

}  // namespace

ParamBytes gptParameterBytes(const GptOptions& o, int64_t tp) {
  const int64_t E = o.embed, L = o.layers, k = std::max<int64_t>(1, tp);
  const int64_t paddedVocab = (o.vocab + k - 1) / k * k;
  const int64_t f = 4;  // float32
  ParamBytes b;
  // Split: wte (and lm_head) rows, qkv [3E, E] + bias [3E], proj [E, E], fc1 [4E, E] + bias [4E],
  // fc2 [E, 4E]. Replicated: wpe, the LayerNorms, the row-parallel biases (proj, fc2).
  const int64_t perLayerSplit = 3 * E * E + 3 * E + E * E + 4 * E * E + 4 * E + 4 * E * E;
  b.sharded = f * ((paddedVocab * E * (o.tieEmbeddings ? 1 : 2)) / k + L * perLayerSplit / k);
  b.replicated = f * (o.context * E + L * (4 * E + 2 * E) + 2 * E);
  return b;
}

struct TensorParallelStrategy::Impl {
  Impl(const Config& c, std::shared_ptr<comm::ProcessGroup> w)
      : cfg(checked(c)),
        world(std::move(w)),
        mesh(parallel::ProcessMesh::make(world, static_cast<int>(c.parallel.tp))),
        tp(mesh.group("tp")),
        dp(mesh.group("dp")),
        prec(amp::parsePrecision(c.precision)) {}

  const Config& cfg;
  std::shared_ptr<comm::ProcessGroup> world;
  parallel::ProcessMesh mesh;
  TpGroup tp;
  std::shared_ptr<comm::ProcessGroup> dp;
  const amp::Precision prec;
  Gpt model{nullptr};
  std::unique_ptr<parallel::DistributedDataParallel<Gpt>> ddp;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  std::unique_ptr<amp::GradScaler> scaler;
  double localLoss = 0;  // this rank's loss of the last step (the divergence report's)
  double lastCompute = 0;

  MeshSizes meshSizes() const { return {mesh.size("tp"), mesh.size("dp"), mesh.size("pp")}; }
};

TensorParallelStrategy::TensorParallelStrategy(const Config& cfg, std::shared_ptr<comm::ProcessGroup> world)
    : impl_(std::make_unique<Impl>(cfg, std::move(world))) {}

TensorParallelStrategy::~TensorParallelStrategy() = default;

Gpt& TensorParallelStrategy::model() {
  if (!impl_->model) throw InvalidArgument("TensorParallelStrategy::model() before setup()");
  return impl_->model;
}

Roles TensorParallelStrategy::roles() const {
  Roles r;
  r.group = impl_->world.get();
  r.lead = impl_->world->rank() == 0;
  r.dataRank = impl_->mesh.coord("dp");
  r.dataRanks = impl_->mesh.size("dp");
  return r;
}

void TensorParallelStrategy::setup(Task& /*task*/) {
  Impl& m = *impl_;
  const Config& cfg = m.cfg;
  m.model = Gpt(gptOptions(cfg), m.tp);
  // Dropout masks differ between dp replicas (each sees other windows), agree within a tp group.
  m.model->rng() = parallel::TensorParallelRng(cfg.train.seed, m.mesh.coord("tp"), m.mesh.coord("dp"));
  // At dp = 1 there is nothing to average: no buckets, no gradient views, no hooks.
  if (m.mesh.size("dp") > 1) m.ddp = std::make_unique<parallel::DistributedDataParallel<Gpt>>(m.model, m.dp, ddpOptions(cfg));
  m.optimizer = makeOptimizer(cfg.optim, m.model->parameters());
  // Over the world: an overflow in one tp rank's shard skips the step on every rank.
  m.scaler = std::make_unique<amp::GradScaler>(gradScalerOptions(cfg), m.world);
}

TrainState TensorParallelStrategy::loadCheckpoint(const std::string& path) {
  Impl& m = *impl_;
  TrainState state = loadShardedCheckpoint(path, *m.model, *m.optimizer, m.mesh);
  restoreScalerState(*m.scaler, state, m.cfg);
  return state;
}

void TensorParallelStrategy::saveCheckpoint(const std::string& path, const TrainState& state) {
  Impl& m = *impl_;
  TrainState st = state;
  saveScalerState(*m.scaler, st);
  saveShardedCheckpoint(path, *m.model, *m.optimizer, st, m.mesh);
}

// This rank's shards, their optimizer state and the loss scale (the same on every rank), as a
// checkpoint holds them. Dropout generators are not kept, as checkpoints do not keep them.
std::string TensorParallelStrategy::snapshot(const TrainState& state) {
  Impl& m = *impl_;
  TrainState st = state;
  saveScalerState(*m.scaler, st);
  return moduleSnapshot(*m.model, *m.optimizer, st, m.world->size());
}

TrainState TensorParallelStrategy::restoreSnapshot(const std::string& payload) {
  Impl& m = *impl_;
  TrainState state = restoreModuleSnapshot(payload, *m.model, *m.optimizer);
  restoreScalerState(*m.scaler, state, m.cfg);
  return state;
}

StepOutcome TensorParallelStrategy::step(const Batch& batch, const StepInfo& info) {
  Impl& m = *impl_;
  comm::ProcessGroup& w = *m.world;
  const double slept = stragglerSleep(m.cfg.train, w.rank(), m.lastCompute);
  setLearningRate(*m.optimizer, info.lr);
  m.optimizer->zero_grad();
  const uint64_t sent0 = w.bytesSent();
  torch::Tensor loss;
  {
    amp::Autocast ac(m.prec, torch::kCPU);
    loss = m.model->lossFromLogits(m.ddp ? m.ddp->forward(batch.input) : m.model->forward(batch.input), batch.target);
  }
  const Clock::time_point t1 = Clock::now();
  const uint64_t sent1 = w.bytesSent();
  m.scaler->scale(loss).backward();
  if (m.cfg.parallel.sequenceParallel) parallel::allReduceSequenceParallelGradients(*m.model, m.tp);
  const uint64_t sent2 = w.bytesSent();
  const Clock::time_point t2 = Clock::now();
  parallel::DDPStats noDdp;
  noDdp.backwardStart = t1;
  noDdp.backwardEnd = t2;
  const parallel::DDPStats& st = m.ddp ? m.ddp->stats() : noDdp;

  StepOutcome out;
  m.localLoss = loss.item<double>();
  // One all-reduce over the world: the sum of the losses (each dp replica's counted tp times:
  // the mean over the world is the global batch's loss) and the divergence flags (the loss on
  // any rank; the gradient the optimizer would apply, after DDP's all-reduce, on any rank's
  // shards). Under fp16 a non-finite gradient is the GradScaler's to handle.
  double lossSum = m.localLoss;
  out.diverged = agreeOnDivergence(w, std::isfinite(m.localLoss),
                                   m.prec == amp::Precision::kFp16 || gradientsFinite(*m.optimizer), lossSum);
  out.stats.loss = lossSum / w.size();
  if (out.diverged.any()) return out;
  // optim.clip_norm: the norm of the whole model, its shards' squares summed over tp (each
  // replica's gradient is the same after DDP's all-reduce; unscaled first under fp16).
  if (m.cfg.optim.clipNorm > 0) {
    m.scaler->unscale(*m.optimizer);
    clipGradientNorm(*m.model, m.cfg.optim.clipNorm, m.tp.get(), nullptr);
  }
  if (!scaledOptimizerStep(*m.scaler, *m.optimizer, out)) return out;
  const Clock::time_point t3 = Clock::now();

  // DDP's share of the bytes sent in backward: all of them without tensor parallelism; with it,
  // a ring all-reduce's share of the buckets (the two share one counter; tp_strategy.h).
  const int dpSize = m.mesh.size("dp"), tpSize = m.mesh.size("tp");
  const double denseBytes = ringAllreduceBytes(m.cfg, dpSize, st.bytesReduced);
  uint64_t gradBytes = 0;
  if (dpSize > 1) gradBytes = tpSize == 1 ? sent2 - sent1 : std::min<uint64_t>(sent2 - sent1, std::llround(denseBytes));
  out.stats.steps = 1;
  out.stats.computeSeconds = seconds(info.start, t3) - st.waitSeconds;
  out.stats.commSeconds = st.commSeconds;
  out.stats.overlapSeconds = st.overlapSeconds;
  out.stats.sleptSeconds = slept;
  out.stats.gradBytes = gradBytes;
  out.stats.denseBytes = denseBytes;
  out.stats.modelParallelBytes = (sent2 - sent0) - gradBytes;
  m.lastCompute = out.stats.computeSeconds - slept;
  traceDdpStep(info, t1, t2, t3, st);
  return out;
}

JsonObject TensorParallelStrategy::divergedRecord(const Divergence& d, const LoopStatus& s) {
  return train::divergedRecord(d, s, impl_->scaler.get());
}

// Every rank calls this at the same step (the decision was agreed over the world). Each rank's
// own loss is reported (s.loss is the world's mean); the gradient checked is each rank's shards
// after DDP's all-reduce over dp.
void TensorParallelStrategy::raiseDivergence(const Divergence& d, const LoopStatus& s) {
  Impl& m = *impl_;
  DivergenceReport r;
  r.what = d;
  r.loss = m.localLoss;
  r.lossScale = m.scaler->scaleValue();
  r.layout = str(" (tp ", m.mesh.size("tp"), " x dp ", m.mesh.size("dp"), ")");
  r.gradientChecked = m.mesh.size("tp") > 1 ? "after the all-reduce over dp, on some tp rank's shards"
                                             : "after the all-reduce over dp, the same on every rank";
  throwDivergence(*m.world, m.cfg, s, r);
}

EvalMetrics TensorParallelStrategy::evaluate(Task& task) {
  Impl& m = *impl_;
  m.model->eval();
  EvalRunner run;
  run.group = m.dp.get();
  run.forward = [&](const torch::Tensor& ids) {
    torch::NoGradGuard noGrad;
    amp::Autocast ac(m.prec, torch::kCPU);
    return m.model->fullLogits(ids);
  };
  run.loss = [&](const Batch& b) {
    torch::NoGradGuard noGrad;
    amp::Autocast ac(m.prec, torch::kCPU);
    return m.model->loss(b.input, b.target).to(torch::kFloat);
  };
  EvalMetrics r;
  try {
    r = task.evaluate(run);
  } catch (...) {
    m.model->train();
    throw;
  }
  m.model->train();
  return r;
}

JsonObject TensorParallelStrategy::startRecord(const LoopStatus& s) {
  Impl& m = *impl_;
  return gptStartRecord(m.cfg, s, *m.world, m.meshSizes(), parameterCount(*m.model), parameterBytes(*m.model));
}

JsonObject TensorParallelStrategy::stepRecord(const LoopStatus& s) {
  const Config& cfg = impl_->cfg;
  const StepStats& w = s.window;
  return stepRecordHead(s, cfg.train.batchSize)
      .add("tokens_per_s", samplesPerSecond(w, cfg.train.batchSize) * static_cast<double>(cfg.model.context))
      .add("bytes_sent", s.windowBytes)
      .add("grad_bytes", w.gradBytes)
      .add("tp_bytes", w.modelParallelBytes)
      .add("comm_s", w.commSeconds)
      .add("compute_s", w.computeSeconds)
      .add("loss_scale", impl_->scaler->scaleValue());
}

void TensorParallelStrategy::evalFields(JsonObject& record, const LoopStatus& s) { record.add("bytes_sent", s.bytesSinceStart); }

JsonObject TensorParallelStrategy::summaryRecord(const LoopStatus& s, TrainResult& result) {
  Impl& m = *impl_;
  fillSummaryResult(s, m.cfg.train.batchSize, result);
  return gptSummaryRecord(m.cfg, s, result, *m.world, m.meshSizes(), "tp_bytes_per_step",
                          optimizerStateBytes(*m.optimizer));
}

}  // namespace chorus::train
