// Layer-wise model parallelism for the GPT (see layerwise_strategy.h).
#include "chorus/train/layerwise_strategy.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include "chorus/comm/collectives/collectives.h"
#include "chorus/common/cpu_wait.h"
#include "chorus/common/error.h"
#include "chorus/common/logging.h"
#include "chorus/parallel/data/ddp.h"
#include "chorus/parallel/mesh.h"
#include "chorus/parallel/pipeline/executor.h"
#include "chorus/parallel/pipeline/profile.h"
#include "chorus/parallel/tensor/communication.h"
#include "chorus/parallel/tensor/sharding.h"
#include "chorus/train/gpt_stages.h"
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

// Checkpoint parts travel from each stage of replica 0 to stage 0 under these tags (pp group);
// LayerwiseStage uses 0x4C570000 and 0x4C570001.
constexpr uint32_t kCheckpointSizeTag = 0x4C574B00, kCheckpointTag = 0x4C574B01;

// DistributedDataParallel wraps a module holder whose forward runs the stage: the stage's
// parameters (and their names) are its child's, and forward is the stage's send/recv forward.
class StageRunnerImpl : public torch::nn::Module {
 public:
  explicit StageRunnerImpl(GptStage& s) : stage_(s) { register_module("stage", s.modulePtr()); }
  torch::Tensor forward(const torch::Tensor& ids) { return stage_.forward(ids); }

 private:
  GptStage& stage_;
};
TORCH_MODULE(StageRunner);

void broadcastDouble(comm::ProcessGroup& g, double* v, int root) {
  if (g.size() == 1) return;
  comm::BroadcastOptions b;
  b.data = v;
  b.count = 1;
  b.dtype = DType::kFloat64;
  b.root = root;
  g.broadcast(b);
}

// Averages every parameter's gradient over g (one all-reduce of them all, flattened). A
// parameter without a gradient counts as zeros.
void averageGradients(comm::ProcessGroup& g, torch::nn::Module& module) {
  std::vector<torch::Tensor> grads;
  for (auto& p : module.parameters()) {
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    grads.push_back(p.grad());
  }
  if (grads.empty()) return;
  torch::Tensor flat = torch::cat([&] {
    std::vector<torch::Tensor> v;
    for (auto& t : grads) v.push_back(t.reshape({-1}));
    return v;
  }());
  if (flat.scalar_type() != torch::kFloat)
    throw InvalidArgument(chorus::str("the layer-wise GPT's gradients are ", c10::toString(flat.scalar_type()), "; it trains in float32"));
  allreduceInPlace(g, flat.data_ptr(), static_cast<size_t>(flat.numel()), DType::kFloat32, ReduceOp::kSum);
  flat.div_(static_cast<double>(g.size()));
  int64_t at = 0;
  for (auto& t : grads) {
    t.copy_(flat.narrow(0, at, t.numel()).view_as(t));
    at += t.numel();
  }
}

// parallel.balance = "time": world rank 0 times every layer of the GPT on one micro-batch of
// random ids (forward + backward, profile.h) and broadcasts the costs, so that every rank
// computes the same partition from them.
// parallel.balance = "time": splits whose slowest stage is within this fraction of the best
// split's count as equally fast (balancedPartition), so profiling noise does not pick an
// uneven split.
constexpr double kProfileTolerance = 0.05;

std::vector<int64_t> profiledLayerCosts(const Config& cfg, const GptOptions& o, comm::ProcessGroup& world, int dp) {
  const size_t n = gptLayerCount(o);
  std::vector<int64_t> costs(n, 0);
  if (world.rank() == 0) {
    const int64_t rows = std::max<int64_t>(1, cfg.train.batchSize / std::max(1, dp) / cfg.parallel.microBatches);
    auto gen = at::detail::createCPUGenerator(o.seed);
    const torch::Tensor ids = torch::randint(0, o.vocab, {rows, o.context}, gen);
    // The last stage also computes the loss over the vocabulary: the head's cost includes it.
    const torch::Tensor targets = torch::randint(0, o.vocab, {rows, o.context}, gen);
    const parallel::LayerProfile p = parallel::profileLayers(
        n, [&](size_t i) { return gptLayer(o, i); }, ids, 5, [&](const torch::Tensor& logits) {
          return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
        });
    costs = p.costs();
  }
  if (world.size() > 1) {
    comm::BroadcastOptions b;
    b.data = costs.data();
    b.count = costs.size();
    b.dtype = DType::kInt64;
    b.root = 0;
    world.broadcast(b);
  }
  return costs;
}

std::string listOf(const std::vector<int>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

// "optim/<g>/<p>/<field>" -> (g, p, field); nothing for the other optim/ entries.
struct OptimKey {
  size_t group = 0, param = 0;
  std::string field;
};
std::optional<OptimKey> parseOptimKey(const std::string& name) {
  if (!name.starts_with("optim/")) return std::nullopt;
  const size_t a = name.find('/', 6), b = a == std::string::npos ? a : name.find('/', a + 1);
  if (b == std::string::npos) return std::nullopt;
  const std::string g = name.substr(6, a - 6), p = name.substr(a + 1, b - a - 1);
  auto digits = [](const std::string& s) {
    return !s.empty() && s.size() <= 9 && s.find_first_not_of("0123456789") == std::string::npos;
  };
  if (!digits(g) || !digits(p)) return std::nullopt;
  return OptimKey{std::stoul(g), std::stoul(p), name.substr(b + 1)};
}

// The parameter an entry of a stage's checkpoint part belongs to: params/<name>, or
// optim/<g>/<p>/<field> through the stage's own parameter order; "" for the other entries.
std::string entryParameter(const std::string& entry, const std::vector<std::string>& local) {
  if (entry.starts_with("params/")) return entry.substr(7);
  if (auto k = parseOptimKey(entry)) return k->param < local.size() ? local[k->param] : std::string();
  return {};
}

// tp > 1, saving: each entry of a parameter split over tp (its value, and its optimizer state
// of the parameter's shape) replaced by the full tensor, joined from every tp rank's shard.
// Collective over tp: every tp rank of the stage holds the same entries in the same order.
void joinShards(NamedTensors& entries, torch::nn::Module& module, const std::vector<std::string>& local,
                const TpGroup& tp) {
  const auto specs = parallel::shardSpecs(module);
  const auto params = module.named_parameters();
  torch::NoGradGuard noGrad;
  for (auto& [name, t] : entries) {
    const std::string pname = entryParameter(name, local);
    auto it = specs.find(pname);
    if (pname.empty() || it == specs.end() || it->second.dim < 0) continue;
    if (t.sizes() != params[pname].sizes()) continue;  // an optimizer's step count
    const torch::Tensor rows = parallel::allGatherAlong(t.detach().contiguous().reshape({1, -1}), 0, tp);
    std::vector<torch::Tensor> shards;
    for (int64_t r = 0; r < rows.size(0); ++r) shards.push_back(rows[r].view(t.sizes()));
    t = parallel::unshard(shards, it->second);
  }
}

// tp > 1, loading: each entry of a parameter split over tp (a whole-model tensor in the file)
// cut to this rank's shard with the stage's own ShardSpec (padded as this tp needs).
void cutShards(NamedTensors& entries, torch::nn::Module& module, const std::vector<std::string>& local, int tpRank,
               int tpSize) {
  const auto specs = parallel::shardSpecs(module);
  std::map<std::string, std::vector<int64_t>> fullShape;
  for (const auto& [name, t] : entries)
    if (name.starts_with("params/")) fullShape[name.substr(7)] = t.sizes().vec();
  for (auto& [name, t] : entries) {
    const std::string pname = entryParameter(name, local);
    auto it = specs.find(pname);
    if (pname.empty() || it == specs.end() || it->second.dim < 0) continue;
    auto shape = fullShape.find(pname);
    if (shape == fullShape.end() || t.sizes().vec() != shape->second) continue;  // a step count
    t = parallel::shardOf(t, it->second, tpRank, tpSize);
  }
}

}  // namespace

struct LayerwiseStrategy::Impl {
  Impl(const Config& c, std::shared_ptr<comm::ProcessGroup> w)
      : cfg(c),
        world(std::move(w)),
        mesh(parallel::ProcessMesh::make(world, static_cast<int>(c.parallel.tp), static_cast<int>(c.parallel.pp))) {}

  const Config& cfg;
  std::shared_ptr<comm::ProcessGroup> world;
  parallel::ProcessMesh mesh;
  GptOptions gpt;
  std::unique_ptr<GptStage> stage;
  StageRunner runner{nullptr};
  std::unique_ptr<parallel::DistributedDataParallel<StageRunner>> ddp;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  ParamBytes bytes;
  std::unique_ptr<parallel::PipelineExecutor> exec;  // parallel.schedule != "none"
  // Per stage, the share of the pipeline's time it waited, summed over the steps since the
  // last step record (pipelined steps only).
  std::vector<double> bubbleSum;
  std::vector<double> cpuWaitSum;  // each stage's summed share of pipeline time with no free core
  bool cpuWaitKnown = false;        // every stage could read it (cpu_wait.h) in the last step
  double runCpuWait = 0;            // the run's sum over steps of the stages' mean share with no core
  int64_t runCpuWaitSteps = 0;
  std::vector<int> peakStored;  // per stage, the most micro-batches holding forward state in the window
  int64_t bubbleSteps = 0;

  int pp() const { return mesh.size("pp"); }
  int dp() const { return mesh.size("dp"); }
  int tp() const { return mesh.size("tp"); }
  int ppRank() const { return mesh.coord("pp"); }
  comm::ProcessGroup* tpGroup() const { return tp() > 1 ? mesh.group("tp").get() : nullptr; }

  // optim.clip_norm: the whole model's norm, over this stage's shards, the tp ranks and the
  // stages (the last stage's copy of a tied wte not counted twice). After the dp average and
  // the tied sum.
  void clip() {
    if (!(cfg.optim.clipNorm > 0)) return;
    std::vector<std::string> skip;
    if (isTiedCopy("wte.weight") && stage->embeddingWeight().defined()) skip.push_back("wte.weight");
    clipGradientNorm(stage->module(), cfg.optim.clipNorm, tpGroup(), mesh.group("pp").get(), skip);
  }

  // This stage's parameter names, in its optimizer's order.
  std::vector<std::string> localNames() const {
    std::vector<std::string> v;
    for (const auto& p : stage->module().named_parameters()) v.push_back(p.key());
    return v;
  }
  // Whether this stage's `name` is the last stage's copy of the tied wte (saved by stage 0).
  bool isTiedCopy(const std::string& name) const {
    return gpt.tieEmbeddings && name == "wte.weight" && !stage->isFirst();
  }

  // What every pipeline run needs: the stage's chunks and, for the asynchronous schedules, the
  // update of each group of micro-batches: the dp average and the optimizer step there (a
  // non-finite gradient skips its update and clears *finite). The tied embedding is refused
  // for them (config.cc).
  parallel::PipelineExecutor::Step pipelineCallbacks(bool* finite) {
    parallel::PipelineExecutor::Step p;
    GptStage& st = *stage;
    p.forward = [&st](int chunk, const torch::Tensor& x) { return st.runChunk(chunk, x); };
    if (exec->schedule().asynchronous()) {
      p.parameters = [&st](int) { return st.module().parameters(); };
      p.update = [this, finite](int) {
        if (dp() > 1) averageGradients(*mesh.group("dp"), stage->module());
        if (gradientsFinite(*optimizer)) {
          optimizer->step();
        } else {
          *finite = false;
        }
        optimizer->zero_grad();
      };
    }
    return p;
  }

  // A stream drains inside the step before the loop pauses (StepInfo::pauseAfter); this is the
  // guard for a pause the step was not told of (every stage of the pipeline reaches it).
  void drainStream(const char* before) {
    if (!exec || exec->segmentsInFlight() == 0) return;
    bool finite = true;
    exec->flush(pipelineCallbacks(&finite));
    CHORUS_WARN("the pipeline stream was drained before ", before, " outside a step", finite ? "" : " (a non-finite gradient's update was skipped)");
  }
};

LayerwiseStrategy::LayerwiseStrategy(const Config& cfg, std::shared_ptr<comm::ProcessGroup> world) {
  const ParallelConfig& par = cfg.parallel;
  if (!world) throw InvalidArgument("LayerwiseStrategy: the world group is null");
  if (par.pp < 2)
    throw ConfigError(str("parallel.pp = ", par.pp, ": the layer-wise strategy splits the model over 2 or more stages; "
                          "use parallel.pp >= 2 (pp = 1 runs the tensor-parallel strategy)"));
  if (par.tp < 1 || world->size() % (par.pp * par.tp) != 0)
    throw ConfigError(str("parallel.tp x parallel.pp = ", par.tp, " x ", par.pp, " does not divide the ", world->size(),
                          " workers; run a multiple of ", par.tp * par.pp, " workers (dp = workers / (tp x pp))"));
  if (par.sequenceParallel)
    throw ConfigError(str("parallel.sequence_parallel is not combined with parallel.pp = ", par.pp,
                          "; set sequence_parallel = false"));
  if (cfg.precision != "fp32")
    throw ConfigError(str("precision = \"", cfg.precision, "\" is not supported with parallel.pp = ", par.pp,
                          "; the layer-wise GPT trains in fp32 (set precision = \"fp32\")"));
  if (cfg.compression.method != "none")
    throw ConfigError(str("compression.method = \"", cfg.compression.method, "\" is not supported with parallel.pp = ",
                          par.pp, "; set compression.method = \"none\""));
  impl_ = std::make_unique<Impl>(cfg, std::move(world));
}

LayerwiseStrategy::~LayerwiseStrategy() = default;

GptStage& LayerwiseStrategy::stage() {
  if (!impl_->stage) throw InvalidArgument("LayerwiseStrategy::stage: call setup() first");
  return *impl_->stage;
}

Roles LayerwiseStrategy::roles() const {
  Roles r;
  r.group = impl_->world.get();
  r.lead = impl_->world->rank() == 0;
  r.dataRank = impl_->mesh.coord("dp");
  r.dataRanks = impl_->dp();
  return r;
}

void LayerwiseStrategy::setup(Task& /*task*/) {
  Impl& m = *impl_;
  m.gpt = gptOptions(m.cfg);
  m.gpt.sequenceParallel = false;
  parallel::LayerwiseOptions base;
  const ParallelConfig& par = m.cfg.parallel;
  if (!par.partition.empty()) {
    for (int64_t c : par.partition) base.partition.push_back(static_cast<int>(c));
  } else if (par.balance == "time") {
    base.layerCosts = profiledLayerCosts(m.cfg, m.gpt, *m.world, m.dp());
    // Timings on a shared machine vary by a few percent from run to run.
    base.costTolerance = kProfileTolerance;
  }
  m.stage = std::make_unique<GptStage>(m.gpt, m.mesh.group("pp"), m.mesh.coord("dp"), base, m.mesh.group("tp"),
                                       static_cast<int>(par.virtualStages));
  m.bytes = parameterBytes(m.stage->module());
  if (m.cfg.parallel.schedule != "none") {
    // Micro-batches: the executor runs the schedule; the dp average comes after it.
    const ParallelConfig& par = m.cfg.parallel;
    parallel::PipelineOptions po;
    po.weightStashing = par.weightStashing;
    po.verticalSync = par.verticalSync;
    po.recompute = par.recompute;
    po.stream = par.asyncFlush == "never";
    m.exec = std::make_unique<parallel::PipelineExecutor>(
        m.mesh.group("pp"),
        parallel::makeSchedule(par.schedule, m.pp(), static_cast<int>(par.microBatches),
                               static_cast<int>(par.virtualStages), static_cast<int>(par.updateEvery)),
        po);
  } else if (m.dp() > 1) {
    m.runner = StageRunner(*m.stage);
    parallel::DDPOptions d = ddpOptions(m.cfg);  // ddp.* and the wire dtype, as the other strategies
    d.broadcastBuffers = false;                  // the GPT has no buffers
    m.ddp = std::make_unique<parallel::DistributedDataParallel<StageRunner>>(m.runner, m.mesh.group("dp"), d);
  }
  m.optimizer = makeOptimizer(m.cfg.optim, m.stage->module().parameters());
}

StepOutcome LayerwiseStrategy::step(const Batch& batch, const StepInfo& info) {
  Impl& m = *impl_;
  if (m.exec) return pipelineStep(batch, info);
  GptStage& st = *m.stage;
  setLearningRate(*m.optimizer, info.lr);
  m.optimizer->zero_grad();
  const uint64_t sent0 = m.world->bytesSent();
  const torch::Tensor input = st.isFirst() ? batch.input : torch::Tensor();
  torch::Tensor out = m.ddp ? m.ddp->forward(input) : st.forward(input);
  torch::Tensor loss;
  if (st.isLast()) loss = st.loss(out, batch.target);
  st.backward(loss);  // DDP's buckets all-reduce over dp during it
  const Clock::time_point t1 = Clock::now();
  st.syncTiedGradients();
  const Clock::time_point t2 = Clock::now();

  // The replica's loss, from its last stage, on every stage; then one decision for the world.
  StepOutcome o;
  double lossValue = st.isLast() ? loss.item<double>() : 0.0;
  broadcastDouble(*m.mesh.group("pp"), &lossValue, m.pp() - 1);
  // Sends are posted in issue order on the executor the groups share, so after this blocking
  // broadcast every send of the step (the gradient sent at the end of backward too) is counted.
  const uint64_t sent1 = m.world->bytesSent();
  o.stats.loss = lossValue;
  o.diverged = agreeOnDivergence(*m.world, std::isfinite(lossValue), gradientsFinite(*m.optimizer));
  const Clock::time_point t3 = Clock::now();
  if (o.diverged.any()) {
    st.layers().takeSpans();
    return o;
  }
  m.clip();
  m.optimizer->step();
  const Clock::time_point t4 = Clock::now();

  // Time blocked on a neighbour, the dp all-reduce's wait, the tied sum and the decision.
  double waits = 0;
  const std::vector<parallel::StageSpan> spans = st.layers().takeSpans();
  for (const auto& s : spans) {
    if (s.kind != parallel::StageSpan::Kind::kForward && s.kind != parallel::StageSpan::Kind::kBackward)
      waits += seconds(s.start, s.end);
  }
  double ddpWait = 0, ddpComm = 0, ddpOverlap = 0;
  if (m.ddp) {
    const parallel::DDPStats& ds = m.ddp->stats();
    ddpWait = ds.waitSeconds;
    ddpComm = ds.commSeconds;
    ddpOverlap = ds.overlapSeconds;
    // The buckets' all-reduce shares the counter with the stage's sends and overlaps them in
    // time: its part is a ring all-reduce's share of the buckets (an estimate).
    o.stats.denseBytes = ringAllreduceBytes(m.cfg, m.dp(), ds.bytesReduced);
    o.stats.gradBytes = std::min<uint64_t>(sent1 - sent0, std::llround(o.stats.denseBytes));
  }
  // The pipeline's traffic: activations forward, their gradients back, the tied embedding's
  // gradient sum and the loss broadcast over the stages.
  o.stats.modelParallelBytes = (sent1 - sent0) - o.stats.gradBytes;
  torch::Tensor w = st.embeddingWeight();
  const bool tiedSync = m.gpt.tieEmbeddings && w.defined() && (st.isFirst() || st.isLast());
  const double blocked = waits + ddpWait + seconds(t1, t3);
  o.stats.steps = 1;
  o.stats.commSeconds = waits + ddpComm + seconds(t1, t3);
  o.stats.overlapSeconds = ddpOverlap;
  o.stats.computeSeconds = std::max(0.0, seconds(info.start, t4) - blocked);

  if (info.tracer && info.tracer->enabled()) {
    Tracer& tr = *info.tracer;
    const std::string args = str("{\"step\":", info.globalStep + 1, ",\"stage\":", m.ppRank(), "}");
    for (const auto& s : spans) {
      const bool work = s.kind == parallel::StageSpan::Kind::kForward || s.kind == parallel::StageSpan::Kind::kBackward;
      tr.span(work ? "compute" : "pipeline", s.name(), s.start, s.end, args);
    }
    if (tiedSync) tr.span("comm", "tied embedding all-reduce", t1, t2);
    if (m.ddp)
      for (const auto& s : m.ddp->stats().spans) tr.span("comm", str("allreduce bucket ", s.bucket), s.start, s.end);
    tr.span("compute", "optimizer", t3, t4);
  }
  return o;
}

// A step under a pipeline schedule: the executor runs this stage's actions over the
// micro-batches (each micro-batch's loss divided by their count, so the gradients are the whole
// batch's mean); then the gradients are averaged over dp, the tied copies summed, and the
// divergence decision and the optimizer step follow as in the naive step.
StepOutcome LayerwiseStrategy::pipelineStep(const Batch& batch, const StepInfo& info) {
  Impl& m = *impl_;
  GptStage& st = *m.stage;
  const bool async = m.exec->schedule().asynchronous();
  setLearningRate(*m.optimizer, info.lr);
  // An asynchronous schedule's updates clear what they applied; in a stream, the gradients
  // of a group still in flight carry over into this step.
  if (!async) m.optimizer->zero_grad();
  const uint64_t sent0 = m.world->bytesSent();
  const int64_t micro = m.cfg.parallel.microBatches;
  if (batch.target.size(0) % micro != 0)
    throw ConfigError(str("parallel.micro_batches = ", micro, ": this replica's batch of ", batch.target.size(0),
                          " windows cannot be cut into equal micro-batches; use a micro_batches that divides it"));
  const std::vector<torch::Tensor> inputs = st.isFirst() ? batch.input.chunk(micro) : std::vector<torch::Tensor>();
  const std::vector<torch::Tensor> targets = st.isLast() ? batch.target.chunk(micro) : std::vector<torch::Tensor>();
  bool updatesFinite = true;
  parallel::PipelineExecutor::Step p = m.pipelineCallbacks(&updatesFinite);
  if (st.isFirst()) p.input = [&](int i) { return inputs[static_cast<size_t>(i)]; };
  if (st.isLast())
    p.loss = [&](const torch::Tensor& out, int i) {
      return st.loss(out, targets[static_cast<size_t>(i)]) / static_cast<double>(micro);
    };
  const double cpuWait0 = threadCpuWaitSeconds();
  parallel::PipelineRun run = m.exec->run(p);
  if (info.pauseAfter && m.exec->streaming()) {
    // PipeDream's stream drains only before the loop pauses (an evaluation, a checkpoint, an
    // epoch's or the run's end), inside the step, so its time and updates count here.
    parallel::PipelineRun drain = m.exec->flush(p);
    run.computeSeconds += drain.computeSeconds;
    run.waitSeconds += drain.waitSeconds;
    run.peakStored = std::max(run.peakStored, drain.peakStored);
    run.spans.insert(run.spans.end(), drain.spans.begin(), drain.spans.end());
  }
  const double cpuWait1 = threadCpuWaitSeconds();
  const Clock::time_point t1 = Clock::now();
  if (m.dp() > 1 && !async) averageGradients(*m.mesh.group("dp"), st.module());
  const Clock::time_point t2 = Clock::now();
  if (!async) st.syncTiedGradients();
  const Clock::time_point t3 = Clock::now();

  // One all-reduce over the stages: the replica's loss (from the last stage), every stage's
  // bubble (the share of its pipeline time spent waiting), its peak stored micro-batches, and
  // the share of its pipeline time its thread was runnable with no free core (cpu_wait.h; with
  // a count of the stages that could measure it).
  StepOutcome o;
  const size_t stages = static_cast<size_t>(m.pp()), me = static_cast<size_t>(m.ppRank());
  std::vector<double> shared(2 + 3 * stages, 0.0);
  for (double l : run.losses) shared[0] += l;  // each is its micro-batch's mean / micro
  const double busy = run.computeSeconds, waited = run.waitSeconds;
  shared[1 + me] = busy + waited > 0 ? waited / (busy + waited) : 0;
  shared[1 + stages + me] = run.peakStored;
  if (cpuWait0 >= 0 && cpuWait1 >= 0) {
    shared[1 + 2 * stages + me] = busy + waited > 0 ? std::min(1.0, (cpuWait1 - cpuWait0) / (busy + waited)) : 0;
    shared[1 + 3 * stages] = 1;
  }
  allreduceInPlace(*m.mesh.group("pp"), shared.data(), shared.size(), DType::kFloat64, ReduceOp::kSum);
  const double lossValue = shared[0];
  m.bubbleSum.resize(stages, 0.0);
  m.cpuWaitSum.resize(stages, 0.0);
  m.peakStored.resize(stages, 0);
  for (size_t s = 0; s < stages; ++s) {
    m.bubbleSum[s] += shared[1 + s];
    m.cpuWaitSum[s] += shared[1 + 2 * stages + s];
    m.peakStored[s] = std::max(m.peakStored[s], static_cast<int>(std::lround(shared[1 + stages + s])));
  }
  m.cpuWaitKnown = std::lround(shared[1 + 3 * stages]) == static_cast<long>(stages);
  if (m.cpuWaitKnown) {
    double mean = 0;
    for (size_t s = 0; s < stages; ++s) mean += shared[1 + 2 * stages + s] / static_cast<double>(stages);
    m.runCpuWait += mean;
    ++m.runCpuWaitSteps;
  }
  ++m.bubbleSteps;
  const uint64_t sent1 = m.world->bytesSent();
  o.stats.loss = lossValue;
  o.diverged =
      agreeOnDivergence(*m.world, std::isfinite(lossValue), async ? updatesFinite : gradientsFinite(*m.optimizer));
  const Clock::time_point t4 = Clock::now();
  if (o.diverged.any()) return o;
  if (!async) {
    m.clip();
    m.optimizer->step();
  }
  const Clock::time_point t5 = Clock::now();

  if (m.dp() > 1) {
    // The average moves each parameter once through a ring all-reduce.
    o.stats.denseBytes = ringAllreduceBytes(m.cfg, m.dp(), static_cast<uint64_t>(m.bytes.sharded + m.bytes.replicated));
    o.stats.gradBytes = std::min<uint64_t>(sent1 - sent0, std::llround(o.stats.denseBytes));
  }
  o.stats.modelParallelBytes = (sent1 - sent0) - o.stats.gradBytes;
  o.stats.steps = 1;
  o.stats.commSeconds = waited + seconds(t1, t4);
  o.stats.computeSeconds = std::max(0.0, seconds(info.start, t5) - o.stats.commSeconds);

  if (info.tracer && info.tracer->enabled()) {
    Tracer& tr = *info.tracer;
    for (const auto& sp : run.spans) {
      const bool work = sp.kind == parallel::PipeSpan::Kind::kForward || sp.kind == parallel::PipeSpan::Kind::kBackward ||
                        sp.kind == parallel::PipeSpan::Kind::kBackwardInput ||
                        sp.kind == parallel::PipeSpan::Kind::kBackwardWeight;
      const std::string args = sp.microBatch >= 0
                                   ? str("{\"step\":", info.globalStep + 1, ",\"stage\":", m.ppRank(),
                                         ",\"micro_batch\":", sp.microBatch, "}")
                                   : str("{\"step\":", info.globalStep + 1, ",\"stage\":", m.ppRank(), "}");
      tr.span(work ? "compute" : "pipeline", parallel::PipeSpan::name(sp.kind), sp.start, sp.end, args);
    }
    if (m.dp() > 1) tr.span("comm", "gradient all-reduce (dp)", t1, t2);
    if (m.gpt.tieEmbeddings && (st.isFirst() || st.isLast())) tr.span("comm", "tied embedding all-reduce", t2, t3);
    tr.span("compute", "optimizer", t4, t5);
  }
  return o;
}

EvalMetrics LayerwiseStrategy::evaluate(Task& task) {
  Impl& m = *impl_;
  m.drainStream("an evaluation");
  GptStage& st = *m.stage;
  st.module().eval();
  EvalRunner run;
  run.group = m.mesh.group("dp").get();
  // Every stage of a replica holds the same slice of windows (same dp rank) and calls this for
  // the same chunks: the chunk goes through the stages, and the loss comes back from the last.
  run.loss = [&](const Batch& b) {
    torch::NoGradGuard noGrad;
    // An interleaved stage takes the ids everywhere (for the activations' shape).
    torch::Tensor out = st.forward(st.isFirst() || st.chunks() > 1 ? b.input : torch::Tensor());
    double v = st.isLast() ? st.loss(out, b.target).item<double>() : 0.0;
    broadcastDouble(*m.mesh.group("pp"), &v, m.pp() - 1);
    return torch::tensor(v, torch::kFloat64);
  };
  EvalMetrics r;
  try {
    r = task.evaluate(run);
  } catch (...) {
    st.module().train();
    throw;
  }
  st.module().train();
  if (st.chunks() == 1) st.layers().takeSpans();  // evaluation's forwards are not a step's
  return r;
}

void LayerwiseStrategy::finish() { impl_->drainStream("the run's end"); }

// ---- checkpoints ----

void LayerwiseStrategy::saveCheckpoint(const std::string& path, const TrainState& state) {
  Impl& m = *impl_;
  m.drainStream("a checkpoint");
  if (m.mesh.coord("dp") != 0) return;  // the replicas are equal: replica 0 saves
  comm::ProcessGroup& pp = *m.mesh.group("pp");
  const std::vector<std::string> global = gptParameterNames(m.gpt);
  std::map<std::string, size_t> globalIndex;
  for (size_t i = 0; i < global.size(); ++i) globalIndex[global[i]] = i;
  const std::vector<std::string> local = m.localNames();

  // This stage's parameters and optimizer state, whole (joined over tp on tp rank 0, which
  // alone goes on), under the whole model's parameter indices.
  NamedTensors mine = checkpointEntries(m.stage->module(), *m.optimizer, state, path);
  if (m.tp() > 1) {
    joinShards(mine, m.stage->module(), local, m.mesh.group("tp"));
    if (m.mesh.coord("tp") != 0) return;
  }
  NamedTensors part;
  for (auto& [name, t] : mine) {
    if (name.starts_with("params/")) {
      if (!m.isTiedCopy(name.substr(7))) part.emplace_back(name, t);
    } else if (auto k = parseOptimKey(name)) {
      const std::string& pname = local.at(k->param);
      if (!m.isTiedCopy(pname)) part.emplace_back(str("optim/", k->group, "/", globalIndex.at(pname), "/", k->field), t);
    }
  }
  if (!m.stage->isFirst()) {
    const std::string bytes = encodeTensors(part);
    uint64_t size = bytes.size();
    pp.send(0, kCheckpointSizeTag, &size, sizeof size);
    pp.send(0, kCheckpointTag, bytes.data(), bytes.size());
    return;
  }
  // Stage 0 of replica 0 (world rank 0) holds the whole model from here to the write.
  for (int s = 1; s < m.pp(); ++s) {
    uint64_t size = 0;
    pp.recv(s, kCheckpointSizeTag, &size, sizeof size);
    std::string bytes(size, '\0');
    pp.recv(s, kCheckpointTag, bytes.data(), bytes.size());
    for (auto& e : decodeTensors(bytes.data(), bytes.size(), str("the checkpoint part of stage ", s)))
      part.push_back(std::move(e));
  }
  std::map<std::string, torch::Tensor> params;
  std::map<std::pair<size_t, size_t>, std::vector<std::pair<std::string, torch::Tensor>>> optim;
  for (auto& [name, t] : part) {
    if (name.starts_with("params/")) {
      params[name.substr(7)] = t;
    } else if (auto k = parseOptimKey(name)) {
      optim[{k->group, k->param}].emplace_back(name, t);
    }
  }
  NamedTensors entries;
  for (const auto& n : global) {
    auto it = params.find(n);
    if (it == params.end()) throw Error(str("cannot save checkpoint ", path, ": no stage sent parameter '", n, "'"));
    entries.emplace_back("params/" + n, it->second);
  }
  for (auto& [name, t] : mine) {
    if (name.starts_with("state/") || name.starts_with("scalars/") || name.starts_with("tensors/") ||
        name == "optim/kind" || name == "optim/groups" || (name.starts_with("optim/") && name.ends_with("/lr"))) {
      entries.emplace_back(name, t);
    } else if (name.starts_with("optim/") && name.ends_with("/params")) {
      entries.emplace_back(name, torch::tensor(static_cast<int64_t>(global.size()), torch::kLong));
    }
  }
  for (auto& [key, list] : optim)
    for (auto& e : list) entries.push_back(std::move(e));
  writeCheckpointEntries(path, entries);
}

// This stage's parameters (its tp shards) and their optimizer state, as a checkpoint of the
// stage module holds them. An asynchronous schedule's stream keeps micro-batches and stashed
// weight versions across steps, which a snapshot at a step's end does not hold: refused.
std::string LayerwiseStrategy::snapshot(const TrainState& state) {
  Impl& m = *impl_;
  if (m.exec && m.exec->schedule().asynchronous())
    throw InvalidArgument(str("elastic training (chorus train --min) recovers synchronous pipeline schedules; ",
                              "parallel.schedule = \"", m.cfg.parallel.schedule, "\" updates inside the pipeline and ",
                              "keeps weight versions across steps; use gpipe, 1f1b, interleaved or zb-h1, or recover ",
                              "with --restarts R without --min"));
  return moduleSnapshot(m.stage->module(), *m.optimizer, state, m.world->size());
}

TrainState LayerwiseStrategy::restoreSnapshot(const std::string& payload) {
  Impl& m = *impl_;
  return restoreModuleSnapshot(payload, m.stage->module(), *m.optimizer);
}

TrainState LayerwiseStrategy::loadCheckpoint(const std::string& path) {
  Impl& m = *impl_;
  const std::vector<std::string> global = gptParameterNames(m.gpt);
  const std::vector<std::string> local = m.localNames();
  std::map<std::string, size_t> localIndex;
  for (size_t i = 0; i < local.size(); ++i) localIndex[local[i]] = i;

  FramedFile f = readCheckpointFile(path);
  NamedTensors all = decodeTensors(f.payload.data(), f.payload.size(), str("checkpoint ", path));
  const bool sharded =
      std::any_of(all.begin(), all.end(), [](const auto& e) { return e.first.starts_with("layout/"); });
  if (sharded) {
    // A tensor-parallel checkpoint: joined into a whole model at tp 1 on this rank, then read
    // like a plain one.
    all.clear();
    Gpt gpt(m.gpt);
    auto opt = makeOptimizer(m.cfg.optim, gpt->parameters());
    TrainState st = loadShardedCheckpoint(path, *gpt, *opt, 0, 1);
    all = checkpointEntries(*gpt, *opt, st, path);
  }

  // The file must hold the whole model this config describes (a stage takes only its names,
  // so the stage's own load would not notice a parameter that belongs to no stage).
  std::set<std::string> inFile;
  for (const auto& [name, t] : all)
    if (name.starts_with("params/")) inFile.insert(name.substr(7));
  const std::set<std::string> expected(global.begin(), global.end());
  for (const auto& n : inFile)
    if (!expected.count(n))
      throw Error(str("checkpoint ", path, ": parameter '", n, "' is in the checkpoint but not in this GPT",
                      n == "lm_head.weight" ? " (it was written with model.tie_embeddings = false)" : "",
                      "; it was written for a different model (check model.*)"));

  // This stage's part, numbered as its optimizer numbers its parameters.
  NamedTensors mine;
  for (auto& [name, t] : all) {
    if (name.starts_with("params/")) {
      if (localIndex.count(name.substr(7))) mine.emplace_back(name, t);
    } else if (name.starts_with("state/") || name.starts_with("scalars/") || name.starts_with("tensors/") ||
               name.starts_with("buffers/")) {
      mine.emplace_back(name, t);
    } else if (name.starts_with("optim/")) {
      if (auto k = parseOptimKey(name)) {
        if (k->param >= global.size())
          throw Error(str("checkpoint ", path, ": entry '", name, "' names parameter ", k->param, ", but the model has ",
                          global.size()));
        auto it = localIndex.find(global[k->param]);
        if (it != localIndex.end()) mine.emplace_back(str("optim/", k->group, "/", it->second, "/", k->field), t);
      } else if (name.ends_with("/params")) {
        if (t.numel() != 1 || t.item<int64_t>() != static_cast<int64_t>(global.size()))
          throw Error(str("checkpoint ", path, ": entry '", name, "' counts ", t.numel() == 1 ? t.item<int64_t>() : -1,
                          " parameters, but the model has ", global.size(), "; it was written for a different model"));
        mine.emplace_back(name, torch::tensor(static_cast<int64_t>(local.size()), torch::kLong));
      } else {
        mine.emplace_back(name, t);
      }
    }
  }
  if (m.tp() > 1) cutShards(mine, m.stage->module(), local, m.mesh.coord("tp"), m.tp());
  return loadCheckpointEntries(path, encodeTensors(mine), m.stage->module(), *m.optimizer);
}

// ---- divergence ----

JsonObject LayerwiseStrategy::divergedRecord(const Divergence& d, const LoopStatus& s) {
  return train::divergedRecord(d, s, nullptr);
}

// Every rank calls this at the same step (the decision was agreed over the world). A rank's loss
// is its replica's (broadcast from the replica's last stage).
void LayerwiseStrategy::raiseDivergence(const Divergence& d, const LoopStatus& s) {
  Impl& m = *impl_;
  DivergenceReport r;
  r.what = d;
  r.loss = s.loss;
  r.layout = str(" on a ", m.pp(), "-stage layer-wise split (pp ", m.pp(), " x dp ", m.dp(), " x tp ", m.tp(),
                 "; a rank's loss is its replica's)");
  r.gradientChecked = str("on some stage", m.dp() > 1 ? ", after the all-reduce over dp" : "",
                          m.gpt.tieEmbeddings ? ", the tied embedding's two copies summed" : "");
  throwDivergence(*m.world, m.cfg, s, r);
}

// ---- records ----

JsonObject LayerwiseStrategy::startRecord(const LoopStatus& s) {
  Impl& m = *impl_;
  return gptStartRecord(m.cfg, s, *m.world, {m.tp(), m.dp(), m.pp()}, parameterCount(m.stage->module()), m.bytes)
      .add("pp_partition", listOf(m.stage->partition()));
}

JsonObject LayerwiseStrategy::stepRecord(const LoopStatus& s) {
  Impl& m = *impl_;
  const StepStats& w = s.window;
  JsonObject r = stepRecordHead(s, m.cfg.train.batchSize);
  r.add("tokens_per_s", samplesPerSecond(w, m.cfg.train.batchSize) * static_cast<double>(m.gpt.context))
      .add("bytes_sent", s.windowBytes)
      .add("grad_bytes", w.gradBytes)
      .add("pp_bytes", w.modelParallelBytes)
      .add("comm_s", w.commSeconds)
      .add("compute_s", w.computeSeconds);
  // Pipelined: each stage's mean bubble and its peak stored micro-batches over the window (the
  // same numbers on every rank).
  if (m.bubbleSteps > 0) {
    for (size_t st = 0; st < m.bubbleSum.size(); ++st)
      r.add(str("bubble_stage", st), m.bubbleSum[st] / static_cast<double>(m.bubbleSteps));
    for (size_t st = 0; st < m.peakStored.size(); ++st) r.add(str("peak_stored_stage", st), m.peakStored[st]);
    if (m.cpuWaitKnown)
      for (size_t st = 0; st < m.cpuWaitSum.size(); ++st)
        r.add(str("cpu_wait_stage", st), m.cpuWaitSum[st] / static_cast<double>(m.bubbleSteps));
    m.bubbleSum.assign(m.bubbleSum.size(), 0.0);
    m.cpuWaitSum.assign(m.cpuWaitSum.size(), 0.0);
    m.peakStored.assign(m.peakStored.size(), 0);
    m.bubbleSteps = 0;
  }
  return r;
}

void LayerwiseStrategy::evalFields(JsonObject& record, const LoopStatus& s) { record.add("bytes_sent", s.bytesSinceStart); }

JsonObject LayerwiseStrategy::summaryRecord(const LoopStatus& s, TrainResult& result) {
  Impl& m = *impl_;
  fillSummaryResult(s, m.cfg.train.batchSize, result);
  JsonObject r = gptSummaryRecord(m.cfg, s, result, *m.world, {m.tp(), m.dp(), m.pp()}, "pp_bytes_per_step",
                                  optimizerStateBytes(*m.optimizer));
  if (m.runCpuWaitSteps > 0) {
    // The stages' mean share of pipeline time with no free core over the run; a run that spent
    // a tenth of it waiting for the CPU says so once, with what to change.
    const double share = m.runCpuWait / static_cast<double>(m.runCpuWaitSteps);
    r.add("cpu_wait", share);
    const std::string warning = cpuWaitWarning(share, m.world->size(), torch::get_num_threads(),
                                               std::max(1u, std::thread::hardware_concurrency()));
    if (m.world->rank() == 0 && !warning.empty()) CHORUS_WARN(warning);
  }
  return r;
}

}  // namespace chorus::train
