// The parts the all-reduce strategies share (see strategy_util.h).
#include "chorus/train/strategy_util.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <thread>
#include <vector>

#include "chorus/amp/autocast.h"
#include "chorus/comm/collectives/collectives.h"
#include "chorus/compress/factory.h"
#include "chorus/common/error.h"
#include "chorus/parallel/data/comm_hook.h"
#include "chorus/parallel/tensor/sharding.h"
#include "chorus/train/loop.h"
#include "chorus/train/trainer.h"

namespace chorus::train {
namespace {

// A point-to-point tag nothing sends on: non-zero ranks wait on it for rank 0 to leave.
constexpr uint32_t kDivergenceTag = 0x44495645;  // "DIVE"

// "rank 1: nan, rank 3: inf": the ranks whose loss is (not) finite, the first 8 of them.
std::string lossList(const std::vector<double>& losses, bool finite) {
  std::string s;
  int listed = 0, more = 0;
  for (size_t r = 0; r < losses.size(); ++r) {
    const double v = losses[r];
    if (std::isfinite(v) != finite) continue;
    if (listed++ < 8) {
      s += str(s.empty() ? "" : ", ", "rank ", r, ": ", std::isnan(v) ? std::string("nan") : str(v));
    } else {
      ++more;
    }
  }
  return more > 0 ? str(s, " and ", more, " more") : s;
}

// "  what to change: ...": the hints that apply to this config.
void whatToChange(std::ostream& m, const Config& cfg, double lr) {
  m << "  what to change: a lower optim.lr (" << lr << " at this step";
  if (cfg.schedule.warmupSteps > 0) m << "; or a longer schedule.warmup_steps, now " << cfg.schedule.warmupSteps;
  m << ")";
  const auto& c = cfg.compression;
  if (compress::usesRatio(c.method)) {
    m << "; a larger compression.ratio (now " << c.ratio << ")";
    if (c.method == "randomk" && c.errorFeedback && c.residualDecay > 0)
      m << "; a lower compression.residual_decay (now " << c.residualDecay << ")";
    if (c.method == "randomk" && !c.errorFeedback)
      m << "; compression.error_feedback = true (without it random-k sends n/k times the entries it draws)";
  } else if (c.method == "dgc") {
    m << "; a lower compression.sparsity (now " << c.sparsity << ") or compression.clip_norm";
  }
  if (c.method != "none")
    m << "; compression.method = \"none\" shows whether compression (\"" << c.method << "\") causes it";
  if (cfg.precision == "fp16") m << "; precision = \"bf16\", which has float32's range";
}

}  // namespace

std::string wireDtype(const Config& cfg) {
  const std::string& m = cfg.compression.method;
  return m == "fp16" || m == "bf16" ? m : cfg.ddp.commDtype;
}

parallel::DDPOptions ddpOptions(const Config& cfg) {
  parallel::DDPOptions o;
  o.bucketCapBytes = static_cast<size_t>(cfg.ddp.bucketMb * 1024 * 1024);
  o.findUnusedParameters = cfg.ddp.findUnused;
  o.broadcastBuffers = cfg.ddp.broadcastBuffers;
  const comm::AllreduceAlgo algo = comm::parseAlgo(cfg.ddp.algo);
  if (const std::string wire = wireDtype(cfg); wire == "fp16") {
    o.hook = parallel::castHook(at::kHalf, algo);
  } else if (wire == "bf16") {
    o.hook = parallel::castHook(at::kBFloat16, algo);
  } else {
    o.hook = parallel::allreduceHook(algo);
  }
  return o;
}

double ringAllreduceBytes(const Config& cfg, int dp, uint64_t bytesReduced) {
  const double wireFactor = wireDtype(cfg) == "fp32" ? 1.0 : 0.5;
  const double ringShare = dp > 1 ? 2.0 * (dp - 1) / dp : 0.0;
  return ringShare * wireFactor * static_cast<double>(bytesReduced);
}

amp::GradScalerOptions gradScalerOptions(const Config& cfg) {
  amp::GradScalerOptions o;
  o.enabled = amp::parsePrecision(cfg.precision) == amp::Precision::kFp16;
  o.initScale = cfg.amp.initScale;
  o.growthFactor = cfg.amp.growthFactor;
  o.backoffFactor = cfg.amp.backoffFactor;
  o.growthInterval = cfg.amp.growthInterval;
  return o;
}

void saveScalerState(const amp::GradScaler& scaler, TrainState& state) {
  state.scalars["amp.scale"] = scaler.scaleValue();
  state.scalars["amp.good_steps"] = static_cast<double>(scaler.goodSteps());
  state.scalars["amp.skipped_steps"] = static_cast<double>(scaler.skippedSteps());
}

void restoreScalerState(amp::GradScaler& scaler, const TrainState& state, const Config& cfg) {
  auto sc = [&](const char* k, double d) { return state.scalars.count(k) ? state.scalars.at(k) : d; };
  scaler.restore(sc("amp.scale", cfg.amp.initScale), static_cast<int64_t>(sc("amp.good_steps", 0)),
                 static_cast<int64_t>(sc("amp.skipped_steps", 0)));
}

std::string moduleSnapshot(torch::nn::Module& model, const torch::optim::Optimizer& opt, const TrainState& state,
                           int world) {
  SnapshotParts parts;
  parts.shared = encodeTensors(checkpointEntries(model, opt, state, "in-memory snapshot"));
  parts.world = world;
  return packSnapshot(parts);
}

TrainState restoreModuleSnapshot(const std::string& payload, torch::nn::Module& model, torch::optim::Optimizer& opt) {
  return loadCheckpointEntries("in-memory snapshot", unpackSnapshot(payload).shared, model, opt);
}

bool scaledOptimizerStep(amp::GradScaler& scaler, torch::optim::Optimizer& optimizer, StepOutcome& out) {
  const bool stepped = scaler.step(optimizer);
  scaler.update();
  if (!stepped) {
    out.stats.skippedSteps = 1;
    if (scaler.scaleValue() < kMinLossScale) {
      out.diverged.scale = true;
      return false;
    }
  }
  return true;
}

double clipGradientNorm(torch::nn::Module& model, double maxNorm, comm::ProcessGroup* tp, comm::ProcessGroup* pp,
                        const std::vector<std::string>& skip) {
  if (!(maxNorm > 0)) throw InvalidArgument(str("clipGradientNorm: the largest norm ", maxNorm, " must be above 0"));
  const auto specs = parallel::shardSpecs(model);
  const bool tpLead = !tp || tp->rank() == 0;
  double squares = 0;
  for (const auto& p : model.named_parameters()) {
    const torch::Tensor& g = p.value().grad();
    if (!g.defined()) continue;
    if (std::find(skip.begin(), skip.end(), p.key()) != skip.end()) continue;
    auto it = specs.find(p.key());
    const bool sharded = it != specs.end() && it->second.dim >= 0;
    if (sharded || tpLead) squares += g.to(torch::kDouble).pow(2).sum().item<double>();
  }
  if (tp && tp->size() > 1) allreduceInPlace(*tp, &squares, 1, DType::kFloat64, ReduceOp::kSum);
  if (pp && pp->size() > 1) allreduceInPlace(*pp, &squares, 1, DType::kFloat64, ReduceOp::kSum);
  const double norm = std::sqrt(squares);
  if (std::isfinite(norm) && norm > maxNorm) {
    const double scale = maxNorm / (norm + 1e-6);
    for (auto& p : model.parameters())
      if (p.grad().defined()) p.mutable_grad().mul_(scale);
  }
  return norm;
}

bool gradientsFinite(torch::optim::Optimizer& optimizer) {
  std::vector<torch::Tensor> grads;
  for (auto& group : optimizer.param_groups()) {
    for (auto& p : group.params()) grads.push_back(p.grad());
  }
  return allFinite(grads);
}

Divergence agreeOnDivergence(comm::ProcessGroup& g, bool lossFinite, bool gradientFinite) {
  int32_t bad[2] = {lossFinite ? 0 : 1, gradientFinite ? 0 : 1};
  if (g.size() > 1) allreduceInPlace(g, bad, 2, DType::kInt32, ReduceOp::kMax);
  return {bad[0] != 0, bad[1] != 0, false};
}

Divergence agreeOnDivergence(comm::ProcessGroup& g, bool lossFinite, bool gradientFinite, double& value) {
  double agreed[3] = {value, lossFinite ? 0.0 : 1.0, gradientFinite ? 0.0 : 1.0};
  if (g.size() > 1) allreduceInPlace(g, agreed, 3, DType::kFloat64, ReduceOp::kSum);
  value = agreed[0];
  return {agreed[1] != 0, agreed[2] != 0, false};
}

JsonObject divergedRecord(const Divergence& d, const LoopStatus& s, const amp::GradScaler* scaler) {
  JsonObject r;
  r.add("event", "diverged")
      .add("step", s.globalStep + 1)
      .add("epoch", s.epoch)
      .add("loss_finite", !d.loss)
      .add("grad_finite", !d.gradient);
  if (scaler) r.add("loss_scale", scaler->scaleValue());
  return r.add("last_checkpoint", s.lastCheckpoint);
}

void throwDivergence(comm::ProcessGroup& g, const Config& cfg, const LoopStatus& s, const DivergenceReport& r) {
  std::vector<double> losses(static_cast<size_t>(g.size()));
  double mine = r.loss;
  comm::AllgatherOptions o;
  o.input = &mine;
  o.output = losses.data();
  o.count = 1;
  o.dtype = DType::kFloat64;
  g.allgather(o);
  std::vector<int> badRanks;
  for (int rank = 0; rank < g.size(); ++rank) {
    if (!std::isfinite(losses[static_cast<size_t>(rank)])) badRanks.push_back(rank);
  }
  const int firstBad = badRanks.empty() ? -1 : badRanks.front();
  const int64_t step = s.globalStep + 1;
  const std::string head = str("training diverged at step ", step, " (epoch ", s.epoch + 1, ", step ", s.stepInEpoch + 1,
                               " of ", s.stepsPerEpoch, ")");
  if (g.rank() != 0) {
    // Rank 0 reports, and the others leave after it: a launcher stops the whole job when the
    // first rank exits, and rank 0 must have printed by then. Rank 0 never sends on this tag, so
    // the receive ends when its connection closes (or after 10 s); it prints just after that,
    // so the others give it a moment more.
    try {
      uint8_t none = 0;
      g.recv(0, kDivergenceTag, &none, 1, Millis(10000));
    } catch (const TimeoutError&) {
    } catch (const Error&) {
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
    throw DivergenceError(head + "; rank 0 reports the details", step, firstBad);
  }

  std::ostringstream m;
  m << head << r.layout << ": ";
  if (r.what.loss) {
    if (badRanks.size() == static_cast<size_t>(g.size())) {
      m << "the loss is not finite on every rank (" << lossList(losses, false) << ")";
    } else {
      m << "the loss is not finite on " << lossList(losses, false) << " (finite on " << lossList(losses, true) << ")";
    }
    if (r.what.gradient) m << "; nor is the gradient";
  } else if (r.what.gradient) {
    m << "the gradient the optimizer would apply (" << r.gradientChecked
      << ") is not finite, while the loss is finite on every rank (" << lossList(losses, true) << ")";
  } else if (r.what.scale) {
    m << "the fp16 gradients overflow at every loss scale: the GradScaler skipped step after step and backed off to "
      << r.lossScale << " (losses " << lossList(losses, true) << ")";
  }
  m << ". The step was not applied.\n";
  if (!s.lastCheckpoint.empty()) {
    m << "  last good checkpoint: " << s.lastCheckpoint
      << "; after the change below, --resume continues from it (the newest in " << s.checkpointDir << ")\n";
  } else {
    m << "  no checkpoint was written before this step, so the run has to start over (output.checkpoint_every = N "
         "keeps one every N steps)\n";
  }
  whatToChange(m, cfg, s.lr);
  throw DivergenceError(m.str(), step, firstBad);
}

int64_t optimizerStateMultiple(const OptimConfig& o) {
  if (o.name == "adam" || o.name == "adamw") return 2;
  return o.momentum > 0 ? 1 : 0;
}

int64_t optimizerStateBytes(torch::optim::Optimizer& optimizer) {
  int64_t bytes = 0;
  for (auto& [key, state] : optimizer.state()) {
    (void)key;
    if (auto* s = dynamic_cast<torch::optim::SGDParamState*>(state.get())) {
      if (s->momentum_buffer().defined()) bytes += s->momentum_buffer().nbytes();
    } else if (auto* a = dynamic_cast<torch::optim::AdamParamState*>(state.get())) {
      for (const auto& t : {a->exp_avg(), a->exp_avg_sq(), a->max_exp_avg_sq()})
        if (t.defined()) bytes += t.nbytes();
    } else if (auto* w = dynamic_cast<torch::optim::AdamWParamState*>(state.get())) {
      for (const auto& t : {w->exp_avg(), w->exp_avg_sq(), w->max_exp_avg_sq()})
        if (t.defined()) bytes += t.nbytes();
    }
  }
  return bytes;
}

double samplesPerSecond(const StepStats& w, int64_t batchSize) {
  return w.stepSeconds > 0 ? static_cast<double>(w.steps * batchSize) / w.stepSeconds : 0.0;
}

JsonObject stepRecordHead(const LoopStatus& s, int64_t batchSize) {
  JsonObject r;
  r.add("event", "step")
      .add("step", s.globalStep)
      .add("epoch", s.epoch)
      .add("loss", s.window.meanLoss())
      .add("lr", s.lr)
      .add("samples_per_s", samplesPerSecond(s.window, batchSize));
  return r;
}

void fillSummaryResult(const LoopStatus& s, int64_t batchSize, TrainResult& result) {
  const double steps = static_cast<double>(s.stepsThisRun);
  result.samplesPerSec = s.slowestTrainSeconds > 0 ? steps * static_cast<double>(batchSize) / s.slowestTrainSeconds : 0;
  result.commSeconds = s.total.commSeconds;
  result.overlapFraction = s.total.commSeconds > 0 ? s.total.overlapSeconds / s.total.commSeconds : 0;
}

JsonObject gptStartRecord(const Config& cfg, const LoopStatus& s, const comm::ProcessGroup& world, MeshSizes mesh,
                          int64_t params, const ParamBytes& bytes) {
  JsonObject r;
  r.add("event", "start")
      .add("world", world.size())
      .add("model", cfg.model.name)
      .add("params", params)
      .add("precision", cfg.precision)
      .add("comm_dtype", wireDtype(cfg))
      .add("transport", std::string(world.transportName()))
      .add("tp", mesh.tp)
      .add("dp", mesh.dp)
      .add("pp", mesh.pp)
      .add("sequence_parallel", cfg.parallel.sequenceParallel)
      .add("schedule", cfg.parallel.schedule)
      .add("micro_batches", cfg.parallel.microBatches)
      .add("virtual_stages", cfg.parallel.virtualStages)
      .add("param_bytes_sharded", bytes.sharded)
      .add("param_bytes_replicated", bytes.replicated)
      .add("optimizer_bytes", optimizerStateMultiple(cfg.optim) * bytes.total())
      .add("steps_per_epoch", s.stepsPerEpoch)
      .add("total_steps", s.totalSteps)
      .add("resumed_from", s.resumedFrom)
      .add("resumed_step", s.resumedStep);
  return r;
}

JsonObject gptSummaryRecord(const Config& cfg, const LoopStatus& s, const TrainResult& result,
                            const comm::ProcessGroup& world, MeshSizes mesh, const std::string& modelParallelKey,
                            int64_t optimizerBytes) {
  const StepStats& t = s.total;
  const double steps = static_cast<double>(s.stepsThisRun);
  auto perStep = [&](double v) { return steps > 0 ? v / steps : 0.0; };
  JsonObject r;
  r.add("event", "summary")
      .add("world", world.size())
      .add("model", cfg.model.name)
      .add("precision", cfg.precision)
      .add("tp", mesh.tp)
      .add("dp", mesh.dp)
      .add("pp", mesh.pp)
      .add("steps", s.stepsThisRun)
      .add("global_step", s.globalStep)
      .add("train_s", result.trainSeconds)
      .add("samples_per_s", result.samplesPerSec)
      .add("tokens_per_s", result.samplesPerSec * static_cast<double>(cfg.model.context))
      .add("val_loss", s.lastEval.value("val_loss"))
      .add("val_bpb", s.lastEval.value("val_bpb"))
      .add("comm_s", t.commSeconds)
      .add("compute_s", t.computeSeconds)
      .add("overlap_frac", result.overlapFraction)
      .add("bytes_sent", s.bytesSent)
      .add("bytes_per_step", perStep(static_cast<double>(s.bytesSinceStart)))
      .add("grad_bytes_per_step", perStep(static_cast<double>(t.gradBytes)))
      .add(modelParallelKey, perStep(static_cast<double>(t.modelParallelBytes)))
      .add("optimizer_bytes", optimizerBytes)
      .add("skipped_steps", result.skippedSteps)
      .add("peak_rss_mb_max", s.peakRssMaxMb)
      .add("peak_rss_mb_mean", s.peakRssMeanMb)
      .add("last_checkpoint", result.lastCheckpoint);
  return r;
}

void traceDdpStep(const StepInfo& info, std::chrono::steady_clock::time_point backwardStart,
                  std::chrono::steady_clock::time_point optimizerStart, std::chrono::steady_clock::time_point end,
                  const parallel::DDPStats& st) {
  if (!info.tracer || !info.tracer->enabled()) return;
  Tracer& tr = *info.tracer;
  tr.span("compute", "forward", info.start, backwardStart, str("{\"step\":", info.globalStep + 1, "}"));
  tr.span("compute", "backward", backwardStart, st.backwardEnd);
  if (st.waitSeconds > 0) tr.span("compute", "wait for all-reduce", st.backwardEnd, optimizerStart);
  tr.span("compute", "optimizer", optimizerStart, end);
  for (const auto& b : st.spans) tr.span("comm", str("allreduce bucket ", b.bucket), b.start, b.end);
}

}  // namespace chorus::train
