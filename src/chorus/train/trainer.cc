// The training loop behind `chorus train` (see trainer.h).
#include "chorus/train/trainer.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <iostream>
#include <mutex>
#include <thread>

#include "chorus/amp/autocast.h"
#include "chorus/amp/grad_scaler.h"
#include "chorus/compress/dgc.h"
#include "chorus/compress/quantize.h"
#include "chorus/compress/sparse.h"
#include "chorus/parallel/data/compression_hooks.h"
#include "chorus/common/error.h"
#include "chorus/parallel/data/ddp.h"
#include "chorus/parallel/data/sampler.h"
#include "chorus/train/checkpoint.h"
#include "chorus/train/datasets.h"
#include "chorus/train/evaluate.h"
#include "chorus/train/metrics.h"
#include "chorus/train/models.h"
#include "chorus/train/optim.h"
#include "chorus/train/progress.h"
#include "chorus/train/ps_trainer.h"
#include "chorus/train/trace.h"

namespace chorus::train {
namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

comm::AllreduceAlgo parseAlgo(const std::string& s) {
  if (s == "auto") return comm::AllreduceAlgo::kAuto;
  if (s == "ring") return comm::AllreduceAlgo::kRing;
  if (s == "hd") return comm::AllreduceAlgo::kHalvingDoubling;
  if (s == "tree") return comm::AllreduceAlgo::kTree;
  if (s == "direct") return comm::AllreduceAlgo::kDirect;
  if (s == "mpi") return comm::AllreduceAlgo::kMpi;
  throw ConfigError(str("ddp.algo = \"", s, "\" is not allowed; the choices are: auto, ring, hd, tree, direct, mpi"));
}

template <class T>
void allreduceInPlace(comm::ProcessGroup& g, T* data, size_t n, DType dtype, ReduceOp op) {
  comm::AllreduceOptions o;
  o.data = data;
  o.count = n;
  o.dtype = dtype;
  o.op = op;
  g.allreduce(o);
}

// The compression hook a config asks for (none: no hook), and DGC's codec for its epoch.
struct CompressionSetup {
  std::shared_ptr<parallel::StatefulHook> hook;
  std::shared_ptr<compress::DgcCodec> dgc;
};

CompressionSetup makeCompression(const CompressionConfig& c, int world) {
  CompressionSetup s;
  const uint64_t seed = c.seed * 0x9E3779B97F4A7C15ull + 1;
  if (c.method == "none" || c.method == "fp16" || c.method == "bf16") return s;  // 16-bit: castHook, below
  if (c.method == "powersgd") {
    s.hook = parallel::powerSgdHook(c.rank, seed, c.denseSteps);
    return s;
  }
  std::shared_ptr<compress::Codec> codec;
  if (c.method == "dgc") {
    compress::DgcOptions o;
    o.momentum = c.momentum;
    o.maxNorm = c.clipNorm;
    o.worldSize = world;
    o.layerwise = c.layerwise;
    o.sparsitySchedule.clear();
    for (int64_t e = 0; e < c.warmupEpochs; ++e) o.sparsitySchedule.push_back(std::min(c.sparsity, 1 - std::pow(0.25, e + 1)));
    o.sparsitySchedule.push_back(c.sparsity);
    s.dgc = std::make_shared<compress::DgcCodec>(o);
    codec = s.dgc;
  } else if (c.method == "topk" || c.method == "topk_sampled" || c.method == "randomk") {
    codec = compress::makeSparse(c.method, c.ratio, c.layerwise, {c.errorFeedback, c.residualDecay});
  } else if (c.method == "threshold") {
    codec = compress::makeSparse(c.method, c.threshold);
  } else {
    codec = compress::makeQuantizer(c.method, c.method == "qsgd" ? c.levels : 0, c.errorFeedback);
  }
  s.hook = parallel::codecHook(codec, seed, c.denseSteps);
  return s;
}

// The dtype of dense gradients on the wire: compression.method fp16/bf16 (a 16-bit all-reduce)
// or ddp.comm_dtype (validation allows only one of them to differ from the default).
std::string wireDtype(const Config& cfg) {
  const std::string& m = cfg.compression.method;
  return m == "fp16" || m == "bf16" ? m : cfg.ddp.commDtype;
}

// Every rank's bytes, in rank order, on every rank (allgather of sizes, then allgatherv).
std::vector<std::string> allgatherBytes(comm::ProcessGroup& g, const std::string& mine) {
  std::vector<uint64_t> sizes(g.size());
  uint64_t len = mine.size();
  comm::AllgatherOptions so;
  so.input = &len;
  so.output = sizes.data();
  so.count = 1;
  so.dtype = DType::kInt64;
  g.allgather(so);
  std::vector<size_t> counts(sizes.begin(), sizes.end());
  size_t total = 0;
  for (auto c : counts) total += c;
  std::string all(total, '\0');
  comm::AllgatherOptions ao;
  ao.input = mine.data();
  ao.output = all.data();
  ao.count = mine.size();
  ao.counts = counts;
  ao.dtype = DType::kUInt8;
  g.allgather(ao);
  std::vector<std::string> out;
  size_t off = 0;
  for (auto c : counts) {
    out.push_back(all.substr(off, c));
    off += c;
  }
  return out;
}

// Codec state (residuals, momentum, Q, RNG) differs per rank: each rank encodes its own as a
// tensor table (data only, like the checkpoint around it), and rank 0's checkpoint keeps them
// all as "codec.rank<r>" byte tensors. Entries: b<bucket>_t_<name> (tensors), b<bucket>_s_<name>
// (a float64 [1]), b<bucket>_rng (an int64 [1]).
std::string serializeCodecState(parallel::StatefulHook& hook) {
  std::vector<std::pair<std::string, torch::Tensor>> entries;
  for (auto& [bucket, cs] : hook.states()) {
    for (auto& [name, t] : cs.tensors) entries.emplace_back(str("b", bucket, "_t_", name), t);
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
      cs.tensors[rest.substr(2)] = t;
    } else {
      cs.scalars[rest.substr(2)] = t.item<double>();
    }
  }
}

// A checkpoint folder holds one line of runs: a run and the runs that resumed it (docs/train.md,
// "Checkpoint folders"). Rank 0 calls this before anything is loaded or written. It removes the
// temporaries of writers that died mid-save; then, when the folder holds no checkpoint or the run
// continues its newest, it returns "" and sets `inherited` to the folder's checkpoints (the line
// this run continues). Otherwise the checkpoints are another run's: with `overwrite` it deletes
// them (all but the one resumed from, which is inherited) and returns ""; without, it returns the
// message that refuses to start.
std::string claimCheckpointFolder(const fs::path& dir, const std::string& resumePath, bool overwrite,
                                  std::ostream& out, std::vector<std::string>* inherited) {
  for (const auto& tmp : removeStaleTemporaries(dir.string()))
    out << "removed " << tmp << ", an unfinished checkpoint of a writer that is gone\n";
  const std::vector<std::string> existing = listCheckpoints(dir.string());
  auto same = [](const std::string& a, const std::string& b) {
    std::error_code ec;
    return fs::equivalent(a, b, ec);
  };
  if (existing.empty() || (!resumePath.empty() && same(resumePath, existing.back()))) {
    *inherited = existing;
    return "";
  }
  if (overwrite) {
    size_t removed = 0;
    for (const auto& f : existing) {
      if (!resumePath.empty() && same(resumePath, f)) {
        inherited->push_back(f);
        continue;
      }
      std::error_code ec;
      fs::remove(f, ec);
      if (ec) throw Error(str("output.overwrite: cannot remove ", f, ": ", ec.message()));
      ++removed;
    }
    out << "removed " << removed << " checkpoint(s) of an earlier run from " << dir.string()
        << " (output.overwrite = true)\n";
    return "";
  }
  const std::string what = resumePath.empty()
                               ? std::string("this run starts fresh")
                               : str("this run continues ", resumePath, ", which is not the newest of them");
  return str(dir.string(), " holds ", existing.size(), " checkpoint(s) of another run (the newest: ",
             fs::path(existing.back()).filename().string(), "), and ", what,
             "; its own checkpoints would be mixed with them. Choose one: --resume to continue from the newest; "
             "another output.dir (--set output.dir=...); or --set output.overwrite=true to delete them",
             resumePath.empty() ? "" : " (the file resumed from is kept)");
}

torch::Tensor bytesTensor(const std::string& s) {
  return torch::from_blob(const_cast<char*>(s.data()), {static_cast<int64_t>(s.size())}, torch::kUInt8).clone();
}

// Divergence (docs/train.md, "Divergence"): whether every gradient the optimizer holds is finite.
bool gradientsFinite(torch::optim::Optimizer& opt) {
  std::vector<torch::Tensor> grads;
  for (auto& group : opt.param_groups()) {
    for (auto& p : group.params()) grads.push_back(p.grad());
  }
  return allFinite(grads);
}

// The loss scale below which an fp16 run whose gradients still overflow has diverged: even
// gradients scaled down 2^24 times exceed float16's range (or are NaN).
constexpr double kMinLossScale = 1.0 / (1 << 24);

// A point-to-point tag nothing sends on: non-zero ranks wait on it for rank 0 to leave.
constexpr uint32_t kDivergenceTag = 0x44495645;  // "DIVE"

// What the divergence check saw in one step, the same on every rank after its all-reduce.
struct Divergence {
  bool loss = false;      // the loss was not finite on some rank
  bool gradient = false;  // the gradient the optimizer would apply was not finite
  bool scale = false;     // fp16: the loss scaler backed off below kMinLossScale
};

// Every rank calls this at the same step (the decision was all-reduced); it gathers each rank's
// loss (a collective) and throws DivergenceError. Rank 0's message names the step, the ranks,
// the last good checkpoint and what to change; the others' say that rank 0 reports it, so that
// `chorus train` prints it once.
[[noreturn]] void throwDivergence(comm::ProcessGroup& g, const Config& cfg, const Divergence& what, double myLoss,
                                  int64_t step, int64_t epoch, int64_t stepInEpoch, int64_t stepsPerEpoch, double lr,
                                  double lossScale, const std::string& lastGood, const std::string& ckptDir) {
  std::vector<double> losses(static_cast<size_t>(g.size()));
  comm::AllgatherOptions o;
  o.input = &myLoss;
  o.output = losses.data();
  o.count = 1;
  o.dtype = DType::kFloat64;
  g.allgather(o);
  std::vector<int> badRanks;
  for (int r = 0; r < g.size(); ++r) {
    if (!std::isfinite(losses[static_cast<size_t>(r)])) badRanks.push_back(r);
  }
  const int firstBad = badRanks.empty() ? -1 : badRanks.front();
  const std::string head = str("training diverged at step ", step, " (epoch ", epoch + 1, ", step ", stepInEpoch + 1,
                               " of ", stepsPerEpoch, ")");
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
  m << head << ": ";
  // "rank 1: nan, rank 3: inf": the ranks whose loss is (not) finite, the first 8 of them.
  auto lossList = [&](bool finite) {
    std::string s;
    int listed = 0, more = 0;
    for (int r = 0; r < g.size(); ++r) {
      const double v = losses[static_cast<size_t>(r)];
      if (std::isfinite(v) != finite) continue;
      if (listed++ < 8) {
        s += str(s.empty() ? "" : ", ", "rank ", r, ": ", std::isnan(v) ? std::string("nan") : str(v));
      } else {
        ++more;
      }
    }
    return more > 0 ? str(s, " and ", more, " more") : s;
  };
  if (what.loss) {
    if (badRanks.size() == static_cast<size_t>(g.size())) {
      m << "the loss is not finite on every rank (" << lossList(false) << ")";
    } else {
      m << "the loss is not finite on " << lossList(false) << " (finite on " << lossList(true) << ")";
    }
    if (what.gradient) m << "; nor is the gradient";
  } else if (what.gradient) {
    m << "the gradient the optimizer would apply (after the all-reduce"
      << (cfg.compression.method == "none" ? "" : " and decompression")
      << ", the same on every rank) is not finite, while the loss is finite on every rank (" << lossList(true) << ")";
  } else if (what.scale) {
    m << "the fp16 gradients overflow at every loss scale: the GradScaler skipped step after step and backed off to "
      << lossScale << " (losses " << lossList(true) << ")";
  }
  m << ". The step was not applied.\n";
  if (!lastGood.empty()) {
    m << "  last good checkpoint: " << lastGood
      << "; after the change below, --resume continues from it (the newest in " << ckptDir << ")\n";
  } else {
    m << "  no checkpoint was written before this step, so the run has to start over (output.checkpoint_every = N "
         "keeps one every N steps)\n";
  }
  m << "  what to change: a lower optim.lr (" << lr << " at this step";
  if (cfg.schedule.warmupSteps > 0) m << "; or a longer schedule.warmup_steps, now " << cfg.schedule.warmupSteps;
  m << ")";
  const auto& c = cfg.compression;
  if (c.method == "topk" || c.method == "topk_sampled" || c.method == "randomk") {
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
  throw DivergenceError(m.str(), step, firstBad);
}

// Gathers every rank's trace events to rank 0, which writes the file.
void writeTrace(const std::string& path, const Tracer& tracer, comm::ProcessGroup& g) {
  std::vector<std::string> all = allgatherBytes(g, tracer.eventsJson());
  if (g.rank() != 0) return;
  std::vector<std::string> bodies;
  for (auto& b : all) {
    if (!b.empty()) bodies.push_back(std::move(b));
  }
  writeChromeTrace(path, bodies);
}

}  // namespace

void setWorkerThreads(const TrainLoopConfig& cfg, int localWorldSize) {
  int64_t threads = cfg.threads;
  if (threads == 0) {
    int64_t cores = std::max(1u, std::thread::hardware_concurrency());
    threads = std::max<int64_t>(1, cores / std::max(1, localWorldSize));
  }
  torch::set_num_threads(static_cast<int>(threads));
}

StepPlan planSteps(const Config& cfg, int64_t datasetSize, int rank, int world) {
  const TrainLoopConfig& t = cfg.train;
  const int64_t localBatch = t.batchSize / world;
  parallel::DistributedSampler sampler(datasetSize, rank, world, t.shuffle, t.seed, t.dropLast);
  const int64_t shard = sampler.shardSize();
  const int64_t steps = t.dropLast ? shard / localBatch : (shard + localBatch - 1) / localBatch;
  if (steps == 0)
    throw ConfigError(str("train.batch_size = ", t.batchSize, " leaves no full batch in the ", shard,
                          " samples per worker; lower it or turn train.drop_last off"));
  int64_t total = steps * t.epochs;
  if (t.maxSteps > 0) total = std::min(total, t.maxSteps);
  return StepPlan{localBatch, std::move(sampler), shard, steps, total,
                  LrSchedule(cfg.schedule, cfg.optim.lr, total, steps)};
}

double stragglerSleep(const TrainLoopConfig& cfg, int worker, double computeSeconds) {
  if (std::find(cfg.stragglerWorkers.begin(), cfg.stragglerWorkers.end(), worker) == cfg.stragglerWorkers.end())
    return 0.0;
  const double seconds = cfg.stragglerDelayMs / 1000.0 + (cfg.stragglerFactor - 1.0) * std::max(0.0, computeSeconds);
  if (seconds <= 0) return 0.0;
  const auto start = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double peakRssMb() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

bool allFinite(const std::vector<torch::Tensor>& tensors) {
  torch::NoGradGuard noGrad;
  std::vector<torch::Tensor> sums;
  for (const auto& t : tensors) {
    if (t.defined() && t.numel() > 0) sums.push_back(t.sum());
  }
  if (sums.empty() || std::isfinite(torch::stack(sums).sum().item<double>())) return true;
  // The sums are in the tensors' own dtype, which huge finite entries can overflow too: only
  // then, look at every entry.
  for (const auto& t : tensors) {
    if (t.defined() && t.numel() > 0 && !torch::isfinite(t).all().item<bool>()) return false;
  }
  return true;
}

TrainResult train(const Config& cfg, std::shared_ptr<comm::ProcessGroup> group, const TrainOptions& opts) {
  if (cfg.ps.servers > 0) return trainWithServers(cfg, std::move(group), opts);
  comm::ProcessGroup& g = *group;
  const int rank = g.rank(), world = g.size();
  const bool lead = rank == 0;
  std::ostream& out = opts.out ? *opts.out : std::cout;
  const amp::Precision prec = amp::parsePrecision(cfg.precision);

  setWorkerThreads(cfg.train, opts.localWorldSize);

  Dataset trainSet = loadDataset(cfg.data.dataset, cfg.data.path, true, cfg.data.limitTrain);
  Dataset testSet;
  if (cfg.train.eval) testSet = loadDataset(cfg.data.dataset, cfg.data.path, false, cfg.data.limitTest);

  // Seeding and drawing the initial weights go together: torch's generator is per process,
  // and ranks that are threads of one process (tests) must not interleave here.
  static std::mutex initMu;
  std::unique_lock<std::mutex> initLock(initMu);
  torch::manual_seed(cfg.train.seed);
  auto model = makeModel(cfg.model, trainSet.images.size(1), trainSet.images.size(2), trainSet.images.size(3),
                         trainSet.classes);
  initLock.unlock();
  parallel::DDPOptions dopts;
  dopts.bucketCapBytes = static_cast<size_t>(cfg.ddp.bucketMb * 1024 * 1024);
  dopts.findUnusedParameters = cfg.ddp.findUnused;
  dopts.broadcastBuffers = cfg.ddp.broadcastBuffers;
  comm::AllreduceAlgo algo = parseAlgo(cfg.ddp.algo);
  CompressionSetup compression = makeCompression(cfg.compression, world);
  if (compression.hook) {
    dopts.hook = compression.hook;
    dopts.rebuildBuckets = false;  // codec state is kept per bucket: keep the layout fixed
  } else if (const std::string wire = wireDtype(cfg); wire == "fp16") {
    dopts.hook = parallel::castHook(at::kHalf, algo);
  } else if (wire == "bf16") {
    dopts.hook = parallel::castHook(at::kBFloat16, algo);
  } else {
    dopts.hook = parallel::allreduceHook(algo);
  }
  parallel::DistributedDataParallel ddp(model, group, dopts);

  auto optimizer = makeOptimizer(cfg.optim, model->parameters());
  amp::GradScalerOptions sopts;
  sopts.enabled = prec == amp::Precision::kFp16;
  sopts.initScale = cfg.amp.initScale;
  sopts.growthFactor = cfg.amp.growthFactor;
  sopts.backoffFactor = cfg.amp.backoffFactor;
  sopts.growthInterval = cfg.amp.growthInterval;
  amp::GradScaler scaler(sopts, group);

  StepPlan plan = planSteps(cfg, trainSet.size(), rank, world);
  const int64_t localBatch = plan.localBatch, shard = plan.shard, stepsPerEpoch = plan.stepsPerEpoch,
                totalSteps = plan.totalSteps;
  parallel::DistributedSampler& sampler = plan.sampler;
  const LrSchedule& schedule = plan.schedule;

  TrainResult result;
  const fs::path dir = cfg.output.dir;
  const fs::path ckptDir = dir / "checkpoints";
  result.checkpointDir = ckptDir.string();
  result.metricsPath = (dir / "metrics.jsonl").string();

  TrainState state;
  std::string resumePath = opts.resumeFrom;
  if (opts.resume && resumePath.empty()) {
    resumePath = latestCheckpoint(ckptDir.string());
    if (resumePath.empty()) {
      throw InvalidArgument(str("--resume: no checkpoint in ", ckptDir.string(),
                                "; run without --resume to start fresh, or name a file with --resume-from"));
    }
  }
  // Rank 0 looks at the checkpoint folder, and every rank goes on or stops with it.
  std::vector<std::string> inherited;
  std::string refusal;
  if (lead) refusal = claimCheckpointFolder(ckptDir, resumePath, cfg.output.overwrite, out, &inherited);
  int64_t refused = refusal.empty() ? 0 : 1;
  allreduceInPlace(g, &refused, 1, DType::kInt64, ReduceOp::kMax);
  if (refused != 0) {
    throw ConfigError(lead ? refusal
                           : str(ckptDir.string(), " holds checkpoints of another run; rank 0's message says what to do"));
  }
  CheckpointHistory history(std::move(inherited));

  if (!resumePath.empty()) {
    state = loadCheckpoint(resumePath, *model, *optimizer);
    auto sc = [&](const char* k, double d) { return state.scalars.count(k) ? state.scalars.at(k) : d; };
    scaler.restore(sc("amp.scale", cfg.amp.initScale), static_cast<int64_t>(sc("amp.good_steps", 0)),
                   static_cast<int64_t>(sc("amp.skipped_steps", 0)));
    if (compression.hook) {
      auto it = state.tensors.find(str("codec.rank", rank));
      if (it == state.tensors.end()) {
        throw InvalidArgument(str(resumePath, " holds no compression state for rank ", rank,
                                  "; resume with the same compression.method and worker count it was written with"));
      }
      torch::Tensor blob = it->second.contiguous();
      if (blob.scalar_type() != torch::kUInt8 || blob.dim() != 1)
        throw Error(str("checkpoint ", resumePath, ": entry 'tensors/", it->first, "' is not a byte string; the file is corrupt"));
      restoreCodecState(*compression.hook, std::string(static_cast<const char*>(blob.data_ptr()), blob.numel()),
                        str("checkpoint ", resumePath, ", entry 'tensors/", it->first, "'"));
    }
  }

  std::unique_ptr<MetricsLog> metrics;
  if (lead) {
    fs::create_directories(dir);
    std::ofstream(dir / "config.toml") << toToml(cfg);
    metrics = std::make_unique<MetricsLog>(result.metricsPath, /*append=*/!resumePath.empty());
    metrics->write(JsonObject()
                      .add("event", "start")
                      .add("world", world)
                      .add("model", cfg.model.name)
                      .add("params", parameterCount(*model))
                      .add("precision", cfg.precision)
                      .add("comm_dtype", wireDtype(cfg))
                      .add("transport", std::string(g.transportName()))
                      .add("steps_per_epoch", stepsPerEpoch)
                      .add("total_steps", totalSteps)
                      .add("resumed_from", resumePath)
                      .add("resumed_step", state.globalStep));
    if (!resumePath.empty()) out << "resuming from " << resumePath << " at step " << state.globalStep << "\n";
  }

  ProgressBar bar(out, lead ? progressModeFor(cfg.output.progress, STDOUT_FILENO) : ProgressMode::kNone,
                  cfg.train.epochs, stepsPerEpoch, cfg.train.logEvery);
  g.barrier();
  const Clock::time_point origin = Clock::now();
  Tracer tracer(rank, origin);
  tracer.setEnabled(!opts.tracePath.empty());

  auto saveCkpt = [&](const TrainState& s) {
    std::vector<std::string> codecBlobs;
    if (compression.hook) codecBlobs = allgatherBytes(g, serializeCodecState(*compression.hook));
    if (lead) {
      std::string path = (ckptDir / checkpointName(s.globalStep)).string();
      TrainState st = s;
      st.scalars["amp.scale"] = scaler.scaleValue();
      st.scalars["amp.good_steps"] = static_cast<double>(scaler.goodSteps());
      st.scalars["amp.skipped_steps"] = static_cast<double>(scaler.skippedSteps());
      for (size_t r = 0; r < codecBlobs.size(); ++r) st.tensors[str("codec.rank", r)] = bytesTensor(codecBlobs[r]);
      saveCheckpoint(path, *model, *optimizer, st);
      history.add(path, cfg.output.keep);  // only this run's line, oldest written first; never `path`
      result.lastCheckpoint = path;
    }
  };

  double trainSeconds = 0, commSeconds = 0, overlapSeconds = 0, computeSeconds = 0;
  double windowLoss = 0;
  int64_t windowSteps = 0, stepsThisRun = 0;
  uint64_t bytesAtWindow = g.bytesSent(), bytesAtStart = g.bytesSent();
  // What a dense ring all-reduce of the same buckets would send: 2 (W-1)/W of their bytes.
  const double denseShare = world > 1 ? 2.0 * (world - 1) / world : 0.0;
  double windowDense = 0, totalDense = 0;
  // Gradient traffic alone: what rank 0 sends during backward (the buckets' reductions), not
  // the buffer broadcast of forward or the evaluation.
  uint64_t windowGrad = 0, totalGrad = 0;
  double windowComm = 0, windowCompute = 0, windowTrain = 0;
  double recentRate = 0, lastCompute = 0;
  EvalResult lastEval{-1, -1};
  int64_t globalStep = state.globalStep;
  bool done = globalStep >= totalSteps;

  for (int64_t epoch = state.epoch; epoch < cfg.train.epochs && !done; ++epoch) {
    sampler.setEpoch(epoch);
    if (compression.dgc) compression.dgc->setEpoch(epoch);
    const std::vector<int64_t> order = sampler.indices();
    const torch::Tensor orderT = torch::tensor(order, torch::kLong);
    const int64_t firstStep = epoch == state.epoch ? state.stepInEpoch : 0;
    int64_t doneInEpoch = firstStep;
    for (int64_t step = firstStep; step < stepsPerEpoch; ++step) {
      if (globalStep >= totalSteps || (opts.stopAfter > 0 && stepsThisRun >= opts.stopAfter)) {
        done = true;
        break;
      }
      const Clock::time_point t0 = Clock::now();
      // A straggler is slower by its last step's compute time times (factor - 1), plus a delay.
      const double slept = stragglerSleep(cfg.train, rank, lastCompute);
      const int64_t begin = step * localBatch, len = std::min(localBatch, shard - begin);
      torch::Tensor idx = orderT.narrow(0, begin, len);
      torch::Tensor x = trainSet.images.index_select(0, idx), y = trainSet.labels.index_select(0, idx);
      setLearningRate(*optimizer, schedule.at(globalStep));
      optimizer->zero_grad();
      torch::Tensor loss;
      {
        amp::Autocast ac(prec, torch::kCPU);
        torch::Tensor logits = ddp.forward(x);
        loss = torch::nn::functional::cross_entropy(logits.to(torch::kFloat), y);
      }
      const Clock::time_point t1 = Clock::now();
      const uint64_t sentBeforeBackward = g.bytesSent();
      scaler.scale(loss).backward();
      const uint64_t gradBytes = g.bytesSent() - sentBeforeBackward;
      const Clock::time_point t2 = Clock::now();
      // Divergence: the loss is this rank's; the gradient is what the optimizer would apply
      // (after DDP's all-reduce, or the codec's decoding: the same on every rank). One 2-entry
      // all-reduce gives every rank the same decision at the same step. Under fp16 a
      // non-finite gradient is the GradScaler's to handle (it skips the step and backs off),
      // until the scale falls below kMinLossScale.
      const double lossValue = loss.item<double>();
      int32_t badFlags[2] = {std::isfinite(lossValue) ? 0 : 1,
                             prec == amp::Precision::kFp16 || gradientsFinite(*optimizer) ? 0 : 1};
      if (world > 1) allreduceInPlace(g, badFlags, 2, DType::kInt32, ReduceOp::kMax);
      auto diverge = [&](const Divergence& what) {
        const std::string lastGood = !result.lastCheckpoint.empty() ? result.lastCheckpoint : resumePath;
        if (lead) {
          bar.endEpoch("");
          metrics->write(JsonObject()
                             .add("event", "diverged")
                             .add("step", globalStep + 1)
                             .add("epoch", epoch)
                             .add("loss_finite", !what.loss)
                             .add("grad_finite", !what.gradient)
                             .add("loss_scale", scaler.scaleValue())
                             .add("last_checkpoint", lastGood));
        }
        throwDivergence(g, cfg, what, lossValue, globalStep + 1, epoch, step, stepsPerEpoch, schedule.at(globalStep),
                        scaler.scaleValue(), lastGood, ckptDir.string());
      };
      if (badFlags[0] != 0 || badFlags[1] != 0) diverge({badFlags[0] != 0, badFlags[1] != 0, false});
      const bool stepped = scaler.step(*optimizer);
      scaler.update();
      if (!stepped) {
        ++result.skippedSteps;
        if (scaler.scaleValue() < kMinLossScale) diverge({false, false, true});
      }
      const Clock::time_point t3 = Clock::now();
      ++globalStep;
      ++stepsThisRun;
      ++doneInEpoch;

      const parallel::DDPStats& st = ddp.stats();
      const double stepSeconds = std::chrono::duration<double>(t3 - t0).count();
      trainSeconds += stepSeconds;
      commSeconds += st.commSeconds;
      overlapSeconds += st.overlapSeconds;
      const double compute = stepSeconds - st.waitSeconds;
      lastCompute = compute - slept;
      computeSeconds += compute;
      windowComm += st.commSeconds;
      windowDense += denseShare * static_cast<double>(st.bytesReduced);
      totalDense += denseShare * static_cast<double>(st.bytesReduced);
      windowGrad += gradBytes;
      totalGrad += gradBytes;
      windowCompute += compute;
      windowTrain += stepSeconds;
      windowLoss += lossValue;
      ++windowSteps;
      if (tracer.enabled()) {
        tracer.span("compute", "forward", t0, t1, str("{\"step\":", globalStep, "}"));
        tracer.span("compute", "backward", t1, st.backwardEnd);
        if (st.waitSeconds > 0) tracer.span("compute", "wait for all-reduce", st.backwardEnd, t2);
        tracer.span("compute", "optimizer", t2, t3);
        for (const auto& s : st.spans) tracer.span("comm", str("allreduce bucket ", s.bucket), s.start, s.end);
      }

      const bool lastOfEpoch = step + 1 == stepsPerEpoch || globalStep >= totalSteps;
      if (windowSteps >= cfg.train.logEvery || lastOfEpoch) {
        recentRate = windowTrain > 0 ? static_cast<double>(windowSteps * cfg.train.batchSize) / windowTrain : 0;
        if (lead) {
          uint64_t bytes = g.bytesSent();
          metrics->write(JsonObject()
                            .add("event", "step")
                            .add("step", globalStep)
                            .add("epoch", epoch)
                            .add("loss", windowLoss / static_cast<double>(windowSteps))
                            .add("lr", schedule.at(globalStep - 1))
                            .add("samples_per_s", recentRate)
                            .add("bytes_sent", bytes - bytesAtWindow)
                            .add("grad_bytes", windowGrad)
                            .add("compression_ratio", windowGrad > 0 ? windowDense / static_cast<double>(windowGrad) : 0.0)
                            .add("comm_s", windowComm)
                            .add("compute_s", windowCompute)
                            .add("loss_scale", scaler.scaleValue()));
          bytesAtWindow = bytes;
        }
        windowLoss = windowComm = windowCompute = windowTrain = windowDense = 0;
        windowGrad = 0;
        windowSteps = 0;
      }
      if (lead) {
        double eta = recentRate > 0 ? static_cast<double>((totalSteps - globalStep) * cfg.train.batchSize) / recentRate : 0;
        bar.update(epoch, step + 1, lossValue, recentRate, eta);
      }
      if (cfg.output.checkpointEvery > 0 && globalStep % cfg.output.checkpointEvery == 0 && !lastOfEpoch) {
        saveCkpt({epoch, step + 1, globalStep, {}, {}});
      }
    }
    // End of the epoch, or of max_steps inside it.
    const bool epochComplete = doneInEpoch == stepsPerEpoch;
    const bool stopped = opts.stopAfter > 0 && stepsThisRun >= opts.stopAfter;
    const bool reachedEnd = globalStep >= totalSteps || stopped;
    if (cfg.train.eval && (epochComplete || reachedEnd)) {
      lastEval = evaluate(model, testSet, &g, prec);
      if (lead) {
        metrics->write(JsonObject()
                          .add("event", "eval")
                          .add("epoch", epoch)
                          .add("step", globalStep)
                          .add("test_acc", lastEval.accuracy)
                          .add("test_loss", lastEval.loss)
                          .add("train_s", trainSeconds)
                          .add("bytes_sent", g.bytesSent() - bytesAtStart));
        bar.endEpoch(str("epoch ", epoch + 1, "/", cfg.train.epochs, ": test accuracy ", lastEval.accuracy,
                         ", test loss ", lastEval.loss));
      }
    } else if (lead) {
      bar.endEpoch(str("epoch ", epoch + 1, "/", cfg.train.epochs, " done"));
    }
    const bool every = cfg.output.checkpointEvery > 0;
    if ((cfg.output.checkpointEpoch && epochComplete) || (every && globalStep % cfg.output.checkpointEvery == 0) ||
        (reachedEnd && (cfg.output.checkpointEpoch || every))) {
      saveCkpt(epochComplete ? TrainState{epoch + 1, 0, globalStep, {}, {}} : TrainState{epoch, doneInEpoch, globalStep, {}, {}});
    }
    if (reachedEnd) done = true;
  }

  // Summary: throughput, memory and overlap over all ranks.
  const double rss = peakRssMb();
  double agg[3] = {rss, rss, trainSeconds};  // max rss, summed rss, slowest rank's training time
  allreduceInPlace(g, agg, 1, DType::kFloat64, ReduceOp::kMax);
  allreduceInPlace(g, agg + 1, 1, DType::kFloat64, ReduceOp::kSum);
  allreduceInPlace(g, agg + 2, 1, DType::kFloat64, ReduceOp::kMax);
  if (!opts.tracePath.empty()) writeTrace(opts.tracePath, tracer, g);

  result.steps = stepsThisRun;
  result.globalStep = globalStep;
  result.trainSeconds = agg[2];
  result.samplesPerSec = agg[2] > 0 ? static_cast<double>(stepsThisRun * cfg.train.batchSize) / agg[2] : 0;
  result.testAccuracy = lastEval.accuracy;
  result.testLoss = lastEval.loss;
  result.commSeconds = commSeconds;
  result.overlapFraction = commSeconds > 0 ? overlapSeconds / commSeconds : 0;
  if (lead) {
    metrics->write(JsonObject()
                      .add("event", "summary")
                      .add("world", world)
                      .add("model", cfg.model.name)
                      .add("precision", cfg.precision)
                      .add("steps", stepsThisRun)
                      .add("global_step", globalStep)
                      .add("train_s", result.trainSeconds)
                      .add("samples_per_s", result.samplesPerSec)
                      .add("test_acc", result.testAccuracy)
                      .add("test_loss", result.testLoss)
                      .add("comm_s", commSeconds)
                      .add("compute_s", computeSeconds)
                      .add("overlap_frac", result.overlapFraction)
                      .add("bytes_sent", g.bytesSent())
                      .add("bytes_per_step", stepsThisRun > 0 ? static_cast<double>(g.bytesSent() - bytesAtStart) / stepsThisRun : 0.0)
                      .add("compression", cfg.compression.method)
                      .add("grad_bytes_per_step", stepsThisRun > 0 ? static_cast<double>(totalGrad) / stepsThisRun : 0.0)
                      .add("compression_ratio", totalGrad > 0 ? totalDense / static_cast<double>(totalGrad) : 0.0)
                      .add("skipped_steps", result.skippedSteps)
                      .add("peak_rss_mb_max", agg[0])
                      .add("peak_rss_mb_mean", agg[1] / world)
                      .add("last_checkpoint", result.lastCheckpoint));
  }
  return result;
}

}  // namespace chorus::train
