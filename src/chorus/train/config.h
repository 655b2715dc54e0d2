// The training job's configuration: a TOML file plus `--set key=value` overrides, checked
// against one schema before any process starts training.
//
// Every key is "section.key" (or a top-level key such as "precision"). The schema (config.cc)
// is the single list of keys, with type, default, allowed values and meaning; docs/train.md
// and `chorus train --help-config` are printed from it.
//
// Errors are ConfigError and name the source ("run.toml:12" or "--set"), the key, what was
// wrong, and the allowed values or range, e.g.
//   run.toml:7: optim.name = "adamx" is not allowed; the choices are: sgd, adam, adamw
//   --set train.batch_size=100: 100 global samples cannot be split over 3 workers; use a multiple of 3
//   run.toml:3: unknown key 'train.epoch' (did you mean train.epochs?)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "chorus/compress/factory.h"

namespace chorus::train {

struct DataConfig {
  std::string dataset = "fashion-mnist";  // "fashion-mnist" | "cifar10" (images) | "fortunes" (text)
  // Folder with the dataset's files. Left unset (in the file and --set), parseConfig fills in
  // defaultDataPath(dataset); the struct's default is fashion-mnist's.
  std::string path = "/usr/share/datasets/fashion-mnist";
  int64_t limitTrain = 0;  // 0: the whole train split; else its first N samples (quick runs, tests)
  int64_t limitTest = 0;   // 0: the whole test split; else its first N samples
  int64_t evalWindows = 64;  // fortunes: fixed validation windows of model.context bytes per evaluation

  bool operator==(const DataConfig&) const = default;
};

struct ModelConfig {
  std::string name = "mlp";                    // "mlp" | "cnn" | "gpt"
  std::vector<int64_t> hidden = {512, 256};    // mlp: hidden layer widths
  std::vector<int64_t> channels = {32, 64};    // cnn: channels of each conv-BN-ReLU-pool block
  int64_t fc = 128;                            // cnn: width of the hidden fully-connected layer
  // gpt (a byte-level decoder-only transformer, src/chorus/train/gpt.h; vocabulary 256)
  int64_t layers = 4;          // transformer blocks
  int64_t heads = 4;           // attention heads; embed % heads == 0, heads % parallel.tp == 0
  int64_t embed = 128;         // embedding width E (MLP width 4E)
  int64_t context = 128;       // bytes per window T (training and attention span)
  double dropout = 0.0;        // on embeddings, attention probabilities and residual branches
  bool tieEmbeddings = true;   // logits = lnf(x) @ wte^T; false: a separate lm_head

  bool operator==(const ModelConfig&) const = default;
};

struct OptimConfig {
  std::string name = "sgd";   // "sgd" | "adam" | "adamw"
  double lr = 0.05;
  double momentum = 0.9;      // sgd
  bool nesterov = false;      // sgd (needs momentum > 0)
  double weightDecay = 0.0;   // all three (adamw: decoupled)
  double beta1 = 0.9;         // adam, adamw
  double beta2 = 0.999;       // adam, adamw
  double eps = 1e-8;          // adam, adamw
  double clipNorm = 0.0;      // clip the whole model's gradient to this global L2 norm; 0: off

  bool operator==(const OptimConfig&) const = default;
};

struct ScheduleConfig {
  std::string name = "cosine";  // "constant" | "cosine" | "step"
  int64_t warmupSteps = 0;      // linear warmup from lr * warmup_start over this many steps
  double warmupStart = 0.1;     // fraction of lr at step 0 of the warmup
  double minLr = 0.0;           // cosine: the lr it decays to
  int64_t stepEpochs = 1;       // step: multiply lr by gamma every this many epochs
  double gamma = 0.1;           // step

  bool operator==(const ScheduleConfig&) const = default;
};

struct TrainLoopConfig {
  int64_t epochs = 3;
  int64_t batchSize = 128;   // global, at most 2^31: each of dp replicas takes batch_size / dp per step
  int64_t maxSteps = 0;      // 0: no limit; else stop after this many steps (all epochs together)
  uint64_t seed = 0;         // model init and data order
  bool shuffle = true;
  bool dropLast = false;     // drop the last, smaller batch of each epoch
  bool eval = true;          // evaluate on the test split after each epoch
  int64_t evalEvery = 0;     // also evaluate every this many steps; 0: only after each epoch (and at the end)
  int64_t logEvery = 20;     // steps between metrics lines (and plain progress lines)
  int64_t threads = 0;       // torch intra-op threads per worker; 0: cores / local workers
  // Stragglers, for experiments: these workers (indices) sleep after each step's compute for
  // straggler_delay_ms plus (straggler_factor - 1) times the compute time.
  std::vector<int64_t> stragglerWorkers = {};
  double stragglerDelayMs = 0.0;
  double stragglerFactor = 1.0;

  bool operator==(const TrainLoopConfig&) const = default;
};

// Model parallelism over a mesh of workers (docs/model-parallel.md): each model replica spans
// tp x pp workers, and dp = workers / (tp x pp) replicas split the batch.
struct ParallelConfig {
  int64_t tp = 1;                 // tensor-parallel ranks per replica (Megatron-style splits)
  bool sequenceParallel = false;  // tp > 1: LayerNorm/dropout regions split along the sequence
  int64_t pp = 1;                 // layer-wise stages per replica (gpt blocks in contiguous ranges)
  std::string schedule = "none";  // "none": the naive layer-wise split, one batch through the stages;
                                  // "gpipe", "1f1b", "interleaved", "zb-h1": micro-batches
                                  // (parallel/pipeline/schedule.h);
                                  // "pipedream", "2bw": asynchronous, weights updated inside the step
  int64_t microBatches = 1;       // micro-batches per step and replica, with a pipeline schedule
  int64_t virtualStages = 1;      // "interleaved": model chunks per stage (v); pp x v virtual stages
  bool weightStashing = true;     // pipedream, 2bw: each backward on its forward's weights
  bool verticalSync = false;      // pipedream, 2bw: every stage on the first stage's version
  int64_t updateEvery = 0;        // 2bw: micro-batches per weight update; 0: pp
  std::string asyncFlush = "never";  // pipedream, 2bw: "never" (a stream across steps, drained only
                                     // before an evaluation, a checkpoint, an epoch's end and the
                                     // run's end) or "step" (drained at the end of every step)
  bool recompute = false;         // with a schedule: each stage runs its forward again in the backward
  std::vector<int64_t> partition = {};  // pp > 1: the GPT's layers per (virtual) stage (embedding
                                        // and head counted); empty: balanced by `balance`
  std::string balance = "params";       // "params": by parameter count; "time": by measured
                                        // forward + backward time per layer (profile.h)

  bool operator==(const ParallelConfig&) const = default;
};

struct DdpConfig {
  double bucketMb = 25.0;       // bucket cap in MiB
  bool findUnused = false;      // find_unused_parameters
  bool broadcastBuffers = true; // broadcast buffers (BatchNorm statistics) from rank 0 each step
  std::string commDtype = "fp32";  // "fp32" | "fp16" | "bf16": gradients on the wire
  std::string algo = "auto";       // allreduce algorithm: auto | ring | hd | tree | direct | mpi
  std::string transport = "";      // "" (CHORUS_TRANSPORT / auto) | shm | tcp | mpi

  bool operator==(const DdpConfig&) const = default;
};

// Gradient compression through a DDP communication hook (docs/compression.md).
struct CompressionConfig {
  std::string method = "none";  // compress::compressionMethods(): none, the codecs, powersgd
  double ratio = 0.01;          // topk, topk_sampled, randomk: fraction of the entries sent
  double residualDecay = 0.9;   // randomk: the residual is multiplied by this each step (1: plain error feedback)
  double threshold = 1e-3;      // threshold: send entries with |g| >= this
  int64_t levels = 16;          // qsgd: quantization levels s
  int64_t rank = 4;             // powersgd: rank of the approximation
  bool errorFeedback = true;    // keep what was not sent and add it to the next gradient
  double sparsity = 0.999;      // dgc: final sparsity
  int64_t warmupEpochs = 4;     // dgc: epochs of warm-up, sparsity 1 - 0.25^(epoch+1) until final
  double momentum = 0.9;        // dgc: momentum applied before compression (optim.momentum must be 0)
  double clipNorm = 0.0;        // dgc: local gradient clipping to this L2 norm / sqrt(workers); 0: off
  bool layerwise = true;        // topk, topk_sampled, dgc: k per parameter tensor, not per bucket
  int64_t denseSteps = 0;       // steps of plain all-reduce before the codec starts (not dgc)
  uint64_t seed = 0;            // randomness of randomk, qsgd, terngrad, sampled top-k
  std::string scope = "all";    // all | inter-host: dense inside each host, the codec only between hosts
  bool operator==(const CompressionConfig&) const = default;
};

// The one codec settings struct (compress::CodecConfig) of a [compression] table, for the codec
// methods: what DDP's codec hook and the parameter-server workers' pushes are built from, by
// compress::makeCodec. `workers` is the number of ranks whose gradients are averaged (DGC's
// clipping threshold).
compress::CodecConfig codecConfig(const CompressionConfig& c, int64_t workers);
// The codecs' seed for their randomness, from compression.seed (never 0).
uint64_t codecSeed(const CompressionConfig& c);

// The parameter server (docs/parameter-server.md): servers > 0 replaces the all-reduce of
// [ddp] by S server processes next to the workers.
struct PsConfig {
  int64_t servers = 0;            // 0: no parameter server (all-reduce DDP)
  std::string mode = "bsp";       // bsp | asp | ssp
  int64_t staleness = 2;          // ssp: how many clocks a worker may run ahead of the slowest
  int64_t backup = 0;             // bsp: rounds close after workers - backup pushes
  int64_t applyThreads = 2;       // update threads per server
  int64_t checkpointEvery = 0;    // server updates between shard checkpoints; 0: at the end only
  std::string asyncMomentum = "round";  // asp/ssp with sgd momentum: round | push (optimizer.h)
  int64_t restarts = 0;           // times the launcher restarts each failed server in a running job (tcp)

  bool operator==(const PsConfig&) const = default;
};

struct AmpConfig {
  double initScale = 65536.0;   // fp16: initial loss scale
  double growthFactor = 2.0;
  double backoffFactor = 0.5;
  int64_t growthInterval = 2000;  // steps without overflow before the scale grows

  bool operator==(const AmpConfig&) const = default;
};

struct OutputConfig {
  std::string dir = "runs/default";  // metrics.jsonl, checkpoints/, config.toml go here
  int64_t checkpointEvery = 0;       // steps between checkpoints; 0: only at the end of each epoch
  bool checkpointEpoch = true;       // checkpoint at the end of each epoch
  int64_t keep = 2;                  // checkpoints kept (oldest removed)
  std::string progress = "auto";     // "auto" (bar on a terminal, lines otherwise) | "bar" | "lines" | "none"
  bool overwrite = false;            // a fresh run deletes another run's checkpoints in dir/checkpoints

  bool operator==(const OutputConfig&) const = default;
};

struct Config {
  std::string name = "default";    // run name (top-level key)
  std::string precision = "fp32";  // "fp32" | "bf16" | "fp16" (top-level key)
  DataConfig data;
  ModelConfig model;
  OptimConfig optim;
  ScheduleConfig schedule;
  TrainLoopConfig train;
  ParallelConfig parallel;
  DdpConfig ddp;
  CompressionConfig compression;
  PsConfig ps;
  AmpConfig amp;
  OutputConfig output;

  bool operator==(const Config&) const = default;
};

// Parses `text` (TOML: [sections], key = value, strings, integers, floats, booleans, arrays
// of integers, # comments), applies `overrides` ("section.key=value", value in TOML syntax,
// bare words taken as strings), and validates everything, including what depends on the
// number of workers (worldSize >= 1; 0 skips those checks, for a first look at a config whose
// worker count depends on it, such as ps.servers). `source` names the text in errors. Throws
// ConfigError.
Config parseConfig(const std::string& text, const std::string& source, const std::vector<std::string>& overrides,
                   int worldSize);
// Reads the file (an unreadable file is a ConfigError naming it) and calls parseConfig.
Config loadConfig(const std::string& path, const std::vector<std::string>& overrides, int worldSize);
// The defaults, validated as parseConfig would with no file.
Config defaultConfig(const std::vector<std::string>& overrides, int worldSize);
// The folder a dataset's files are in when data.path is not set: fortunes ->
// /usr/share/games/fortunes (Debian's fortunes package, text.h's kFortunesDir); fashion-mnist and cifar10 ->
// /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist; CIFAR-10 has no package).
std::string defaultDataPath(const std::string& dataset);
// The resolved config as TOML that parseConfig reads back to an equal Config.
std::string toToml(const Config& c);
// Every key with its type, default, allowed values and meaning, one block per section.
std::string configReference();
// The names of every key, in schema order ("name", "precision", "data.dataset", ...).
std::vector<std::string> configKeys();

}  // namespace chorus::train
