// The training job's configuration: a small TOML reader, the schema of every key, and the
// checks that run before any worker starts.
//
// The schema (schema()) is the one list of keys. Each entry binds a key name to its field in
// Config, its allowed values or range, and its meaning; the file reader, the --set overrides,
// the validation, toToml and configReference all walk that list, so a key added there is
// read, checked, written back and documented without further code.
//
// Order of work in parseConfig:
//   1. read the TOML text line by line; each `key = value` is type-checked and stored at once
//      (unknown keys, duplicates and wrong types name the line);
//   2. apply the --set overrides in order, later ones winning;
//   3. check every key's allowed values or range, then the rules that span keys (batch size
//      over the workers, nesterov with momentum, ...). These name where the value came from:
//      the file's line, the override, or "(default)".
#include "chorus/train/config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <sstream>
#include <thread>
#include <variant>

#include "chorus/common/error.h"
#include "chorus/compress/factory.h"

namespace chorus::train {
namespace {

// ---------------------------------------------------------------------------------------------
// The schema

// A field of Config, reached through a function (sections are nested structs, so a plain
// pointer-to-member cannot name them). The alternative held gives the key's type.
using Field = std::variant<std::string& (*)(Config&), int64_t& (*)(Config&), uint64_t& (*)(Config&),
                           double& (*)(Config&), bool& (*)(Config&), std::vector<int64_t>& (*)(Config&)>;

#define CHORUS_FIELD(member) +[](Config& c) -> auto& { return c.member; }

// A numeric range; unset ends are unbounded. For integer arrays it applies to each element.
struct Range {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  bool loOpen = false;
  bool hiOpen = false;

  bool bounded() const { return std::isfinite(lo) || std::isfinite(hi); }
  bool contains(double v) const {
    if (!std::isfinite(v)) return false;
    if (loOpen ? !(v > lo) : !(v >= lo)) return false;
    if (hiOpen ? !(v < hi) : !(v <= hi)) return false;
    return true;
  }
  std::string describe() const {
    if (std::isfinite(lo) && std::isfinite(hi))
      return str("in ", loOpen ? "(" : "[", number(lo), ", ", number(hi), hiOpen ? ")" : "]");
    if (std::isfinite(lo)) return str(loOpen ? "> " : ">= ", number(lo));
    if (std::isfinite(hi)) return str(hiOpen ? "< " : "<= ", number(hi));
    return "any value";
  }
  // Whole bounds as integers (1000000, not 1e+06).
  static std::string number(double v) {
    return v == std::floor(v) && std::abs(v) < 1e15 ? str(static_cast<int64_t>(v)) : str(v);
  }
};

Range atLeast(double lo) { return Range{.lo = lo}; }
Range above(double lo) { return Range{.lo = lo, .loOpen = true}; }
Range between(double lo, double hi, bool loOpen, bool hiOpen) {
  return Range{.lo = lo, .hi = hi, .loOpen = loOpen, .hiOpen = hiOpen};
}

struct Key {
  std::string name;                  // "optim.lr"; top-level keys have no dot
  Field field;
  Range range = {};                  // numbers and integer arrays
  std::vector<std::string> choices = {};  // strings: the allowed values (empty: any)
  bool nonEmpty = false;             // strings and arrays: "" or [] is not allowed
  std::string meaning = "";
  std::string rangeHint = "";        // appended to an out-of-range error ("this machine has 8 hardware threads")

  std::string section() const {
    auto dot = name.find('.');
    return dot == std::string::npos ? "" : name.substr(0, dot);
  }
  std::string leaf() const { return name.substr(name.find('.') + 1); }
};

struct Section {
  std::string name;  // "" for the top level
  std::string meaning;
};

const std::vector<Section>& sections() {
  static const std::vector<Section> kSections = {
      {"", "the run"},
      {"data", "the dataset and where its files are"},
      {"model", "the network"},
      {"optim", "the optimizer"},
      {"schedule", "the learning-rate schedule"},
      {"train", "the training loop"},
      {"parallel", "model parallelism: tensor-parallel and layer-wise splits of each replica (docs/model-parallel.md)"},
      {"ddp", "data-parallel gradient synchronization"},
      {"compression", "gradient compression on the wire (docs/compression.md)"},
      {"ps", "the parameter server instead of all-reduce (docs/parameter-server.md)"},
      {"amp", "fp16 loss scaling (used when precision = \"fp16\")"},
      {"output", "where results go, checkpoints, progress display"},
  };
  return kSections;
}

// Upper bounds for the keys that start threads or processes, or multiply into step counts:
// without them a typo (threads = 100000) hangs a worker creating threads, or overflows, long
// before anything else would notice. Fixed rather than taken from this machine, so a config
// checked on one host means the same on another; far above what is useful (more intra-op
// threads than cores only slows a step down).
constexpr double kMaxThreads = 1024;
constexpr double kMaxProcesses = 1024;
constexpr double kMaxEpochs = 1000000;
// The global batch: the step planner multiplies it into sample counts, which overflowed near
// INT64_MAX; 2^31 samples in one step is far beyond any batch that fits a machine.
constexpr double kMaxBatch = 2147483648.0;
// The GPT's sizes: far above what trains on a CPU, low enough that products of them (the
// parameter count, embed x context activations) stay well inside 64 bits.
constexpr double kMaxLayers = 1024;
constexpr double kMaxHeads = 1024;
constexpr double kMaxWidth = 65536;

constexpr const char* kFortunesPath = "/usr/share/games/fortunes";
constexpr const char* kFashionMnistPath = "/usr/share/datasets/fashion-mnist";

std::string coresHint() {
  return str("this machine has ", std::max(1u, std::thread::hardware_concurrency()), " hardware threads");
}

const std::vector<Key>& schema() {
  static const std::vector<Key> kKeys = {
      {.name = "name", .field = CHORUS_FIELD(name), .nonEmpty = true,
       .meaning = "run name, shown in logs and metrics"},
      {.name = "precision", .field = CHORUS_FIELD(precision), .choices = {"fp32", "bf16", "fp16"},
       .meaning = "compute precision of forward and backward (fp16 uses the [amp] loss scaler)"},

      {.name = "data.dataset", .field = CHORUS_FIELD(data.dataset),
       .choices = {"fashion-mnist", "cifar10", "fortunes"},
       .meaning = "which dataset to train and evaluate on: fashion-mnist and cifar10 (images, for mlp and cnn) or "
                  "fortunes (text of Debian's fortunes package, for gpt)"},
      {.name = "data.path", .field = CHORUS_FIELD(data.path), .nonEmpty = true,
       .meaning = "folder holding the dataset's files; when not set it follows data.dataset: fortunes "
                  "/usr/share/games/fortunes, fashion-mnist and cifar10 /usr/share/datasets/fashion-mnist"},
      {.name = "data.limit_train", .field = CHORUS_FIELD(data.limitTrain), .range = atLeast(0),
       .meaning = "0: the whole train split; else only its first N samples"},
      {.name = "data.limit_test", .field = CHORUS_FIELD(data.limitTest), .range = atLeast(0),
       .meaning = "0: the whole test split; else only its first N samples"},
      {.name = "data.eval_windows", .field = CHORUS_FIELD(data.evalWindows), .range = between(1, kMaxBatch, false, false),
       .meaning = "fortunes: fixed windows of model.context bytes, spread evenly over the validation split, that "
                  "each evaluation scores"},

      {.name = "model.name", .field = CHORUS_FIELD(model.name), .choices = {"mlp", "cnn", "gpt"},
       .meaning = "network architecture; gpt: a byte-level decoder-only transformer (needs data.dataset = "
                  "\"fortunes\")"},
      {.name = "model.hidden", .field = CHORUS_FIELD(model.hidden), .range = atLeast(1), .nonEmpty = true,
       .meaning = "mlp: widths of the hidden layers"},
      {.name = "model.channels", .field = CHORUS_FIELD(model.channels), .range = atLeast(1), .nonEmpty = true,
       .meaning = "cnn: channels of each conv-BN-ReLU-pool block"},
      {.name = "model.fc", .field = CHORUS_FIELD(model.fc), .range = atLeast(1),
       .meaning = "cnn: width of the hidden fully-connected layer"},
      {.name = "model.layers", .field = CHORUS_FIELD(model.layers), .range = between(1, kMaxLayers, false, false),
       .meaning = "gpt: transformer blocks"},
      {.name = "model.heads", .field = CHORUS_FIELD(model.heads), .range = between(1, kMaxHeads, false, false),
       .meaning = "gpt: attention heads, embed / heads dimensions each (split over parallel.tp, which must divide "
                  "them)"},
      {.name = "model.embed", .field = CHORUS_FIELD(model.embed), .range = between(1, kMaxWidth, false, false),
       .meaning = "gpt: embedding width E, a multiple of heads (the MLP is 4E wide)"},
      {.name = "model.context", .field = CHORUS_FIELD(model.context), .range = between(1, kMaxWidth, false, false),
       .meaning = "gpt: bytes per training window, and the longest span a token attends to"},
      {.name = "model.dropout", .field = CHORUS_FIELD(model.dropout), .range = between(0, 1, false, true),
       .meaning = "gpt: dropout probability on the embeddings, the attention probabilities and each residual branch"},
      {.name = "model.tie_embeddings", .field = CHORUS_FIELD(model.tieEmbeddings),
       .meaning = "gpt: the output layer is the input embedding transposed (wte^T); false: a separate lm_head"},

      {.name = "optim.name", .field = CHORUS_FIELD(optim.name), .choices = {"sgd", "adam", "adamw"},
       .meaning = "optimizer"},
      {.name = "optim.lr", .field = CHORUS_FIELD(optim.lr), .range = above(0),
       .meaning = "peak learning rate (reached after the warmup)"},
      {.name = "optim.momentum", .field = CHORUS_FIELD(optim.momentum), .range = between(0, 1, false, true),
       .meaning = "sgd: momentum"},
      {.name = "optim.nesterov", .field = CHORUS_FIELD(optim.nesterov),
       .meaning = "sgd: Nesterov momentum (needs momentum > 0)"},
      {.name = "optim.weight_decay", .field = CHORUS_FIELD(optim.weightDecay), .range = atLeast(0),
       .meaning = "L2 penalty (adamw: decoupled weight decay)"},
      {.name = "optim.beta1", .field = CHORUS_FIELD(optim.beta1), .range = between(0, 1, false, true),
       .meaning = "adam, adamw: decay of the first-moment average"},
      {.name = "optim.beta2", .field = CHORUS_FIELD(optim.beta2), .range = between(0, 1, false, true),
       .meaning = "adam, adamw: decay of the second-moment average"},
      {.name = "optim.eps", .field = CHORUS_FIELD(optim.eps), .range = above(0),
       .meaning = "adam, adamw: added to the denominator"},
      {.name = "optim.clip_norm", .field = CHORUS_FIELD(optim.clipNorm), .range = atLeast(0),
       .meaning = "before each optimizer step, scale the gradient down to this L2 norm when it is larger (the whole "
                  "model's norm, summed over the tensor-parallel shards and the pipeline stages, as "
                  "torch.nn.utils.clip_grad_norm_ computes it on the unsplit model); 0: off"},

      {.name = "schedule.name", .field = CHORUS_FIELD(schedule.name), .choices = {"constant", "cosine", "step"},
       .meaning = "learning-rate schedule after the warmup"},
      {.name = "schedule.warmup_steps", .field = CHORUS_FIELD(schedule.warmupSteps), .range = atLeast(0),
       .meaning = "steps of linear warmup from lr * warmup_start up to lr"},
      {.name = "schedule.warmup_start", .field = CHORUS_FIELD(schedule.warmupStart),
       .range = between(0, 1, false, false), .meaning = "fraction of lr at the first warmup step"},
      {.name = "schedule.min_lr", .field = CHORUS_FIELD(schedule.minLr), .range = atLeast(0),
       .meaning = "cosine: the learning rate at the last step (at most optim.lr)"},
      {.name = "schedule.step_epochs", .field = CHORUS_FIELD(schedule.stepEpochs), .range = atLeast(1),
       .meaning = "step: multiply lr by gamma every this many epochs"},
      {.name = "schedule.gamma", .field = CHORUS_FIELD(schedule.gamma), .range = between(0, 1, true, false),
       .meaning = "step: the factor applied every step_epochs"},

      {.name = "train.epochs", .field = CHORUS_FIELD(train.epochs), .range = between(1, kMaxEpochs, false, false),
       .meaning = "passes over the train split"},
      {.name = "train.batch_size", .field = CHORUS_FIELD(train.batchSize), .range = between(1, kMaxBatch, false, false),
       .meaning = "global batch (gpt: windows of model.context bytes): each of the dp = W / (parallel.tp x "
                  "parallel.pp) replicas takes batch_size / dp (a multiple of dp)",
       .rangeHint = "a global batch above 2^31 samples would overflow the step counts"},
      {.name = "train.max_steps", .field = CHORUS_FIELD(train.maxSteps), .range = atLeast(0),
       .meaning = "0: no limit; else stop after this many steps (all epochs together)"},
      {.name = "train.seed", .field = CHORUS_FIELD(train.seed), .range = atLeast(0),
       .meaning = "seed of the model initialization and the data order"},
      {.name = "train.shuffle", .field = CHORUS_FIELD(train.shuffle),
       .meaning = "shuffle the train split every epoch"},
      {.name = "train.drop_last", .field = CHORUS_FIELD(train.dropLast),
       .meaning = "drop the last, smaller batch of each epoch"},
      {.name = "train.eval", .field = CHORUS_FIELD(train.eval),
       .meaning = "evaluate on the test split after each epoch"},
      {.name = "train.eval_every", .field = CHORUS_FIELD(train.evalEvery), .range = atLeast(0),
       .meaning = "with train.eval: also evaluate every this many steps (long runs); 0: only after each epoch and "
                  "at the end of the run"},
      {.name = "train.log_every", .field = CHORUS_FIELD(train.logEvery), .range = atLeast(1),
       .meaning = "steps between metrics lines (and plain progress lines)"},
      {.name = "train.threads", .field = CHORUS_FIELD(train.threads), .range = between(0, kMaxThreads, false, false),
       .meaning = "torch intra-op threads per worker; 0: cores / local workers", .rangeHint = coresHint()},
      {.name = "train.straggler_workers", .field = CHORUS_FIELD(train.stragglerWorkers), .range = atLeast(0),
       .meaning = "workers (indices) slowed down for experiments"},
      {.name = "train.straggler_delay_ms", .field = CHORUS_FIELD(train.stragglerDelayMs),
       .range = between(0, 3600000, false, false),
       .meaning = "stragglers sleep this long after each step's compute"},
      {.name = "train.straggler_factor", .field = CHORUS_FIELD(train.stragglerFactor),
       .range = between(1, 1000, false, false),
       .meaning = "stragglers also sleep (factor - 1) x their compute time: 3 makes a step 3x slower"},

      {.name = "parallel.tp", .field = CHORUS_FIELD(parallel.tp), .range = between(1, kMaxProcesses, false, false),
       .meaning = "tensor-parallel workers per replica (Megatron-style: attention heads, the MLP and the vocabulary "
                  "split over them; gpt only); dp = workers / (tp x pp)"},
      {.name = "parallel.sequence_parallel", .field = CHORUS_FIELD(parallel.sequenceParallel),
       .meaning = "with tp > 1: LayerNorm and dropout run on context / tp positions per worker (all-gather and "
                  "reduce-scatter instead of all-reduce); model.context must be a multiple of tp"},
      {.name = "parallel.pp", .field = CHORUS_FIELD(parallel.pp), .range = between(1, kMaxProcesses, false, false),
       .meaning = "layer-wise stages per replica: the gpt's blocks in pp contiguous ranges on different workers "
                  "(at most model.layers)"},
      {.name = "parallel.schedule", .field = CHORUS_FIELD(parallel.schedule),
       .choices = {"none", "gpipe", "1f1b", "interleaved", "zb-h1", "pipedream", "2bw"},
       .meaning = "how the stages of pp > 1 run: none, the naive layer-wise split (one batch through the stages in "
                  "turn); gpipe (all forwards, then all backwards), 1f1b (one forward one backward, at most pp "
                  "micro-batches stored), interleaved (1f1b over parallel.virtual_stages model chunks per stage: a "
                  "smaller bubble for more transfers) or zb-h1 (1f1b with the backward split into its input and weight "
                  "halves) over parallel.micro_batches micro-batches; pipedream (asynchronous 1f1b: each stage updates its "
                  "weights after every micro-batch's backward, no flush) or 2bw (the same, one "
                  "update per parallel.update_every micro-batches; with parallel.async_flush = \"never\" the pipeline is not drained "
                  "between steps); `chorus pipeline show` draws them"},
      {.name = "parallel.weight_stashing", .field = CHORUS_FIELD(parallel.weightStashing),
       .meaning = "pipedream, 2bw: run each micro-batch's backward on the weights its forward used (false: on the "
                  "latest, which gives inconsistent gradients; for comparison)"},
      {.name = "parallel.vertical_sync", .field = CHORUS_FIELD(parallel.verticalSync),
       .meaning = "pipedream, 2bw: every stage runs a micro-batch on the weight version the first stage used for it "
                  "(needs weight_stashing)"},
      {.name = "parallel.async_flush", .field = CHORUS_FIELD(parallel.asyncFlush), .choices = {"never", "step"},
       .meaning = "pipedream, 2bw: never (PipeDream's stream: micro-batches still in flight at a step's end finish "
                  "in the next step, so the pipeline fills once, and drains only before an evaluation, a checkpoint, "
                  "an epoch's end and the run's end) or step (drained at the end of every step, so each step fills "
                  "and drains it, as a synchronous schedule does)"},
      {.name = "parallel.recompute", .field = CHORUS_FIELD(parallel.recompute),
       .meaning = "with a pipeline schedule: activation recomputation; a stage keeps only each micro-batch's input "
                  "between its forward and its backward, which runs the forward again first (one more forward per "
                  "micro-batch, far less memory)"},
      {.name = "parallel.update_every", .field = CHORUS_FIELD(parallel.updateEvery),
       .range = between(0, 4096, false, false),
       .meaning = "2bw: micro-batches whose gradients one weight update applies; 0: parallel.pp"},
      {.name = "parallel.virtual_stages", .field = CHORUS_FIELD(parallel.virtualStages),
       .range = between(1, 64, false, false),
       .meaning = "schedule interleaved: model chunks per stage (v >= 2); the layers are cut into pp x v virtual "
                  "stages and stage r holds r, r + pp, r + 2 pp, ..."},
      {.name = "parallel.partition", .field = CHORUS_FIELD(parallel.partition), .range = atLeast(1),
       .meaning = "pp > 1: the gpt's layers on each stage (each virtual stage when interleaved), in order, the "
                  "embedding and the head counted as layers (model.layers + 2 in all), e.g. [2, 4]; empty: balanced "
                  "by parallel.balance; \"auto\": empty, and balance = \"time\""},
      {.name = "parallel.balance", .field = CHORUS_FIELD(parallel.balance), .choices = {"params", "time"},
       .meaning = "pp > 1 without a partition: split the layers so that the largest stage is smallest by "
                  "parameter count (params) or by forward + backward time measured on worker 0 before training "
                  "(time)"},
      {.name = "parallel.micro_batches", .field = CHORUS_FIELD(parallel.microBatches),
       .range = between(1, 4096, false, false),
       .meaning = "micro-batches per step with a pipeline schedule: each replica's batch_size / dp windows are cut "
                  "into this many equal parts (it must divide them)"},

      {.name = "ddp.bucket_mb", .field = CHORUS_FIELD(ddp.bucketMb), .range = between(0, 65536, true, false),
       .meaning = "gradient bucket cap in MiB"},
      {.name = "ddp.find_unused", .field = CHORUS_FIELD(ddp.findUnused),
       .meaning = "look for parameters that got no gradient each step (find_unused_parameters)"},
      {.name = "ddp.broadcast_buffers", .field = CHORUS_FIELD(ddp.broadcastBuffers),
       .meaning = "broadcast buffers (BatchNorm statistics) from rank 0 each step"},
      {.name = "ddp.comm_dtype", .field = CHORUS_FIELD(ddp.commDtype), .choices = {"fp32", "fp16", "bf16"},
       .meaning = "dtype of the gradients on the wire"},
      {.name = "ddp.algo", .field = CHORUS_FIELD(ddp.algo),
       .choices = {"auto", "ring", "hd", "tree", "direct", "hier", "mpi"}, .meaning = "allreduce algorithm"},
      {.name = "ddp.transport", .field = CHORUS_FIELD(ddp.transport), .choices = {"", "auto", "shm", "tcp", "mpi", "mixed"},
       .meaning = "transport between workers; \"\": CHORUS_TRANSPORT, else auto"},

      {.name = "compression.method", .field = CHORUS_FIELD(compression.method),
       .choices = compress::compressionMethods(),
       .meaning = "how gradients are compressed; none: dense all-reduce"},
      {.name = "compression.ratio", .field = CHORUS_FIELD(compression.ratio), .range = between(0, 1, true, false),
       .meaning = "topk, topk_sampled, randomk: fraction of the entries sent each step"},
      {.name = "compression.threshold", .field = CHORUS_FIELD(compression.threshold), .range = above(0),
       .meaning = "threshold: entries with |value| >= this are sent"},
      {.name = "compression.levels", .field = CHORUS_FIELD(compression.levels), .range = between(1, 127, false, false),
       .meaning = "qsgd: quantization levels"},
      {.name = "compression.rank", .field = CHORUS_FIELD(compression.rank), .range = between(1, 65536, false, false),
       .meaning = "powersgd: rank of the low-rank approximation"},
      {.name = "compression.error_feedback", .field = CHORUS_FIELD(compression.errorFeedback),
       .meaning = "accumulate what was not sent into the next step's gradient (randomk without it: the sent "
                  "entries times n/k)"},
      {.name = "compression.residual_decay", .field = CHORUS_FIELD(compression.residualDecay),
       .range = between(0, 1, false, false),
       .meaning = "randomk: the residual is multiplied by this each step (an entry carries at most 1/(1-d) "
                  "steps of gradient); 1: plain error feedback"},
      {.name = "compression.sparsity", .field = CHORUS_FIELD(compression.sparsity), .range = between(0, 1, true, true),
       .meaning = "dgc: final sparsity (fraction of the entries not sent)"},
      {.name = "compression.warmup_epochs", .field = CHORUS_FIELD(compression.warmupEpochs), .range = atLeast(0),
       .meaning = "dgc: warm-up epochs, sparsity 1 - 0.25^(epoch+1) (75%, 93.75%, ...) until the final one"},
      {.name = "compression.momentum", .field = CHORUS_FIELD(compression.momentum), .range = between(0, 1, false, true),
       .meaning = "dgc: momentum applied locally before compression"},
      {.name = "compression.clip_norm", .field = CHORUS_FIELD(compression.clipNorm), .range = atLeast(0),
       .meaning = "dgc: clip each worker's gradient to this L2 norm / sqrt(workers); 0: no clipping"},
      {.name = "compression.layerwise", .field = CHORUS_FIELD(compression.layerwise),
       .meaning = "topk, topk_sampled, dgc: each parameter tensor sends its share of its own entries, rather "
                  "than the largest of the whole bucket"},
      {.name = "compression.dense_steps", .field = CHORUS_FIELD(compression.denseSteps), .range = atLeast(0),
       .meaning = "steps of plain float32 all-reduce before the codec starts (PyTorch's start_powerSGD_iter); "
                  "not for dgc, whose warm-up is its sparsity schedule"},
      {.name = "compression.seed", .field = CHORUS_FIELD(compression.seed),
       .meaning = "seed of the codecs' randomness (randomk, qsgd, terngrad, sampled top-k)"},
      {.name = "compression.scope", .field = CHORUS_FIELD(compression.scope), .choices = {"all", "inter-host"},
       .meaning = "all: every worker's gradient goes through the codec; inter-host: when the workers span hosts with "
                  "several on a host, each host sums its gradients densely to its first worker, only those run the "
                  "codec (or powersgd) between hosts, and each broadcasts the result inside its host (elsewhere the "
                  "same as all)"},

      {.name = "ps.servers", .field = CHORUS_FIELD(ps.servers), .range = between(0, kMaxProcesses, false, false),
       .meaning = "parameter-server processes besides the workers; 0: all-reduce DDP",
       .rangeHint = "each server is a process of the job, like a worker (chorus train --nproc takes at most 1024)"},
      {.name = "ps.mode", .field = CHORUS_FIELD(ps.mode), .choices = {"bsp", "asp", "ssp"},
       .meaning = "bsp: synchronous rounds; asp: apply each push; ssp: asp with a staleness bound"},
      {.name = "ps.staleness", .field = CHORUS_FIELD(ps.staleness), .range = atLeast(0),
       .meaning = "ssp: clocks a worker may run ahead of the slowest"},
      {.name = "ps.backup", .field = CHORUS_FIELD(ps.backup), .range = atLeast(0),
       .meaning = "bsp: backup workers; a round closes after workers - backup pushes, later ones are dropped"},
      {.name = "ps.apply_threads", .field = CHORUS_FIELD(ps.applyThreads),
       .range = between(1, kMaxThreads, false, false),
       .meaning = "threads per server that apply updates", .rangeHint = coresHint()},
      {.name = "ps.checkpoint_every", .field = CHORUS_FIELD(ps.checkpointEvery), .range = atLeast(0),
       .meaning = "server updates between shard checkpoints (output.dir/ps/server<s>.ckpt); 0: at the end"},
      {.name = "ps.async_momentum", .field = CHORUS_FIELD(ps.asyncMomentum), .choices = {"round", "push"},
       .meaning = "asp/ssp with sgd momentum: round advances the servers' momentum once per N pushes (as bsp "
                  "does per step); push applies torch's momentum on every push"},
      {.name = "ps.restarts", .field = CHORUS_FIELD(ps.restarts), .range = atLeast(0),
       .meaning = "times chorus train --nproc restarts each failed process while the job runs: a server "
                  "reloads its shard and the workers reconnect; a worker rejoins at the step the servers count "
                  "for it (tcp)"},

      {.name = "amp.init_scale", .field = CHORUS_FIELD(amp.initScale), .range = above(0),
       .meaning = "fp16: initial loss scale"},
      {.name = "amp.growth_factor", .field = CHORUS_FIELD(amp.growthFactor), .range = above(1),
       .meaning = "fp16: scale multiplier after growth_interval steps without overflow"},
      {.name = "amp.backoff_factor", .field = CHORUS_FIELD(amp.backoffFactor),
       .range = between(0, 1, true, true), .meaning = "fp16: scale multiplier after an overflow"},
      {.name = "amp.growth_interval", .field = CHORUS_FIELD(amp.growthInterval), .range = atLeast(1),
       .meaning = "fp16: steps without overflow before the scale grows"},

      {.name = "output.dir", .field = CHORUS_FIELD(output.dir), .nonEmpty = true,
       .meaning = "folder for metrics.jsonl, checkpoints/ and config.toml"},
      {.name = "output.checkpoint_every", .field = CHORUS_FIELD(output.checkpointEvery), .range = atLeast(0),
       .meaning = "steps between checkpoints; 0: none within an epoch"},
      {.name = "output.checkpoint_epoch", .field = CHORUS_FIELD(output.checkpointEpoch),
       .meaning = "write a checkpoint at the end of each epoch"},
      {.name = "output.keep", .field = CHORUS_FIELD(output.keep), .range = atLeast(1),
       .meaning = "checkpoints kept (the oldest are removed)"},
      {.name = "output.overwrite", .field = CHORUS_FIELD(output.overwrite),
       .meaning = "delete checkpoints of another run found in dir/checkpoints at the start (otherwise the run refuses "
                  "to start there unless it resumes the newest)"},
      {.name = "output.progress", .field = CHORUS_FIELD(output.progress),
       .choices = {"auto", "bar", "lines", "none"},
       .meaning = "progress display; auto: a bar on a terminal, lines otherwise"},
  };
  return kKeys;
}

#undef CHORUS_FIELD

const Key* findKey(const std::string& name) {
  for (const Key& k : schema())
    if (k.name == name) return &k;
  return nullptr;
}

bool knownSection(const std::string& name) {
  for (const Section& s : sections())
    if (s.name == name) return true;
  return false;
}

// Levenshtein distance, one row at a time.
size_t editDistance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// The closest of `names` to `name` if it is close enough to be a typo, else "".
std::string closest(const std::string& name, const std::vector<std::string>& names) {
  std::string best;
  size_t bestDist = std::max<size_t>(2, name.size() / 4) + 1;
  for (const std::string& n : names) {
    size_t d = editDistance(name, n);
    if (d < bestDist) bestDist = d, best = n;
  }
  return best;
}

std::string join(const std::vector<std::string>& items, const std::string& sep = ", ") {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

std::string sectionList() {
  std::vector<std::string> names;
  for (const Section& s : sections())
    if (!s.name.empty()) names.push_back(s.name);
  return join(names);
}

std::string unknownKeyMessage(const std::string& name) {
  std::string msg = str("unknown key '", name, "'");
  std::vector<std::string> all;
  for (const Key& k : schema()) all.push_back(k.name);
  std::string guess = closest(name, all);
  // A known key put under the wrong section: "lr" in [train] means optim.lr.
  std::string leaf = name.substr(name.find('.') + 1);
  if (guess.empty())
    for (const Key& k : schema())
      if (k.leaf() == leaf) guess = k.name;
  if (!guess.empty()) return str(msg, " (did you mean ", guess, "?)");

  std::string section = name.find('.') == std::string::npos ? "" : name.substr(0, name.find('.'));
  if (!knownSection(section)) return str(msg, "; the sections are: ", sectionList());
  std::vector<std::string> leaves;
  for (const Key& k : schema())
    if (k.section() == section) leaves.push_back(k.leaf());
  return str(msg, "; the keys of ", section.empty() ? "the top level" : "[" + section + "]", " are: ",
             join(leaves));
}

// ---------------------------------------------------------------------------------------------
// Values: what the reader produces, how fields print

struct Value {
  enum class Kind { kString, kInt, kFloat, kBool, kIntArray } kind = Kind::kString;
  std::string s;
  int64_t i = 0;
  double f = 0;
  bool b = false;
  std::vector<int64_t> a;
  std::string text;  // as written, for messages
};

const char* kindName(Value::Kind k) {
  switch (k) {
    case Value::Kind::kString: return "a string";
    case Value::Kind::kInt: return "an integer";
    case Value::Kind::kFloat: return "a float";
    case Value::Kind::kBool: return "a boolean";
    case Value::Kind::kIntArray: return "an array of integers";
  }
  return "?";
}

// The key's type as the reference and the messages name it.
std::string typeName(const Field& f) {
  static const char* kNames[] = {"string", "integer", "integer", "float", "boolean", "array of integers"};
  return kNames[f.index()];
}
std::string typeWithArticle(const Field& f) {
  std::string t = typeName(f);
  return (t == "integer" || t == "array of integers" ? "an " : "a ") + t;
}

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char ch : s) {
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (ch < 0x20 || ch == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", ch);
          out += buf;
        } else {
          out += static_cast<char>(ch);
        }
    }
  }
  return out + "\"";
}

// Shortest text that reads back to the same double, always with a '.' or an exponent so
// that it reads back as a float.
std::string formatFloat(double v) {
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v);
  std::string s(buf, res.ptr);
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

// The field's value in TOML syntax.
std::string formatField(const Key& key, const Config& c) {
  Config& m = const_cast<Config&>(c);  // the accessors only read here
  return std::visit(
      [&](auto get) -> std::string {
        const auto& v = get(m);
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string>) return quote(v);
        else if constexpr (std::is_same_v<T, bool>) return v ? "true" : "false";
        else if constexpr (std::is_same_v<T, double>) return formatFloat(v);
        else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
          std::string out = "[";
          for (size_t i = 0; i < v.size(); ++i) out += str(i ? ", " : "", v[i]);
          return out + "]";
        } else return str(v);
      },
      key.field);
}

std::string choicesText(const Key& key) {
  std::vector<std::string> shown;
  for (const std::string& c : key.choices) shown.push_back(c.empty() ? "\"\"" : c);
  return join(shown);
}

// The allowed values or range as the reference shows them ("" when anything goes).
std::string allowedText(const Key& key) {
  if (!key.choices.empty()) return "one of: " + choicesText(key);
  if (std::holds_alternative<std::vector<int64_t>& (*)(Config&)>(key.field)) {
    std::string out = key.nonEmpty ? "non-empty" : "";
    if (key.range.bounded()) out += str(out.empty() ? "" : ", ", "each ", key.range.describe());
    return out;
  }
  if (key.nonEmpty) return "not empty";
  if (key.range.bounded()) return key.range.describe();
  return "";
}

// ---------------------------------------------------------------------------------------------
// The TOML reader

struct ParseError {
  int line;
  std::string msg;
};

// Reads TOML text: [section] headers, key = value lines, # comments. The values are basic
// "strings" (with escapes), 'literal strings', integers, floats, booleans and arrays of
// integers (which may span lines). Throws ParseError.
class TomlReader {
 public:
  explicit TomlReader(const std::string& text) : t_(text) {}

  template <typename OnSection, typename OnKeyValue>
  void read(OnSection onSection, OnKeyValue onKeyValue) {
    while (true) {
      skipSpaces();
      if (atEnd()) return;
      char c = t_[pos_];
      if (c == '\n' || c == '\r' || c == '#') {
        endOfLine("");
      } else if (c == '[') {
        if (peek(1) == '[') fail("arrays of tables ([[...]]) are not supported; use one [section] per group");
        ++pos_;
        skipSpaces();
        int line = line_;
        std::string name = readKey("a section name after '['");
        skipSpaces();
        if (peek(0) != ']') fail(str("expected ']' to close the section header [", name, ", got ", shown()));
        ++pos_;
        endOfLine(str("the section header [", name, "]"));
        onSection(name, line);
      } else {
        int line = line_;
        std::string key = readKey("a key (letters, digits, '_', '-'), a [section] header or a # comment");
        skipSpaces();
        if (peek(0) != '=') fail(str("expected '=' after the key '", key, "', got ", shown()));
        ++pos_;
        skipSpaces();
        Value v = readValue();
        endOfLine(str("the value of '", key, "'"));
        onKeyValue(key, v, line);
      }
    }
  }

  // The whole text is one value (a --set override); surrounding spaces are allowed.
  Value readSingleValue() {
    skipSpaces();
    Value v = readValue();
    skipSpaces();
    if (!atEnd()) fail(str("unexpected ", shown(), " after the value"));
    return v;
  }

 private:
  bool atEnd() const { return pos_ >= t_.size(); }
  char peek(size_t ahead) const { return pos_ + ahead < t_.size() ? t_[pos_ + ahead] : '\0'; }
  [[noreturn]] void fail(const std::string& msg) const { throw ParseError{line_, msg}; }

  // What is at the cursor, for messages.
  std::string shown() const {
    if (atEnd()) return "the end of the text";
    char c = t_[pos_];
    if (c == '\n' || c == '\r') return "the end of the line";
    return str("'", c, "'");
  }

  void skipSpaces() {
    while (!atEnd() && (t_[pos_] == ' ' || t_[pos_] == '\t')) ++pos_;
  }
  void skipComment() {
    if (peek(0) == '#')
      while (!atEnd() && t_[pos_] != '\n') ++pos_;
  }
  // Consumes a newline ("\n" or "\r\n"); false if there is none at the cursor.
  bool newline() {
    if (peek(0) == '\r' && peek(1) == '\n') ++pos_;
    if (peek(0) != '\n') return false;
    ++pos_;
    ++line_;
    return true;
  }
  // After a header or a value only spaces and a comment may follow on the line.
  void endOfLine(const std::string& after) {
    skipSpaces();
    skipComment();
    if (atEnd() || newline()) return;
    if (after.empty()) fail(str("unexpected ", shown()));
    fail(str("expected the end of the line after ", after, ", got ", shown()));
  }

  static bool bareKeyChar(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  }

  // A bare key, dotted parts allowed ("optim.lr"); `expected` says what else could be here.
  std::string readKey(const std::string& expected) {
    std::string key;
    while (true) {
      if (peek(0) == '"' || peek(0) == '\'') fail("quoted keys are not supported; write the key bare, e.g. lr = 0.1");
      size_t start = pos_;
      while (!atEnd() && bareKeyChar(t_[pos_])) ++pos_;
      if (pos_ == start) fail(str("expected ", key.empty() ? expected : "a key part after '.'", ", got ", shown()));
      key += t_.substr(start, pos_ - start);
      skipSpaces();
      if (peek(0) != '.') return key;
      ++pos_;
      key += '.';
      skipSpaces();
    }
  }

  Value readValue() {
    size_t start = pos_;
    Value v;
    char c = peek(0);
    if (c == '"' || c == '\'') {
      v.kind = Value::Kind::kString;
      v.s = c == '"' ? readBasicString() : readLiteralString();
    } else if (c == '[') {
      v.kind = Value::Kind::kIntArray;
      v.a = readArray();
    } else {
      v = readScalar();
    }
    v.text = t_.substr(start, pos_ - start);
    return v;
  }

  std::string readBasicString() {
    if (peek(1) == '"' && peek(2) == '"') fail("multi-line strings (\"\"\") are not supported");
    ++pos_;
    std::string out;
    while (true) {
      if (atEnd() || peek(0) == '\n' || peek(0) == '\r')
        fail("unterminated string: expected a closing '\"' on the same line");
      char c = t_[pos_++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      char e = peek(0);
      ++pos_;
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'u': appendUtf8(out, readHex(4)); break;
        case 'U': appendUtf8(out, readHex(8)); break;
        default:
          --pos_;
          fail(str("unknown escape '\\", e,
                   "' in a string; the escapes are \\\" \\\\ \\n \\t \\r \\b \\f \\uXXXX \\UXXXXXXXX"));
      }
    }
  }

  std::string readLiteralString() {
    if (peek(1) == '\'' && peek(2) == '\'') fail("multi-line strings (''') are not supported");
    ++pos_;
    size_t start = pos_;
    while (!atEnd() && t_[pos_] != '\'' && t_[pos_] != '\n' && t_[pos_] != '\r') ++pos_;
    if (peek(0) != '\'') fail("unterminated string: expected a closing \"'\" on the same line");
    return t_.substr(start, pos_++ - start);
  }

  uint32_t readHex(int digits) {
    uint32_t v = 0;
    for (int i = 0; i < digits; ++i) {
      char c = peek(0);
      int d = (c >= '0' && c <= '9')   ? c - '0'
              : (c >= 'a' && c <= 'f') ? c - 'a' + 10
              : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                       : -1;
      if (d < 0) fail(str("expected ", digits, " hex digits in a \\u escape, got ", shown()));
      v = v * 16 + d;
      ++pos_;
    }
    if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) fail("the \\u escape is not a Unicode scalar value");
    return v;
  }

  static void appendUtf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  // Spaces, newlines and comments between the elements of an array.
  void skipArrayGap() {
    while (true) {
      skipSpaces();
      skipComment();
      if (!newline()) return;
    }
  }

  std::vector<int64_t> readArray() {
    ++pos_;
    std::vector<int64_t> out;
    while (true) {
      skipArrayGap();
      if (peek(0) == ']') break;
      if (atEnd()) fail("unterminated array: expected ']'");
      Value v = readValue();
      if (v.kind != Value::Kind::kInt)
        fail(str("arrays may hold integers only, got ", kindName(v.kind), " ", v.text));
      out.push_back(v.i);
      skipArrayGap();
      if (atEnd()) fail("unterminated array: expected ']'");
      if (peek(0) == ',') {
        ++pos_;
      } else if (peek(0) != ']') {
        fail(str("expected ',' or ']' in the array, got ", shown()));
      }
    }
    ++pos_;
    return out;
  }

  static bool digit(char c) { return c >= '0' && c <= '9'; }

  // Digits with single '_' between them ("1_000"); returns them without the underscores.
  static bool digitRun(const std::string& s, size_t& i, std::string& out) {
    if (i >= s.size() || !digit(s[i])) return false;
    while (i < s.size()) {
      if (digit(s[i])) {
        out += s[i++];
      } else if (s[i] == '_' && i + 1 < s.size() && digit(s[i + 1])) {
        ++i;
      } else {
        break;
      }
    }
    return true;
  }

  // true/false, an integer or a float.
  Value readScalar() {
    size_t start = pos_;
    while (!atEnd() && (bareKeyChar(t_[pos_]) || t_[pos_] == '.' || t_[pos_] == '+')) ++pos_;
    std::string tok = t_.substr(start, pos_ - start);
    Value v;
    if (tok == "true" || tok == "false") {
      v.kind = Value::Kind::kBool;
      v.b = tok == "true";
      return v;
    }
    const std::string expected = "expected a value: a \"string\", a number, true, false or [integers]";
    if (tok.empty()) fail(str(expected, ", got ", shown()));

    // [+-] int [. digits] [e [+-] digits], int without leading zeros.
    std::string clean;
    size_t i = 0;
    if (tok[i] == '+' || tok[i] == '-') clean += tok[i++];
    size_t intStart = i;
    if (!digitRun(tok, i, clean)) fail(str(expected, ", got '", tok, "'"));
    if (tok[intStart] == '0' && i - intStart > 1) fail(str("leading zeros are not allowed in '", tok, "'"));
    bool isFloat = false;
    if (i < tok.size() && tok[i] == '.') {
      clean += tok[i++];
      if (!digitRun(tok, i, clean)) fail(str("expected digits after the '.' in '", tok, "'"));
      isFloat = true;
    }
    if (i < tok.size() && (tok[i] == 'e' || tok[i] == 'E')) {
      clean += tok[i++];
      if (i < tok.size() && (tok[i] == '+' || tok[i] == '-')) clean += tok[i++];
      if (!digitRun(tok, i, clean)) fail(str("expected digits after the exponent in '", tok, "'"));
      isFloat = true;
    }
    if (i != tok.size()) fail(str(expected, ", got '", tok, "'"));

    if (isFloat) {
      v.kind = Value::Kind::kFloat;
      v.f = std::strtod(clean.c_str(), nullptr);
      if (!std::isfinite(v.f)) fail(str("the float '", tok, "' is out of range"));
    } else {
      v.kind = Value::Kind::kInt;
      const char* b = clean.c_str() + (clean[0] == '+' ? 1 : 0);
      auto res = std::from_chars(b, clean.c_str() + clean.size(), v.i);
      if (res.ec != std::errc()) fail(str("the integer '", tok, "' does not fit in 64 bits"));
    }
    return v;
  }

  const std::string& t_;
  size_t pos_ = 0;
  int line_ = 1;
};

// ---------------------------------------------------------------------------------------------
// Building a Config: type-checked stores, then the checks of ranges and the cross-key rules

class Builder {
 public:
  explicit Builder(int worldSize) : worldSize_(worldSize) {
    if (worldSize < 0) throw ConfigError(str("the number of workers must be >= 1 (or 0: not known yet), got ", worldSize));
  }

  void readFile(const std::string& text, const std::string& source) {
    std::string section;
    std::map<std::string, int> sectionLines, keyLines;
    auto at = [&](int line) { return str(source, ":", line); };
    TomlReader reader(text);
    try {
      reader.read(
          [&](const std::string& name, int line) {
            if (!knownSection(name) || name.empty()) {
              std::vector<std::string> names;
              for (const Section& s : sections())
                if (!s.name.empty()) names.push_back(s.name);
              std::string guess = closest(name, names);
              throw ConfigError(str(at(line), ": unknown section [", name, "]",
                                    guess.empty() ? "" : " (did you mean [" + guess + "]?)",
                                    "; the sections are: ", sectionList()));
            }
            auto [it, fresh] = sectionLines.emplace(name, line);
            if (!fresh)
              throw ConfigError(str(at(line), ": section [", name, "] appears twice (first on line ", it->second,
                                    "); put all its keys under one header"));
            section = name;
          },
          [&](const std::string& key, const Value& v, int line) {
            std::string full = section.empty() ? key : section + "." + key;
            const Key* k = findKey(full);
            if (!k) throw ConfigError(str(at(line), ": ", unknownKeyMessage(full)));
            auto [it, fresh] = keyLines.emplace(full, line);
            if (!fresh)
              throw ConfigError(str(at(line), ": duplicate key ", full, " (already set on line ", it->second,
                                    "); keep one of the two"));
            store(*k, v, at(line));
          });
    } catch (const ParseError& e) {
      throw ConfigError(str(at(e.line), ": ", e.msg));
    }
  }

  // "section.key=value": the value in TOML syntax; for string keys anything that is not a
  // quoted TOML string is taken as written (--set optim.name=adam, --set ddp.transport=).
  void applyOverride(const std::string& text) {
    const std::string where = "--set " + text;
    auto eq = text.find('=');
    std::string name = trim(eq == std::string::npos ? text : text.substr(0, eq));
    if (eq == std::string::npos || name.empty())
      throw ConfigError(str(where, ": expected key=value, e.g. --set optim.lr=0.1 or --set model.hidden=[256,128]"));
    const Key* k = findKey(name);
    if (!k) throw ConfigError(str(where, ": ", unknownKeyMessage(name)));
    std::string valueText = trim(text.substr(eq + 1));
    // parallel.partition also takes the bare word auto.
    bool isString = std::holds_alternative<std::string& (*)(Config&)>(k->field) ||
                    (name == "parallel.partition" && valueText == "auto");
    Value v;
    if (isString && (valueText.empty() || (valueText[0] != '"' && valueText[0] != '\''))) {
      v.kind = Value::Kind::kString;
      v.s = v.text = valueText;
    } else {
      try {
        v = TomlReader(valueText).readSingleValue();
      } catch (const ParseError& e) {
        // The reader's own words help only past the first character ("unterminated array").
        bool detail = e.msg.rfind("expected a value", 0) != 0;
        throw ConfigError(str(where, ": ", name, " expects ", typeWithArticle(k->field), " (e.g. ",
                              formatField(*k, Config{}), ")", name == "parallel.partition" ? " or auto" : "", "; '",
                              valueText, "' is not one",
                              detail ? ": " + e.msg : ""));
      }
    }
    store(*k, v, where);
  }

  // Every key's allowed values or range, then the rules between keys.
  void validate() {
    // data.path follows data.dataset unless it was set.
    if (!origin_.count("data.path")) config_.data.path = defaultDataPath(config_.data.dataset);
    for (const Key& k : schema()) checkKey(k);

    validateModelParallel();
    const auto& t = config_.train;
    const auto& par = config_.parallel;
    // Replicas that split the batch: the workers left after the tp x pp model-parallel groups.
    const int64_t perReplica = par.tp * par.pp;
    const int64_t dp = worldSize_ / perReplica;
    if (worldSize_ > 0 && t.batchSize % dp != 0) {
      // Suggestions stay within the range, which ends at kMaxBatch.
      const int64_t below = t.batchSize / dp * dp;
      const bool aboveFits = static_cast<double>(below + dp) <= kMaxBatch;
      std::string such = below > 0 ? str(below, aboveFits ? str(" or ", below + dp) : "") : str(below + dp);
      std::string over = perReplica == 1
                             ? str(dp, " workers")
                             : str(dp, " data-parallel replicas (", worldSize_, " workers / (parallel.tp = ", par.tp,
                                   " x parallel.pp = ", par.pp, "))");
      fail("train.batch_size", str(": ", t.batchSize, " global samples cannot be split evenly over ", over,
                                   "; use a multiple of ", dp, " such as ", such));
    }
    if (!par.partition.empty()) {
      int64_t sum = 0;
      for (int64_t c : par.partition) sum += c;
      const int64_t layers = config_.model.layers + 2;
      if (par.pp < 2)
        fail("parallel.partition", str(": a partition splits the layers over parallel.pp > 1 stages (now ", par.pp,
                                       originNote("parallel.pp"), "); set parallel.pp or remove the partition"));
      const int64_t stages = par.pp * par.virtualStages;
      if (static_cast<int64_t>(par.partition.size()) != stages || sum != layers)
        fail("parallel.partition", str(": ", par.partition.size(), " stage(s) holding ", sum, " layers; give ",
                                       par.virtualStages > 1 ? str("parallel.pp x virtual_stages = ", par.pp, " x ",
                                                                   par.virtualStages, " = ", stages)
                                                             : str("parallel.pp = ", par.pp, originNote("parallel.pp")),
                                       " counts that sum to model.layers + 2 = ", layers,
                                       " (the embedding, the blocks and the head)"));
      if (par.balance != "params")
        fail("parallel.balance", str(": balance = \"", par.balance, "\" chooses a partition, and parallel.partition ",
                                     "gives one; set one of them"));
    }
    if (par.schedule != "none" && par.pp < 2)
      fail("parallel.schedule", str(": schedule \"", par.schedule, "\" runs the stages of a pipeline and needs "
                                    "parallel.pp > 1 (now ", par.pp, originNote("parallel.pp"),
                                    "); set parallel.pp or schedule = \"none\""));
    if (par.schedule == "interleaved" && par.virtualStages < 2)
      fail("parallel.virtual_stages", str(": schedule \"interleaved\" gives each stage several model chunks and "
                                          "needs parallel.virtual_stages >= 2 (now ", par.virtualStages,
                                          "); set virtual_stages = 2, or schedule = \"1f1b\" for one chunk"));
    if (par.virtualStages > 1 && par.schedule != "interleaved")
      fail("parallel.virtual_stages", str(": ", par.virtualStages, " model chunks per stage need schedule = ",
                                          "\"interleaved\" (now \"", par.schedule, "\"",
                                          originNote("parallel.schedule"), "); set virtual_stages = 1 or the schedule"));
    if (par.virtualStages > 1 && par.pp * par.virtualStages > config_.model.layers + 2)
      fail("parallel.virtual_stages", str(": parallel.pp x virtual_stages = ", par.pp, " x ", par.virtualStages, " = ",
                                          par.pp * par.virtualStages, " virtual stages for model.layers + 2 = ",
                                          config_.model.layers + 2,
                                          " layers (the embedding, the blocks and the head); use fewer chunks"));
    const bool async = par.schedule == "pipedream" || par.schedule == "2bw";
    if (par.updateEvery != 0 && par.schedule != "2bw")
      fail("parallel.update_every", str(": ", par.updateEvery, " is for schedule \"2bw\" (now \"", par.schedule,
                                        "\"", originNote("parallel.schedule"), "); remove it or set schedule = \"2bw\""));
    if (par.asyncFlush != "never" && !async)
      fail("parallel.async_flush", str(": \"", par.asyncFlush, "\" is for the asynchronous schedules (pipedream, 2bw); ",
                                       "schedule \"", par.schedule, "\"", originNote("parallel.schedule"),
                                       " drains the pipeline at every step anyway; remove it"));
    if (par.verticalSync && (!async || !par.weightStashing))
      fail("parallel.vertical_sync", str(": vertical sync chooses which stashed weight version a stage uses, so it "
                                         "needs schedule = \"pipedream\" or \"2bw\" with weight_stashing = true (now \"",
                                         par.schedule, "\", stashing ", par.weightStashing ? "on" : "off", ")"));
    if (async && config_.model.name == "gpt" && config_.model.tieEmbeddings)
      fail("model.tie_embeddings", str(": schedule \"", par.schedule, "\" updates each stage's weights at its own "
                                       "time, so the first and last stages cannot keep one tied embedding; set "
                                       "model.tie_embeddings = false"));
    if (config_.optim.clipNorm > 0 && config_.ps.servers > 0)
      fail("optim.clip_norm", str(": the parameter servers apply the workers' gradients one push at a time, so there "
                                  "is no whole-model gradient to clip; set optim.clip_norm = 0 or ps.servers = 0"));
    if (config_.optim.clipNorm > 0 && async)
      fail("optim.clip_norm", str(": schedule \"", par.schedule, "\" updates each stage at its own time, so no "
                                  "whole-model gradient norm exists at an update; set optim.clip_norm = 0 or a "
                                  "synchronous schedule (gpipe, 1f1b, zb-h1)"));
    if (par.recompute && par.schedule == "none")
      fail("parallel.recompute", str(": recomputation is done by the pipeline executor, so it needs a "
                                     "parallel.schedule (now \"none\"", originNote("parallel.schedule"), ")"));
    if (par.microBatches > 1 && par.schedule == "none")
      fail("parallel.micro_batches", str(": ", par.microBatches, " micro-batches need a pipeline schedule; set "
                                         "parallel.schedule = \"gpipe\", \"1f1b\", \"interleaved\", \"zb-h1\", "
                                         "\"pipedream\" or \"2bw\", or micro_batches = 1"));
    // Each replica cuts its batch_size / dp windows (the whole batch when the world size is not
    // known yet) into micro_batches equal parts.
    const int64_t replicaBatch = worldSize_ > 0 ? t.batchSize / std::max<int64_t>(1, dp) : t.batchSize;
    if (par.microBatches > 1 && replicaBatch % par.microBatches != 0)
      fail("parallel.micro_batches", str(": each replica's ", replicaBatch, " windows (train.batch_size = ",
                                         t.batchSize, originNote("train.batch_size"),
                                         worldSize_ > 0 ? str(" over dp = ", dp, " replicas") : std::string(),
                                         ") cannot be cut into ", par.microBatches,
                                         " equal micro-batches; use a micro_batches that divides ", replicaBatch));
    const auto& o = config_.optim;
    if (o.name == "sgd" && o.nesterov && !(o.momentum > 0))
      fail("optim.nesterov", str(": Nesterov momentum needs optim.momentum > 0", originNote("optim.momentum"),
                                 "; set optim.momentum (e.g. 0.9) or optim.nesterov = false"));
    const auto& c = config_.compression;
    if (c.method == "dgc" && o.name == "sgd" && o.momentum > 0)
      fail("compression.method", str(": DGC applies momentum itself before compressing (compression.momentum), so "
                                     "the optimizer must not add its own: set optim.momentum = 0",
                                     originNote("optim.momentum")));
    if (c.denseSteps > 0 && (c.method == "dgc" || c.method == "none" || c.method == "fp16" || c.method == "bf16"))
      fail("compression.dense_steps", str(": a dense warm-up applies to codecs and powersgd, not to compression.method = \"",
                                          c.method, "\"", c.method == "dgc" ? " (DGC warms up by its sparsity schedule, "
                                          "compression.warmup_epochs)" : "", "; set it to 0"));
    if (c.scope != "all" && (c.method == "none" || c.method == "fp16" || c.method == "bf16"))
      fail("compression.scope", str(": \"", c.scope, "\" picks where a codec or powersgd runs; compression.method = \"",
                                    c.method, "\" has none (it all-reduces ", c.method == "none" ? "float32" : c.method,
                                    " everywhere, hierarchically across hosts anyway); set compression.scope = \"all\""));
    const auto& ps = config_.ps;
    if (ps.servers > 0) {
      if (ps.backup > 0 && ps.mode != "bsp")
        fail("ps.backup", str(": backup workers are a bsp technique; ps.mode = \"", ps.mode,
                              "\" does not wait for the slowest anyway; set ps.backup = 0"));
      if (worldSize_ > 0 && ps.backup >= worldSize_)
        fail("ps.backup", str(": ", ps.backup, " backup workers of ", worldSize_,
                              " would leave no push to wait for; use at most ", worldSize_ - 1));
      if (c.method == "powersgd")
        fail("compression.method", str(": PowerSGD needs an all-reduce among the workers, which the parameter server "
                                       "replaces; with ps.servers > 0 use a codec (", [] {
                                         std::string m;
                                         for (const auto& n : compress::codecNames()) m += (m.empty() ? "" : ", ") + n;
                                         return m;
                                       }(), ") or none"));
      if (c.scope != "all")
        fail("compression.scope", str(": \"", c.scope, "\" compresses between hosts of an all-reduce; a parameter-"
                                      "server worker compresses its own pushes; set compression.scope = \"all\""));
      if (config_.precision == "fp16")
        fail("precision", ": the parameter server runs fp32 or bf16 compute (no fp16 loss scaling); "
                          "use precision = \"bf16\" or \"fp32\"");
      if (ps.restarts > 0 && (config_.ddp.transport == "shm" || config_.ddp.transport == "mpi"))
        fail("ps.restarts", str(": a restarted process reconnects over tcp only; ddp.transport = \"",
                                config_.ddp.transport, "\" cannot take it; set ddp.transport = \"tcp\" (or \"auto\")"));
    }
    for (int64_t w : config_.train.stragglerWorkers)
      if (worldSize_ > 0 && w >= worldSize_)
        fail("train.straggler_workers", str(": worker ", w, " does not exist; the workers are 0..", worldSize_ - 1));
    if (c.method != "none" && config_.ddp.commDtype != "fp32")
      fail("ddp.comm_dtype", str(": compression.method = \"", c.method, "\" already decides what goes on the wire; "
                                 "leave ddp.comm_dtype = \"fp32\" (use compression.method = \"fp16\" or \"bf16\" "
                                 "for a 16-bit cast)"));
    const auto& s = config_.schedule;
    if (s.name == "cosine" && s.minLr > o.lr)
      fail("schedule.min_lr", str(": the cosine schedule decays from optim.lr = ", formatFloat(o.lr),
                                  originNote("optim.lr"), " down to min_lr, so min_lr must not exceed it"));
    const auto& d = config_.data;
    if (t.dropLast && d.limitTrain > 0 && d.limitTrain < t.batchSize)
      fail("train.drop_last", str(": with data.limit_train = ", d.limitTrain, " samples and train.batch_size = ",
                                  t.batchSize, " every epoch would be empty; raise the limit, lower the batch size "
                                  "or set train.drop_last = false"));
  }

  const Config& config() const { return config_; }

 private:
  // The GPT's shapes, the model-parallel layout and what it cannot be combined with, in the
  // order a user would fix them: model and dataset first, then the mesh, then the rest.
  void validateModelParallel() {
    const auto& m = config_.model;
    const auto& d = config_.data;
    const auto& par = config_.parallel;
    const bool gpt = m.name == "gpt";
    if (gpt && d.dataset != "fortunes")
      fail("model.name", str(": the GPT is a byte-level language model and trains on text; set data.dataset = "
                             "\"fortunes\" (now \"", d.dataset, "\"", originNote("data.dataset"), ")"));
    if (!gpt && d.dataset == "fortunes")
      fail("data.dataset", str(": fortunes is text, which only model.name = \"gpt\" reads (now \"", m.name, "\"",
                               originNote("model.name"), "); set model.name = \"gpt\" or an image dataset"));
    if (gpt && m.embed % m.heads != 0) {
      const int64_t below = m.embed / m.heads * m.heads;
      fail("model.embed", str(": ", m.embed, " is not a multiple of model.heads = ", m.heads, originNote("model.heads"),
                              "; each head takes embed / heads dimensions; use a multiple of ", m.heads, " such as ",
                              below > 0 ? str(below, " or ") : "", below + m.heads));
    }
    if (par.tp > 1 && !gpt)
      fail("parallel.tp", str(": tensor parallelism is implemented for model.name = \"gpt\" (now \"", m.name, "\"",
                              originNote("model.name"), "); set parallel.tp = 1 or model.name = \"gpt\""));
    if (par.tp > 1 && m.heads % par.tp != 0)
      fail("parallel.tp", str(": model.heads = ", m.heads, originNote("model.heads"), " cannot be split evenly over ",
                              par.tp, " tensor-parallel workers; use a parallel.tp that divides ", m.heads,
                              " or a number of heads that is a multiple of ", par.tp));
    if (par.pp > 1 && !gpt)
      fail("parallel.pp", str(": the layer-wise split is implemented for model.name = \"gpt\" (now \"", m.name, "\"",
                              originNote("model.name"), "); set parallel.pp = 1 or model.name = \"gpt\""));
    if (par.pp > m.layers)
      fail("parallel.pp", str(": ", par.pp, " stages for model.layers = ", m.layers, originNote("model.layers"),
                              " would leave a stage without a block; use at most ", m.layers, " stages"));
    // 3D: tp splits each stage's layers; sequence parallelism stays with tp alone.
    if (par.pp > 1 && par.sequenceParallel)
      fail("parallel.sequence_parallel", str(": sequence parallelism is not combined with parallel.pp = ", par.pp,
                                             originNote("parallel.pp"), " stages yet; set sequence_parallel = false ",
                                             "(parallel.tp still splits each stage's layers)"));
    const int64_t perReplica = par.tp * par.pp;
    if (worldSize_ > 0 && worldSize_ % perReplica != 0)
      fail(par.tp > 1 ? "parallel.tp" : "parallel.pp",
           str(": ", worldSize_, " workers cannot be divided into model replicas of parallel.tp x parallel.pp = ",
               par.tp, " x ", par.pp, " = ", perReplica, " workers; run a multiple of ", perReplica,
               " workers (dp = workers / ", perReplica, ") or change parallel.tp or parallel.pp"));
    if (par.sequenceParallel && par.tp < 2)
      fail("parallel.sequence_parallel", str(": sequence parallelism splits the sequence over the tensor-parallel "
                                             "workers and needs parallel.tp > 1 (now ", par.tp,
                                             originNote("parallel.tp"), "); set parallel.tp or sequence_parallel = "
                                             "false"));
    if (par.sequenceParallel && m.context % par.tp != 0) {
      const int64_t below = m.context / par.tp * par.tp;
      fail("parallel.sequence_parallel",
           str(": model.context = ", m.context, originNote("model.context"), " positions cannot be split evenly over ",
               "parallel.tp = ", par.tp, " workers along the sequence; use a model.context that is a multiple of ",
               par.tp, " such as ", below > 0 ? str(below, " or ") : "", below + par.tp,
               ", or sequence_parallel = false"));
    }
    if (perReplica > 1 && config_.ps.servers > 0)
      fail("ps.servers", str(": the parameter server holds whole model replicas and cannot be combined with ",
                             "parallel.tp = ", par.tp, " or parallel.pp = ", par.pp, "; set ps.servers = 0 or ",
                             "parallel.tp = parallel.pp = 1"));
    // The GPT strategies all-reduce dense gradients (16-bit at most): a codec's per-bucket state
    // (residuals, momentum) has no place in their checkpoints, and at tp > 1 each shard's codec
    // would see only a part of every tensor. TensorParallelStrategy refuses the same at run time.
    const std::string& method = config_.compression.method;
    if (gpt && method != "none" && method != "fp16" && method != "bf16")
      fail("compression.method", str(": gradient compression is not supported for model.name = \"gpt\"",
                                     originNote("model.name"), " (at any parallel.tp, now ", par.tp,
                                     "): its codecs keep per-bucket state that GPT checkpoints do not hold; use "
                                     "none, fp16 or bf16 (a 16-bit all-reduce)"));
  }

  static std::string trim(const std::string& s) {
    size_t b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
    return b == std::string::npos ? "" : s.substr(b, e - b + 1);
  }

  // Stores `v` into the key's field if the types agree (an integer is accepted for a float).
  void store(const Key& key, const Value& v, const std::string& where) {
    auto wrongType = [&] {
      return ConfigError(str(where, ": ", key.name, " = ", v.text, " has the wrong type: expected ",
                             typeWithArticle(key.field), " (e.g. ", formatField(key, Config{}), ")",
                             key.name == "parallel.partition" ? " or \"auto\"" : "", ", got ", kindName(v.kind)));
    };
    std::visit(
        [&](auto get) {
          auto& field = get(config_);
          using T = std::decay_t<decltype(field)>;
          if constexpr (std::is_same_v<T, std::string>) {
            if (v.kind != Value::Kind::kString) throw wrongType();
            field = v.s;
          } else if constexpr (std::is_same_v<T, bool>) {
            if (v.kind != Value::Kind::kBool) throw wrongType();
            field = v.b;
          } else if constexpr (std::is_same_v<T, double>) {
            if (v.kind == Value::Kind::kFloat) field = v.f;
            else if (v.kind == Value::Kind::kInt) field = static_cast<double>(v.i);
            else throw wrongType();
          } else if constexpr (std::is_same_v<T, int64_t>) {
            if (v.kind != Value::Kind::kInt) throw wrongType();
            field = v.i;
          } else if constexpr (std::is_same_v<T, uint64_t>) {
            if (v.kind != Value::Kind::kInt) throw wrongType();
            if (v.i < 0)
              throw ConfigError(str(where, ": ", key.name, " = ", v.text, " is out of range: it must be ",
                                    key.range.describe()));
            field = static_cast<uint64_t>(v.i);
          } else if (key.name == "parallel.partition" && v.kind == Value::Kind::kString && v.s == "auto") {
            // The spelling of a partition balanced by measured time.
            field.clear();
            config_.parallel.balance = "time";
            origin_["parallel.balance"] = where;
          } else {
            if (v.kind != Value::Kind::kIntArray) throw wrongType();
            field = v.a;
          }
        },
        key.field);
    origin_[key.name] = where;
  }

  // " (set at run.toml:4)" or " (default)" after a value named in a message about another key.
  std::string originNote(const std::string& name) const {
    auto it = origin_.find(name);
    return it == origin_.end() ? " (default)" : " (set at " + it->second + ")";
  }

  // Throws "<where>: <name> = <value><what>"; `what` starts with its own separator.
  [[noreturn]] void fail(const std::string& name, const std::string& what) const {
    const Key& key = *findKey(name);
    auto it = origin_.find(name);
    std::string prefix = it == origin_.end() ? "" : it->second + ": ";
    throw ConfigError(str(prefix, name, " = ", formatField(key, config_), it == origin_.end() ? " (default)" : "",
                          what));
  }

  void checkKey(const Key& key) {
    std::visit(
        [&](auto get) {
          const auto& v = get(config_);
          using T = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<T, std::string>) {
            if (!key.choices.empty() && std::find(key.choices.begin(), key.choices.end(), v) == key.choices.end())
              fail(key.name, str(" is not allowed; the choices are: ", choicesText(key)));
            if (key.nonEmpty && v.empty()) fail(key.name, " is not allowed: it must not be empty");
          } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
            bool ok = !(key.nonEmpty && v.empty());
            for (int64_t x : v) ok = ok && key.range.contains(static_cast<double>(x));
            if (!ok) fail(key.name, str(" is not allowed: it must be a list of integers, ", allowedText(key)));
          } else if constexpr (std::is_same_v<T, double> || std::is_same_v<T, int64_t>) {
            if (!key.range.contains(static_cast<double>(v)))
              fail(key.name, str(" is out of range: it must be ", key.range.describe(),
                                 key.rangeHint.empty() ? "" : "; " + key.rangeHint));
          }
        },
        key.field);
  }

  int worldSize_;
  Config config_;
  std::map<std::string, std::string> origin_;  // key -> where it was last set
};

}  // namespace

Config parseConfig(const std::string& text, const std::string& source, const std::vector<std::string>& overrides,
                   int worldSize) {
  Builder b(worldSize);
  b.readFile(text, source);
  for (const std::string& o : overrides) b.applyOverride(o);
  b.validate();
  return b.config();
}

Config loadConfig(const std::string& path, const std::vector<std::string>& overrides, int worldSize) {
  const std::string hint = "; pass an existing TOML file (the keys are in docs/train-config.md)";
  // Opened without blocking (a FIFO would wait for a writer), then checked to be a regular
  // file: a directory reads as empty text on Linux, which would pass for an empty config.
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) throw ConfigError(str("cannot read the config file '", path, "': ", std::strerror(errno), hint));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw ConfigError(str("cannot read the config file '", path, "': ", std::strerror(errno)));
  if (S_ISDIR(st.st_mode)) throw ConfigError(str("the config file '", path, "' is a directory", hint));
  if (!S_ISREG(st.st_mode))
    throw ConfigError(str("the config file '", path, "' is not a regular file (a device, pipe or socket)", hint));
  // A config is a few KiB; anything this large is the wrong file.
  constexpr off_t kMaxConfigBytes = off_t{16} << 20;
  if (st.st_size > kMaxConfigBytes)
    throw ConfigError(str("the config file '", path, "' is ", st.st_size, " bytes, over the 16 MiB a config may be",
                          hint));
  std::string text;
  char buf[64 * 1024];
  for (;;) {
    ssize_t r = ::read(fd, buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw ConfigError(str("cannot read the config file '", path, "': ", std::strerror(errno)));
    if (r == 0) break;
    text.append(buf, static_cast<size_t>(r));
    if (text.size() > static_cast<size_t>(kMaxConfigBytes))
      throw ConfigError(str("the config file '", path, "' grew past 16 MiB while it was read", hint));
  }
  return parseConfig(text, path, overrides, worldSize);
}

std::string defaultDataPath(const std::string& dataset) {
  return dataset == "fortunes" ? kFortunesPath : kFashionMnistPath;
}

Config defaultConfig(const std::vector<std::string>& overrides, int worldSize) {
  return parseConfig("", "(defaults)", overrides, worldSize);
}

std::string toToml(const Config& c) {
  std::string out = "# chorus train configuration, resolved (file, --set overrides and defaults)\n";
  std::string section;
  for (const Key& k : schema()) {
    if (k.section() != section) {
      section = k.section();
      out += "\n[" + section + "]\n";
    }
    out += k.leaf() + " = " + formatField(k, c) + "\n";
  }
  return out;
}

std::string configReference() {
  const Config defaults;
  std::string out;
  for (const Section& s : sections()) {
    if (!out.empty()) out += "\n";
    out += (s.name.empty() ? std::string("top level") : "[" + s.name + "]") + ": " + s.meaning + "\n";
    for (const Key& k : schema()) {
      if (k.section() != s.name) continue;
      std::string head = str("  ", k.leaf(), " = ", formatField(k, defaults));
      std::string allowed = allowedText(k);
      std::string type = typeName(k.field) + (allowed.empty() ? "" : ", " + allowed);
      head += std::string(head.size() < 34 ? 34 - head.size() : 2, ' ');
      out += head + type + "\n" + std::string(6, ' ') + k.meaning + "\n";
    }
  }
  return out;
}

std::vector<std::string> configKeys() {
  std::vector<std::string> out;
  for (const Key& k : schema()) out.push_back(k.name);
  return out;
}

compress::CodecConfig codecConfig(const CompressionConfig& c, int64_t workers) {
  compress::CodecConfig k;
  k.method = c.method;
  k.ratio = c.ratio;
  k.residualDecay = c.residualDecay;
  k.threshold = c.threshold;
  k.levels = c.method == "qsgd" ? c.levels : 0;
  k.errorFeedback = c.errorFeedback;
  k.layerwise = c.layerwise;
  k.sparsity = c.sparsity;
  k.warmupEpochs = c.warmupEpochs;
  k.momentum = c.momentum;
  k.clipNorm = c.clipNorm;
  k.worldSize = workers;
  return k;
}

uint64_t codecSeed(const CompressionConfig& c) { return c.seed * 0x9E3779B97F4A7C15ull + 1; }

}  // namespace chorus::train
