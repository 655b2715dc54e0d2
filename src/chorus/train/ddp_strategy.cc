// Data parallelism by all-reduce (see ddp_strategy.h).
#include "chorus/train/ddp_strategy.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "chorus/amp/autocast.h"
#include "chorus/amp/grad_scaler.h"
#include "chorus/common/error.h"
#include "chorus/compress/dgc.h"
#include "chorus/compress/factory.h"
#include "chorus/parallel/compress_adapter.h"
#include "chorus/parallel/data/compression_hooks.h"
#include "chorus/parallel/data/ddp.h"
#include "chorus/train/loop.h"
#include "chorus/train/models.h"
#include "chorus/train/optim.h"
#include "chorus/train/strategy_util.h"
#include "chorus/train/trainer.h"

namespace chorus::train {
namespace {

using Clock = std::chrono::steady_clock;

// The compression hook a config asks for (none: no hook), and DGC's codec for its epoch.
struct CompressionSetup {
  std::shared_ptr<parallel::StatefulHook> hook;
  std::shared_ptr<compress::DgcCodec> dgc;
};

CompressionSetup makeCompression(const CompressionConfig& c, int world) {
  CompressionSetup s;
  const uint64_t seed = codecSeed(c);
  if (c.method == "none" || c.method == "fp16" || c.method == "bf16") return s;  // 16-bit: castHook, below
  if (c.method == "powersgd") {
    s.hook = parallel::powerSgdHook(c.rank, seed, c.denseSteps, parallel::parseCompressionScope(c.scope));
    return s;
  }
  std::shared_ptr<compress::Codec> codec = compress::makeCodec(codecConfig(c, world));
  s.dgc = std::dynamic_pointer_cast<compress::DgcCodec>(codec);
  s.hook = parallel::codecHook(codec, seed, c.denseSteps, parallel::parseCompressionScope(c.scope));
  return s;
}

// Codec state (residuals, momentum, Q, RNG) differs per rank: each rank encodes its own as a
// tensor table (data only, like the checkpoint around it), and rank 0's checkpoint keeps them
// all as "codec.rank<r>" byte tensors. Entries: b<bucket>_t_<name> (CodecState::buffers, flat
// float32), b<bucket>_s_<name> (a float64 [1]), b<bucket>_rng (an int64 [1]).
std::string serializeCodecState(parallel::StatefulHook& hook) {
  std::vector<std::pair<std::string, torch::Tensor>> entries;
  for (auto& [bucket, cs] : hook.states()) {
    for (auto& [name, b] : cs.buffers) entries.emplace_back(str("b", bucket, "_t_", name), parallel::bufferTensor(cs, name));
    for (auto& [name, v] : cs.scalars) entries.emplace_back(str("b", bucket, "_s_", name), torch::tensor({v}, torch::kDouble));
    entries.emplace_back(str("b", bucket, "_rng"), torch::tensor({static_cast<int64_t>(cs.rngState)}, torch::kLong));
  }
  return encodeTensors(entries);
}

// `source` names the checkpoint and entry for errors; nothing is changed unless all of it reads.
void restoreCodecState(parallel::StatefulHook& hook, const std::string& blob, const std::string& source) {
  struct Item {
    size_t bucket;
    std::string rest;
    torch::Tensor value;
  };
  std::vector<Item> items;
  for (auto& [key, t] : decodeTensors(blob.data(), blob.size(), source)) {
    const size_t u = key.find('_');
    const std::string digits = key.substr(1, u == std::string::npos ? std::string::npos : u - 1);
    const std::string rest = u == std::string::npos ? std::string() : key.substr(u + 1);
    const bool scalar = rest == "rng" || rest.starts_with("s_");
    if (key[0] != 'b' || digits.empty() || digits.size() > 9 ||
        !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
        !(scalar || rest.starts_with("t_")) ||
        (scalar && (t.numel() != 1 || t.scalar_type() != (rest == "rng" ? torch::kLong : torch::kDouble))))
      throw Error(str(source, ": compression state entry '", key, "' is not one chorus writes; the file is corrupt"));
    items.push_back({std::stoul(digits), rest, t});
  }
  for (auto& [bucket, rest, t] : items) {
    auto& cs = hook.states()[bucket];
    if (rest == "rng") {
      cs.rngState = static_cast<uint64_t>(t.item<int64_t>());
    } else if (rest.starts_with("t_")) {
      parallel::setBuffer(cs, rest.substr(2), t);  // older checkpoints hold PowerSGD's as matrices
    } else {
      cs.scalars[rest.substr(2)] = t.item<double>();
    }
  }
}

torch::Tensor bytesTensor(const std::string& s) {
  return torch::from_blob(const_cast<char*>(s.data()), {static_cast<int64_t>(s.size())}, torch::kUInt8).clone();
}

}  // namespace

struct DdpStrategy::Impl {
  Impl(const Config& c, std::shared_ptr<comm::ProcessGroup> g)
      : cfg(c), group(std::move(g)), rank(group->rank()), world(group->size()), prec(amp::parsePrecision(c.precision)) {}

  const Config& cfg;
  std::shared_ptr<comm::ProcessGroup> group;
  const int rank, world;
  const amp::Precision prec;
  Task* task = nullptr;
  torch::nn::Sequential model{nullptr};
  std::unique_ptr<parallel::DistributedDataParallel<torch::nn::Sequential>> ddp;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  std::unique_ptr<amp::GradScaler> scaler;
  CompressionSetup compression;
  double lastCompute = 0;  // the last step's compute time, for the straggler's delay
};

DdpStrategy::DdpStrategy(const Config& cfg, std::shared_ptr<comm::ProcessGroup> group)
    : impl_(std::make_unique<Impl>(cfg, std::move(group))) {}

DdpStrategy::~DdpStrategy() = default;

Roles DdpStrategy::roles() const {
  Roles r;
  r.group = impl_->group.get();
  r.lead = impl_->rank == 0;
  r.dataRank = impl_->rank;
  r.dataRanks = impl_->world;
  return r;
}

void DdpStrategy::setup(Task& task) {
  Impl& m = *impl_;
  const Config& cfg = m.cfg;
  m.task = &task;
  m.model = seededModel(cfg.train.seed, [&] { return task.makeModel(); });
  parallel::DDPOptions dopts = ddpOptions(cfg);  // the wire dtype's all-reduce ...
  m.compression = makeCompression(cfg.compression, m.world);
  if (m.compression.hook) {                       // ... unless a codec compresses
    dopts.hook = m.compression.hook;
    dopts.rebuildBuckets = false;  // codec state is kept per bucket: keep the layout fixed
  }
  m.ddp = std::make_unique<parallel::DistributedDataParallel<torch::nn::Sequential>>(m.model, m.group, dopts);
  m.optimizer = makeOptimizer(cfg.optim, m.model->parameters());
  m.scaler = std::make_unique<amp::GradScaler>(gradScalerOptions(cfg), m.group);
}

TrainState DdpStrategy::loadCheckpoint(const std::string& path) {
  Impl& m = *impl_;
  TrainState state = train::loadCheckpoint(path, *m.model, *m.optimizer);
  restoreScalerState(*m.scaler, state, m.cfg);
  if (m.compression.hook) {
    auto it = state.tensors.find(str("codec.rank", m.rank));
    if (it == state.tensors.end()) {
      throw InvalidArgument(str(path, " holds no compression state for rank ", m.rank,
                                "; resume with the same compression.method and worker count it was written with"));
    }
    torch::Tensor blob = it->second.contiguous();
    if (blob.scalar_type() != torch::kUInt8 || blob.dim() != 1)
      throw Error(str("checkpoint ", path, ": entry 'tensors/", it->first, "' is not a byte string; the file is corrupt"));
    restoreCodecState(*m.compression.hook, std::string(static_cast<const char*>(blob.data_ptr()), blob.numel()),
                      str("checkpoint ", path, ", entry 'tensors/", it->first, "'"));
  }
  return state;
}

void DdpStrategy::saveCheckpoint(const std::string& path, const TrainState& state) {
  Impl& m = *impl_;
  std::vector<std::string> codecBlobs;
  if (m.compression.hook) codecBlobs = allgatherBytes(*m.group, serializeCodecState(*m.compression.hook));
  if (m.rank != 0) return;
  TrainState st = state;
  saveScalerState(*m.scaler, st);
  for (size_t r = 0; r < codecBlobs.size(); ++r) st.tensors[str("codec.rank", r)] = bytesTensor(codecBlobs[r]);
  train::saveCheckpoint(path, *m.model, *m.optimizer, st);
}

void DdpStrategy::beginEpoch(int64_t epoch) {
  if (impl_->compression.dgc) impl_->compression.dgc->setEpoch(epoch);
}

StepOutcome DdpStrategy::step(const Batch& batch, const StepInfo& info) {
  Impl& m = *impl_;
  comm::ProcessGroup& g = *m.group;
  // A straggler is slower by its last step's compute time times (factor - 1), plus a delay.
  const double slept = stragglerSleep(m.cfg.train, m.rank, m.lastCompute);
  setLearningRate(*m.optimizer, info.lr);
  m.optimizer->zero_grad();
  torch::Tensor loss;
  {
    amp::Autocast ac(m.prec, torch::kCPU);
    loss = m.task->loss(m.ddp->forward(batch.input), batch.target);
  }
  const Clock::time_point t1 = Clock::now();
  const uint64_t sentBeforeBackward = g.bytesSent();
  m.scaler->scale(loss).backward();
  const uint64_t gradBytes = g.bytesSent() - sentBeforeBackward;
  const Clock::time_point t2 = Clock::now();
  StepOutcome out;
  out.stats.loss = loss.item<double>();
  // Divergence: the loss is this rank's; the gradient is what the optimizer would apply (after
  // DDP's all-reduce, or the codec's decoding: the same on every rank). One 2-entry all-reduce
  // gives every rank the same decision at the same step. Under fp16 a non-finite gradient is
  // the GradScaler's to handle (it skips the step and backs off), until the scale falls below
  // kMinLossScale.
  out.diverged = agreeOnDivergence(g, std::isfinite(out.stats.loss),
                                   m.prec == amp::Precision::kFp16 || gradientsFinite(*m.optimizer));
  if (out.diverged.any()) return out;
  // optim.clip_norm: the gradient is the same on every rank after the all-reduce, so its norm
  // is local (unscaled first under fp16).
  if (m.cfg.optim.clipNorm > 0) {
    m.scaler->unscale(*m.optimizer);
    clipGradientNorm(*m.model, m.cfg.optim.clipNorm, nullptr, nullptr);
  }
  if (!scaledOptimizerStep(*m.scaler, *m.optimizer, out)) return out;
  const Clock::time_point t3 = Clock::now();

  const parallel::DDPStats& st = m.ddp->stats();
  // What a dense ring all-reduce of the same buckets would send: 2 (W-1)/W of their bytes.
  const double denseShare = m.world > 1 ? 2.0 * (m.world - 1) / m.world : 0.0;
  out.stats.steps = 1;
  out.stats.computeSeconds = std::chrono::duration<double>(t3 - info.start).count() - st.waitSeconds;
  out.stats.commSeconds = st.commSeconds;
  out.stats.overlapSeconds = st.overlapSeconds;
  out.stats.sleptSeconds = slept;
  // Gradient traffic alone: what this rank sends during backward (the buckets' reductions), not
  // the buffer broadcast of forward or the evaluation.
  out.stats.gradBytes = gradBytes;
  out.stats.denseBytes = denseShare * static_cast<double>(st.bytesReduced);
  m.lastCompute = out.stats.computeSeconds - slept;
  traceDdpStep(info, t1, t2, t3, st);
  return out;
}

JsonObject DdpStrategy::divergedRecord(const Divergence& d, const LoopStatus& s) {
  return train::divergedRecord(d, s, impl_->scaler.get());
}

void DdpStrategy::raiseDivergence(const Divergence& d, const LoopStatus& s) {
  DivergenceReport r;
  r.what = d;
  r.loss = s.loss;
  r.lossScale = impl_->scaler->scaleValue();
  r.gradientChecked = str("after the all-reduce", impl_->cfg.compression.method == "none" ? "" : " and decompression",
                          ", the same on every rank");
  throwDivergence(*impl_->group, impl_->cfg, s, r);
}

EvalMetrics DdpStrategy::evaluate(Task& task) {
  Impl& m = *impl_;
  m.model->eval();
  EvalRunner run;
  run.group = m.group.get();
  run.forward = [&](const torch::Tensor& x) {
    amp::Autocast ac(m.prec, torch::kCPU);
    return m.model->forward(x);
  };
  EvalMetrics r = task.evaluate(run);
  m.model->train();
  return r;
}

JsonObject DdpStrategy::startRecord(const LoopStatus& s) {
  const Config& cfg = impl_->cfg;
  return JsonObject()
      .add("event", "start")
      .add("world", impl_->world)
      .add("model", cfg.model.name)
      .add("params", parameterCount(*impl_->model))
      .add("precision", cfg.precision)
      .add("comm_dtype", wireDtype(cfg))
      .add("transport", std::string(impl_->group->transportName()))
      .add("steps_per_epoch", s.stepsPerEpoch)
      .add("total_steps", s.totalSteps)
      .add("resumed_from", s.resumedFrom)
      .add("resumed_step", s.resumedStep);
}

JsonObject DdpStrategy::stepRecord(const LoopStatus& s) {
  const StepStats& w = s.window;
  return stepRecordHead(s, impl_->cfg.train.batchSize)
      .add("bytes_sent", s.windowBytes)
      .add("grad_bytes", w.gradBytes)
      .add("compression_ratio", w.gradBytes > 0 ? w.denseBytes / static_cast<double>(w.gradBytes) : 0.0)
      .add("comm_s", w.commSeconds)
      .add("compute_s", w.computeSeconds)
      .add("loss_scale", impl_->scaler->scaleValue());
}

void DdpStrategy::evalFields(JsonObject& record, const LoopStatus& s) { record.add("bytes_sent", s.bytesSinceStart); }

JsonObject DdpStrategy::summaryRecord(const LoopStatus& s, TrainResult& result) {
  const Config& cfg = impl_->cfg;
  const StepStats& t = s.total;
  const double steps = static_cast<double>(s.stepsThisRun);
  fillSummaryResult(s, cfg.train.batchSize, result);
  return JsonObject()
      .add("event", "summary")
      .add("world", impl_->world)
      .add("model", cfg.model.name)
      .add("precision", cfg.precision)
      .add("steps", s.stepsThisRun)
      .add("global_step", s.globalStep)
      .add("train_s", result.trainSeconds)
      .add("samples_per_s", result.samplesPerSec)
      .add("test_acc", result.testAccuracy)
      .add("test_loss", result.testLoss)
      .add("comm_s", t.commSeconds)
      .add("compute_s", t.computeSeconds)
      .add("overlap_frac", result.overlapFraction)
      .add("bytes_sent", s.bytesSent)
      .add("bytes_per_step", steps > 0 ? static_cast<double>(s.bytesSinceStart) / steps : 0.0)
      .add("compression", cfg.compression.method)
      .add("grad_bytes_per_step", steps > 0 ? static_cast<double>(t.gradBytes) / steps : 0.0)
      .add("compression_ratio", t.gradBytes > 0 ? t.denseBytes / static_cast<double>(t.gradBytes) : 0.0)
      .add("skipped_steps", result.skippedSteps)
      .add("peak_rss_mb_max", s.peakRssMaxMb)
      .add("peak_rss_mb_mean", s.peakRssMeanMb)
      .add("last_checkpoint", result.lastCheckpoint);
}

}  // namespace chorus::train
