// Data parallelism by all-reduce (see ddp_strategy.h).
#include "chorus/train/ddp_strategy.h"

#include <chrono>
#include <cmath>

#include "chorus/amp/autocast.h"
#include "chorus/amp/grad_scaler.h"
#include "chorus/common/error.h"
#include "chorus/common/logging.h"
#include "chorus/compress/dgc.h"
#include "chorus/compress/factory.h"
#include "chorus/parallel/data/compression_hooks.h"
#include "chorus/parallel/data/ddp.h"
#include "chorus/train/codec_state.h"
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

// The number of workers that wrote a checkpoint: its "world" scalar. Checkpoints older than that
// scalar tell it by their per-rank codec states ("codec.rank<r>" for r < W), and without those
// it does not matter (nothing else in a DDP checkpoint depends on the world): this run's own.
int savedWorld(const TrainState& state, const std::string& path, int current) {
  int64_t codecRanks = 0;
  while (state.tensors.count(str("codec.rank", codecRanks))) ++codecRanks;
  auto it = state.scalars.find("world");
  if (it == state.scalars.end()) return codecRanks > 0 ? static_cast<int>(codecRanks) : current;
  const double w = it->second;
  if (!(w >= 1 && w <= (1 << 20) && w == std::floor(w)))
    throw Error(str("checkpoint ", path, ": scalar 'world' is ", w, ", not a worker count; the file is corrupt"));
  if (codecRanks > 0 && codecRanks != static_cast<int64_t>(w))
    throw Error(str("checkpoint ", path, " was written by ", static_cast<int64_t>(w), " workers but holds the compression state of ",
                    codecRanks, "; the file is corrupt"));
  return static_cast<int>(w);
}

// Every rank's codec states that a checkpoint of `world` workers holds (codec_state.h).
std::vector<CodecStates> savedCodecStates(const TrainState& state, const std::string& path, int world,
                                          const std::string& method) {
  std::vector<CodecStates> saved;
  for (int r = 0; r < world; ++r) {
    const std::string key = str("codec.rank", r);
    auto it = state.tensors.find(key);
    if (it == state.tensors.end()) {
      throw InvalidArgument(str(path, " holds no compression state, and this run has compression.method = \"", method,
                                "\"; resume with the compression.method the checkpoint was written with (its run's "
                                "config.toml names it), or start fresh"));
    }
    torch::Tensor blob = it->second.contiguous();
    if (blob.scalar_type() != torch::kUInt8 || blob.dim() != 1)
      throw Error(str("checkpoint ", path, ": entry 'tensors/", key, "' is not a byte string; the file is corrupt"));
    saved.push_back(decodeCodecStates(std::string(static_cast<const char*>(blob.data_ptr()), blob.numel()),
                                      str("checkpoint ", path, ", entry 'tensors/", key, "'")));
  }
  return saved;
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
  int resumedWorld = 0;    // the workers that wrote the checkpoint resumed from (0: a fresh start)
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
  // Model, optimizer and loss scale are the same on every rank, and the data position is a
  // global step, so only the codec state depends on the world that wrote the checkpoint
  // (docs/train.md, "Resuming at another world size").
  m.resumedWorld = savedWorld(state, path, m.world);
  if (m.compression.hook) {
    const std::vector<CodecStates> saved = savedCodecStates(state, path, m.resumedWorld, m.cfg.compression.method);
    m.compression.hook->states() = carryCodecStates(saved, m.rank, m.world, codecSeed(m.cfg.compression),
                                                    str("checkpoint ", path));
  }
  return state;
}

void DdpStrategy::saveCheckpoint(const std::string& path, const TrainState& state) {
  Impl& m = *impl_;
  std::vector<std::string> codecBlobs;
  if (m.compression.hook) codecBlobs = allgatherBytes(*m.group, encodeCodecStates(m.compression.hook->states()));
  if (m.rank != 0) return;
  TrainState st = state;
  saveScalerState(*m.scaler, st);
  st.scalars["world"] = m.world;
  for (size_t r = 0; r < codecBlobs.size(); ++r) st.tensors[str("codec.rank", r)] = bytesTensor(codecBlobs[r]);
  train::saveCheckpoint(path, *m.model, *m.optimizer, st);
}

// The checkpoint's entries, encoded in memory, as the snapshot's shared part; this rank's codec
// state (residuals, DGC's momentum and velocity, PowerSGD's residuals and Q, the warm-up count,
// the RNG) as its own part, under its rank in this world. No collective: each rank keeps its own.
std::string DdpStrategy::snapshot(const TrainState& state) {
  Impl& m = *impl_;
  TrainState st = state;
  saveScalerState(*m.scaler, st);
  SnapshotParts parts;
  parts.shared = encodeTensors(checkpointEntries(*m.model, *m.optimizer, st, "in-memory snapshot"));
  parts.world = m.world;
  if (m.compression.hook) parts.own[m.rank] = encodeCodecStates(m.compression.hook->states());
  return packSnapshot(parts);
}

// After a re-forming the payload holds the codec states of the members that held the agreed
// step, by their ranks in the world that took it (elastic.cc); the failed ranks' are missing.
// They are carried to this rank as a checkpoint of that world would be (codec_state.h): the
// missing ranks count as zeros, so the gradient they held back is lost and the rest is kept,
// (W'/W) * the sum of the present old ranks r with r mod W' == this rank.
TrainState DdpStrategy::restoreSnapshot(const std::string& payload) {
  Impl& m = *impl_;
  const SnapshotParts parts = unpackSnapshot(payload);
  TrainState state = loadCheckpointEntries("in-memory snapshot", parts.shared, *m.model, *m.optimizer);
  restoreScalerState(*m.scaler, state, m.cfg);
  if (m.compression.hook) {
    if (parts.world < 1 || parts.own.empty())
      throw Error(str("rank ", m.rank, ": the in-memory snapshot of step ", state.globalStep, " holds no compression ",
                      "state, and this run has compression.method = \"", m.cfg.compression.method,
                      "\"; the job's members disagree on the config"));
    std::vector<CodecStates> saved(static_cast<size_t>(parts.world));  // empty: a rank whose state is lost
    for (const auto& [r, blob] : parts.own)
      saved[static_cast<size_t>(r)] = decodeCodecStates(blob, str("in-memory snapshot, rank ", r, " of ", parts.world));
    m.compression.hook->states() = carryCodecStates(saved, m.rank, m.world, codecSeed(m.cfg.compression),
                                                    str("in-memory snapshot of step ", state.globalStep));
    if (m.rank == 0)
      CHORUS_INFO("compression state of step ", state.globalStep, " carried from ", parts.own.size(), " of ",
                  parts.world, " ranks to ", m.world, parts.own.size() < static_cast<size_t>(parts.world)
                                                      ? " (the missing ranks' residuals are lost)" : "");
  }
  return state;
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
      .add("resumed_step", s.resumedStep)
      .add("resumed_world", impl_->resumedWorld);
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
