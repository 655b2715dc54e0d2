#include "train_command.h"

#include <unistd.h>

#include <filesystem>
#include <iomanip>
#include <iostream>

#include "args.h"
#include "chorus/comm/group.h"
#include "chorus/comm/rendezvous/bootstrap.h"
#include "chorus/common/error.h"
#include "chorus/train/checkpoint.h"
#include "chorus/train/config.h"
#include "chorus/train/datasets.h"
#include "chorus/train/elastic.h"
#include "chorus/train/text.h"
#include "chorus/train/trainer.h"
#include "launch.h"

namespace chorus::tools {

const char* kTrainHelp =
    "usage: chorus train [CONFIG.toml] [flags]\n"
    "\n"
    "Trains the model CONFIG describes (defaults when omitted) with data-parallel workers, or\n"
    "the GPT of configs/gpt.toml on the fortunes text, split over parallel.tp workers as well.\n"
    "\n"
    "flags:\n"
    "  --set KEY=VALUE     override a config key, e.g. --set optim.lr=0.1 (repeatable)\n"
    "  -n, --nproc N       launch N local workers, plus ps.servers parameter servers when\n"
    "                      set (otherwise join the job chorus launch, torchrun variables,\n"
    "                      mpirun or srun describe; alone: 1 worker)\n"
    "  --min M             elastic (with --nproc): a worker that dies does not stop the job;\n"
    "                      the others re-form without it in their own processes and go on\n"
    "                      from the last completed step, as long as M remain. Tensor- and\n"
    "                      pipeline-parallel jobs: M = N, and a replacement takes the failed\n"
    "                      worker's place and its shard from a replica (dp = 1: a copy)\n"
    "  --max X             elastic: at most X workers, replacements included (default N)\n"
    "  --restarts R        elastic: start up to R replacement workers in all. Without --min:\n"
    "                      when a worker fails, stop every worker and start the job again\n"
    "                      from its newest checkpoint, up to R times (torchrun's\n"
    "                      --max-restarts)\n"
    "  --spares S          elastic: keep S of those replacements started, loaded and waiting;\n"
    "                      SIGUSR1 to this process brings one into the running job\n"
    "                      (one more worker, up to --max)\n"
    "  --resume            continue from the newest checkpoint in <output.dir>/checkpoints\n"
    "  --resume-from FILE  continue from this checkpoint\n"
    "  --trace FILE        write a Chrome trace (Perfetto, chrome://tracing) of every rank\n"
    "  --check             validate the config for the worker count and exit\n"
    "  --help-config       list every config key with its type, default and allowed values\n"
    "\n"
    "Writes <output.dir>/metrics.jsonl, config.toml and checkpoints/. Keys: docs/train-config.md.\n";

namespace {

struct TrainArgs {
  std::string config;
  std::vector<std::string> sets;
  int nproc = 0;
  int minWorkers = 0, maxWorkers = 0, restarts = 0, spares = 0;  // elastic (--min, --max, --restarts, --spares)
  bool resume = false, check = false;
  std::string resumeFrom, trace;
};

TrainArgs parseTrainArgs(const std::vector<std::string>& args) {
  TrainArgs t;
  auto value = [&](size_t& i, const std::string& flag) -> std::string {
    const std::string& a = args[i];
    if (a.size() > flag.size() && a[flag.size()] == '=') return a.substr(flag.size() + 1);
    if (i + 1 >= args.size()) throw UsageError(str("chorus train: ", flag, " needs a value. Run `chorus train --help`."));
    return args[++i];
  };
  auto is = [](const std::string& a, const std::string& flag) { return a == flag || a.rfind(flag + "=", 0) == 0; };
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (is(a, "--set")) {
      t.sets.push_back(value(i, "--set"));
    } else if (is(a, "--nproc") || is(a, "-n")) {
      std::string v = value(i, a.rfind("-n", 0) == 0 && a.rfind("--", 0) != 0 ? "-n" : "--nproc");
      int64_t n = 0;
      try {
        n = parseInt(v);
      } catch (const InvalidArgument&) {
        n = 0;
      }
      if (n < 1 || n > 1024) throw UsageError(str("chorus train: --nproc must be a whole number in [1, 1024], not '", v, "'"));
      t.nproc = static_cast<int>(n);
    } else if (is(a, "--min") || is(a, "--max") || is(a, "--restarts") || is(a, "--spares")) {
      const std::string flag = a.substr(0, a.find('='));
      const std::string v = value(i, flag);
      int64_t n = -1;
      try {
        n = parseInt(v);
      } catch (const InvalidArgument&) {
      }
      if (n < (flag == "--restarts" ? 0 : 1) || n > 100000)
        throw UsageError(str("chorus train: ", flag, " must be a whole number", flag == "--restarts" ? " >= 0" : " >= 1",
                             ", not '", v, "'"));
      (flag == "--min" ? t.minWorkers : flag == "--max" ? t.maxWorkers : flag == "--spares" ? t.spares : t.restarts) =
          static_cast<int>(n);
    } else if (a == "--resume") {
      t.resume = true;
    } else if (is(a, "--resume-from")) {
      t.resumeFrom = value(i, "--resume-from");
    } else if (is(a, "--trace")) {
      t.trace = value(i, "--trace");
    } else if (a == "--check") {
      t.check = true;
    } else if (!a.empty() && a[0] == '-') {
      throw UsageError(str("chorus train: unknown flag '", a,
                           "'; the flags are: --set, --nproc (-n), --min, --max, --restarts, --spares, --resume, --resume-from, --trace, --check, "
                           "--help-config. Run `chorus train --help`."));
    } else if (t.config.empty()) {
      t.config = a;
    } else {
      throw UsageError(str("chorus train: one config file only (got '", t.config, "' and '", a, "')"));
    }
  }
  return t;
}

train::Config load(const TrainArgs& t, int world) {
  return t.config.empty() ? train::defaultConfig(t.sets, world) : train::loadConfig(t.config, t.sets, world);
}

// The parameter servers of a job of `processes` ranks: CHORUS_PS_SERVERS (set by `chorus
// launch --servers S` and by `chorus train --nproc`) or else the config's ps.servers; the two
// must agree when both are set. Returns the config, validated for the worker count.
train::Config loadInJob(const TrainArgs& t, int processes) {
  train::Config first = load(t, 0);
  int64_t servers = first.ps.servers;
  if (const char* env = getenv("CHORUS_PS_SERVERS"); env != nullptr && *env != '\0') {
    int64_t s = -1;
    try {
      s = parseInt(env);
    } catch (const InvalidArgument&) {
    }
    if (s < 0) throw ConfigError(str("CHORUS_PS_SERVERS = '", env, "' is not a whole number >= 0"));
    if (servers > 0 && s != servers)
      throw ConfigError(str("the job was launched with ", s, " parameter server(s) (CHORUS_PS_SERVERS) but the config "
                            "says ps.servers = ", servers, "; make them agree"));
    servers = s;
  }
  if (processes - servers < 1)
    throw ConfigError(str("ps.servers = ", servers, " leaves no worker in a job of ", processes,
                          " process(es); launch more processes"));
  std::vector<std::string> sets = t.sets;
  if (servers != first.ps.servers) sets.push_back(str("ps.servers=", servers));
  TrainArgs with = t;
  with.sets = sets;
  return load(with, static_cast<int>(processes - servers));
}

// The dataset's files are there (the training split, and the evaluation split with train.eval),
// so that a missing dataset stops the job before any worker starts. The text corpus's message
// names the package to install (apt install fortunes) and data.path.
void checkDataFiles(const train::Config& cfg) {
  if (cfg.data.dataset == "fortunes") {
    train::textCorpusFiles(cfg.data.path, true);
    return;  // one listing decides both splits
  }
  train::checkDatasetFiles(cfg.data.dataset, cfg.data.path, cfg.train.eval);
}

// --min on a tensor- or pipeline-parallel job (train/elastic.h): the world keeps its size and
// every worker its place, a replacement takes a failed worker's place and receives its shard from
// a data-parallel replica (or, at dp = 1, a neighbour's copy), so there must be replacements and
// a layout that stays put.
void checkElasticModelParallel(const train::Config& cfg, const TrainArgs& t) {
  const train::ParallelConfig& par = cfg.parallel;
  const std::string fallback = "; or give --restarts R without --min, which restarts every worker from the newest "
                               "checkpoint (set output.checkpoint_every)";
  if (t.minWorkers != t.nproc || (t.maxWorkers > 0 && t.maxWorkers != t.nproc))
    throw UsageError(str("chorus train: a tensor- or pipeline-parallel job keeps its world size (each worker holds its ",
                         "own shard; a replacement takes a failed worker's place): give --min ", t.nproc,
                         " (= --nproc) and no other --max"));
  if (t.restarts < 1)
    throw UsageError(str("chorus train: a tensor- or pipeline-parallel job needs a replacement for each failed worker: ",
                         "give --restarts R (and --spares S to keep some of them started and waiting)"));
  if (par.schedule == "pipedream" || par.schedule == "2bw")
    throw UsageError(str("chorus train: --min recovers synchronous pipeline schedules; parallel.schedule = \"",
                         par.schedule, "\" keeps micro-batches and weight versions across steps, which a step's ",
                         "snapshot does not hold: use gpipe, 1f1b, interleaved or zb-h1", fallback));
  if (par.pp > 1 && par.partition.empty() && par.balance == "time")
    throw UsageError(str("chorus train: --min with parallel.balance = \"time\" would profile the stages again when the ",
                         "job re-forms and could cut them elsewhere; give the cut as parallel.partition (the start ",
                         "record's pp_partition) or use balance = \"params\""));
}

// --restarts R without --min (torchrun's strategy): when the job fails, every worker is
// stopped (the launcher does that) and the job starts again from its newest checkpoint, up to R
// times. Not after a divergence (kFatalExitStatus), an interrupt, or a clean end. Restart k
// runs with CHORUS_RESTART_COUNT = k, so a planned CHORUS_FAULT fires once.
int restartWholeJob(const LaunchOptions& lo, const std::vector<std::string>& argv, const train::Config& cfg,
                    int restarts) {
  for (int attempt = 0;; ++attempt) {
    LaunchOptions run = lo;
    run.extraEnv.push_back({"CHORUS_RESTART_COUNT", std::to_string(attempt)});
    std::vector<std::string> a;
    std::string from;
    if (attempt == 0) {
      a = argv;
    } else {
      // The first run's own --resume/--resume-from are replaced by the newest checkpoint.
      for (size_t i = 0; i < argv.size(); ++i) {
        if (argv[i] == "--resume") continue;
        if (argv[i] == "--resume-from") {
          ++i;
          continue;
        }
        a.push_back(argv[i]);
      }
      from = train::latestCheckpoint(cfg.output.dir + "/checkpoints");
      if (!from.empty()) a.insert(a.end(), {"--resume-from", from});
    }
    const int rc = launchLocal(run, a);
    if (rc == 0 || rc == kFatalExitStatus || lastLaunchInterrupt() != 0) return rc;
    if (attempt == restarts) {
      std::cerr << "chorus train: the job failed (exit status " << rc << ") and all " << restarts
                << " restart(s) are spent; the checkpoints in " << cfg.output.dir << "/checkpoints stay valid, and "
                << "--resume continues from the newest\n";
      return rc;
    }
    const std::string next = train::latestCheckpoint(cfg.output.dir + "/checkpoints");
    std::cerr << "chorus train: the job failed (exit status " << rc << "); restarting every worker "
              << (next.empty() ? std::string("from the start (no checkpoint yet; set output.checkpoint_every)")
                               : "from " + next)
              << " (restart " << attempt + 1 << " of " << restarts << ")\n";
  }
}

bool insideJob() {
  for (const char* v : {"CHORUS_RANK", "RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"}) {
    if (getenv(v) != nullptr) return true;
  }
  return false;
}

}  // namespace

int trainCommand(const std::vector<std::string>& args) {
  for (const auto& a : args) {
    if (a == "-h" || a == "--help") {
      std::cout << kTrainHelp;
      return 0;
    }
    if (a == "--help-config") {
      std::cout << train::configReference();
      return 0;
    }
  }
  TrainArgs t = parseTrainArgs(args);

  if (t.nproc > 0 && !insideJob()) {
    // Everything about the config is checked here, before any worker starts.
    train::Config cfg = load(t, t.nproc);
    checkDataFiles(cfg);
    if (t.check) {
      std::cout << "chorus train: " << (t.config.empty() ? "the defaults are" : t.config + " is") << " valid for " << t.nproc
                << " worker(s)\n";
      return 0;
    }
    if (cfg.ps.servers > 0 && t.resume) {
      // The servers hold the model: each reloads its own shard.
      const std::string shard = cfg.output.dir + "/ps/server0.ckpt";
      if (!std::filesystem::exists(shard)) {
        throw InvalidArgument(str("chorus train --resume: no server checkpoint ", shard,
                                  "; run without --resume to start fresh (set ps.checkpoint_every to checkpoint "
                                  "within a run)"));
      }
    } else if (t.resume || !t.resumeFrom.empty()) {
      std::string from = t.resumeFrom.empty() ? train::latestCheckpoint(cfg.output.dir + "/checkpoints") : t.resumeFrom;
      if (from.empty()) {
        throw InvalidArgument(str("chorus train --resume: no checkpoint in ", cfg.output.dir,
                                  "/checkpoints; run without --resume to start fresh"));
      }
    }
    if ((t.maxWorkers > 0 || t.spares > 0) && t.minWorkers == 0)
      throw UsageError("chorus train: --max and --spares make the job elastic together with --min M; give --min too");
    const bool restartAll = t.restarts > 0 && t.minWorkers == 0;
    if (restartAll && cfg.ps.servers > 0)
      throw UsageError("chorus train: --restarts without --min restarts a whole all-reduce job; a parameter-server job "
                       "restarts its failed workers and servers in place with ps.restarts = R (--set ps.restarts=R)");
    if (t.spares > t.restarts)
      throw UsageError(str("chorus train: --spares ", t.spares, " is more than --restarts ", t.restarts,
                           ": a spare joins as a replacement, so give --restarts at least as many"));
    if (t.minWorkers > 0) {
      if (cfg.ps.servers > 0)
        throw UsageError("chorus train: --min (elastic) recovers all-reduce jobs (data, tensor and pipeline parallel); a "
                         "parameter-server job restarts its failed workers and servers in place with ps.restarts = R");
      if (cfg.parallel.tp > 1 || cfg.parallel.pp > 1) checkElasticModelParallel(cfg, t);
      const int maxWorkers = t.maxWorkers > 0 ? t.maxWorkers : t.nproc;
      if (t.minWorkers > t.nproc || t.nproc > maxWorkers)
        throw UsageError(str("chorus train: need --min <= --nproc <= --max; got ", t.minWorkers, ", ", t.nproc, ", ",
                             maxWorkers));
    }
    LaunchOptions lo;
    lo.minWorkers = t.minWorkers;
    lo.maxWorkers = t.maxWorkers;
    lo.elasticRestarts = restartAll ? 0 : t.restarts;
    // Growth keeps the global batch: the new world must divide it (train-config.md).
    lo.elasticWorldCheck = [batch = cfg.train.batchSize](int workers) -> std::string {
      if (batch % workers == 0) return "";
      return str("train.batch_size = ", batch, " does not divide over ", workers, " workers");
    };
    lo.spares = t.spares;
    lo.elasticKeepPositions = cfg.parallel.tp * cfg.parallel.pp > 1;
    lo.nproc = t.nproc + static_cast<int>(cfg.ps.servers);
    if (cfg.ps.servers > 0) {
      lo.extraEnv.push_back({"CHORUS_PS_SERVERS", std::to_string(cfg.ps.servers)});
      // asp and ssp go on without a failed worker, but not without one that diverged: main exits
      // with status 3 then, which the launcher never tolerates (launch.h, kFatalExitStatus).
      if (cfg.ps.mode != "bsp") lo.tolerateBelow = t.nproc;
      lo.restartFrom = 0;  // workers and servers
      lo.maxRestarts = static_cast<int>(cfg.ps.restarts);
    }
    lo.transport = cfg.ddp.transport;
    lo.tagStdout = false;  // only rank 0 writes to stdout: its progress bar must reach the terminal as is
    lo.messagePrefix = "chorus train";
    std::vector<std::string> argv = {std::filesystem::canonical("/proc/self/exe").string(), "train"};
    if (!t.config.empty()) argv.push_back(t.config);
    for (const auto& s : t.sets) argv.insert(argv.end(), {"--set", s});
    if (t.resume) argv.push_back("--resume");
    if (!t.resumeFrom.empty()) argv.insert(argv.end(), {"--resume-from", t.resumeFrom});
    if (!t.trace.empty()) argv.insert(argv.end(), {"--trace", t.trace});
    if (restartAll) return restartWholeJob(lo, argv, cfg, t.restarts);
    return launchLocal(lo, argv);
  }

  comm::BootstrapInfo info = comm::detectBootstrap();
  train::Config cfg = loadInJob(t, info.worldSize);
  const int workers = info.worldSize - static_cast<int>(cfg.ps.servers);
  if (t.check) {
    if (info.rank == 0) std::cout << "chorus train: the config is valid for " << workers << " worker(s)\n";
    return 0;
  }
  comm::InitOptions io;
  io.transport = cfg.ddp.transport;
  train::ElasticOptions elastic = train::elasticFromEnvironment();
  if (elastic.enabled && elastic.spare) {
    // A standby worker (--spares): ready before it is needed; it joins the generation the
    // launcher calls it into, or ends with the job.
    elastic.generation = train::waitAsSpare(cfg, elastic, io.rank, io.size);
    if (elastic.generation < 0) return 0;
  }
  // A replacement worker of an elastic job joins the generation it was started for.
  if (elastic.enabled && elastic.generation > 0) io.prefix = train::elasticPrefix(elastic.generation);
  auto group = comm::ProcessGroup::fromEnvironment(io);
  train::TrainOptions opts;
  opts.resume = t.resume;
  opts.resumeFrom = t.resumeFrom;
  opts.tracePath = t.trace;
  opts.localWorldSize = info.localWorldSize;
  train::TrainResult r = elastic.enabled ? train::trainElastic(cfg, group, opts, elastic) : train::train(cfg, group, opts);
  if (group->rank() == 0) {
    std::cout << std::fixed << std::setprecision(4);
    if (r.testAccuracy >= 0) std::cout << "final test accuracy: " << r.testAccuracy << " (loss " << r.testLoss << ")\n";
    double valLoss = -1, valBpb = -1;
    for (const auto& [key, value] : r.eval) {
      if (key == "val_loss") valLoss = value;
      if (key == "val_bpb") valBpb = value;
    }
    if (valBpb >= 0) std::cout << "final validation: " << valBpb << " bits per byte (loss " << valLoss << ")\n";
    if (cfg.ps.servers > 0) {
      std::cout << std::setprecision(0) << "worker 0 trained " << r.steps << " steps at " << r.samplesPerSec
                << " samples/s with " << cfg.ps.servers << " parameter server(s) (" << cfg.ps.mode << "); "
                << "per-worker metrics and server reports: " << cfg.output.dir << "/ps/\n";
    } else if (cfg.model.name == "gpt") {
      std::cout << std::setprecision(0) << "trained " << r.steps << " steps on " << group->size() << " worker(s) (tp "
                << cfg.parallel.tp << ", pp " << cfg.parallel.pp << ") at "
                << r.samplesPerSec * static_cast<double>(cfg.model.context) << " tokens/s\n";
    } else {
      std::cout << std::setprecision(0) << "trained " << r.steps << " steps on " << group->size() << " worker(s) at "
                << r.samplesPerSec << " samples/s; " << std::setprecision(0) << 100 * r.overlapFraction
                << "% of all-reduce time overlapped the backward pass\n";
    }
    std::cout << "metrics: " << r.metricsPath << "\n";
    if (!r.lastCheckpoint.empty()) std::cout << "checkpoint: " << r.lastCheckpoint << "\n";
    if (!t.trace.empty()) std::cout << "trace: " << t.trace << " (open in https://ui.perfetto.dev or chrome://tracing)\n";
  }
  return 0;
}

}  // namespace chorus::tools
