// The training configuration: the TOML reader, the schema's checks and their messages, the
// --set overrides, the world-size rules, the toToml round trip, and that docs/train-config.md
// shows the reference the code prints.
#include "chorus/train/config.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "chorus/common/error.h"

namespace chorus::train {
namespace {

using Overrides = std::vector<std::string>;

Config parse(const std::string& text, const Overrides& overrides = {}, int worldSize = 1) {
  return parseConfig(text, "run.toml", overrides, worldSize);
}

// The ConfigError message of parsing `text` with `overrides`; fails the test if none is thrown.
std::string errorOf(const std::string& text, const Overrides& overrides = {}, int worldSize = 1) {
  try {
    parse(text, overrides, worldSize);
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no ConfigError for:\n" << text;
  return "";
}

#define EXPECT_CONTAINS(haystack, needle) EXPECT_NE(std::string(haystack).find(needle), std::string::npos) \
    << "  message: " << (haystack) << "\n  expected to contain: " << (needle)

TEST(Config, DefaultsAreValidAndEqualTheStructDefaults) {
  for (int w : {1, 2, 4, 8}) EXPECT_EQ(defaultConfig({}, w), Config{}) << w;
  EXPECT_EQ(parse(""), Config{});
  EXPECT_EQ(parse("# only a comment\n\n   \n"), Config{});
}

TEST(Config, FullFileSetsEveryField) {
  const std::string text = R"(# a full run
name = "fmnist \"cnn\"\tv2"   # escapes
precision = 'bf16'

[data]
dataset = "fashion-mnist"
path = "/data/fm"
limit_train = 1_000
limit_test = 500

[model]
name = "cnn"
hidden = [1024,
          512,   # trailing comma and comments inside arrays
         ]
channels = [16, 32, 64]
fc = 256
layers = 6
heads = 8
embed = 64
context = 96
dropout = 0.125
tie_embeddings = false

[optim]
name = "adamw"
lr = 3e-4
momentum = 0
nesterov = false
weight_decay = 0.01
beta1 = 0.8
beta2 = 0.95
eps = 1E-6

[schedule]
name = "step"
warmup_steps = 100
warmup_start = 0.25
min_lr = 1e-5
step_epochs = 2
gamma = 0.5

[train]
epochs = 7
batch_size = 256
max_steps = 1000
seed = 42
shuffle = false
drop_last = true
eval = false
log_every = 5
threads = 2

[parallel]
tp = 1
sequence_parallel = false
pp = 1
schedule = "none"

[ddp]
bucket_mb = 1.5
find_unused = true
broadcast_buffers = false
comm_dtype = "bf16"
algo = "ring"
transport = "tcp"

[amp]
init_scale = 1024
growth_factor = 4.0
backoff_factor = 0.25
growth_interval = 100

[output]
dir = "runs/x"
checkpoint_every = 50
checkpoint_epoch = false
keep = 3
progress = "lines"
overwrite = true
)";
  Config c = parse(text, {}, 4);
  EXPECT_EQ(c.name, "fmnist \"cnn\"\tv2");
  EXPECT_EQ(c.precision, "bf16");
  EXPECT_EQ(c.data.dataset, "fashion-mnist");
  EXPECT_EQ(c.data.path, "/data/fm");
  EXPECT_EQ(c.data.limitTrain, 1000);
  EXPECT_EQ(c.data.limitTest, 500);
  EXPECT_EQ(c.model.name, "cnn");
  EXPECT_EQ(c.model.hidden, (std::vector<int64_t>{1024, 512}));
  EXPECT_EQ(c.model.channels, (std::vector<int64_t>{16, 32, 64}));
  EXPECT_EQ(c.model.fc, 256);
  EXPECT_EQ(c.model.layers, 6);
  EXPECT_EQ(c.model.heads, 8);
  EXPECT_EQ(c.model.embed, 64);
  EXPECT_EQ(c.model.context, 96);
  EXPECT_DOUBLE_EQ(c.model.dropout, 0.125);
  EXPECT_FALSE(c.model.tieEmbeddings);
  EXPECT_EQ(c.parallel, ParallelConfig{});
  EXPECT_EQ(c.optim.name, "adamw");
  EXPECT_DOUBLE_EQ(c.optim.lr, 3e-4);
  EXPECT_DOUBLE_EQ(c.optim.momentum, 0.0);  // an integer is accepted for a float
  EXPECT_FALSE(c.optim.nesterov);
  EXPECT_DOUBLE_EQ(c.optim.weightDecay, 0.01);
  EXPECT_DOUBLE_EQ(c.optim.beta1, 0.8);
  EXPECT_DOUBLE_EQ(c.optim.beta2, 0.95);
  EXPECT_DOUBLE_EQ(c.optim.eps, 1e-6);
  EXPECT_EQ(c.schedule.name, "step");
  EXPECT_EQ(c.schedule.warmupSteps, 100);
  EXPECT_DOUBLE_EQ(c.schedule.warmupStart, 0.25);
  EXPECT_DOUBLE_EQ(c.schedule.minLr, 1e-5);
  EXPECT_EQ(c.schedule.stepEpochs, 2);
  EXPECT_DOUBLE_EQ(c.schedule.gamma, 0.5);
  EXPECT_EQ(c.train.epochs, 7);
  EXPECT_EQ(c.train.batchSize, 256);
  EXPECT_EQ(c.train.maxSteps, 1000);
  EXPECT_EQ(c.train.seed, 42u);
  EXPECT_FALSE(c.train.shuffle);
  EXPECT_TRUE(c.train.dropLast);
  EXPECT_FALSE(c.train.eval);
  EXPECT_EQ(c.train.logEvery, 5);
  EXPECT_EQ(c.train.threads, 2);
  EXPECT_DOUBLE_EQ(c.ddp.bucketMb, 1.5);
  EXPECT_TRUE(c.ddp.findUnused);
  EXPECT_FALSE(c.ddp.broadcastBuffers);
  EXPECT_EQ(c.ddp.commDtype, "bf16");
  EXPECT_EQ(c.ddp.algo, "ring");
  EXPECT_EQ(c.ddp.transport, "tcp");
  EXPECT_DOUBLE_EQ(c.amp.initScale, 1024.0);
  EXPECT_DOUBLE_EQ(c.amp.growthFactor, 4.0);
  EXPECT_DOUBLE_EQ(c.amp.backoffFactor, 0.25);
  EXPECT_EQ(c.amp.growthInterval, 100);
  EXPECT_EQ(c.output.dir, "runs/x");
  EXPECT_EQ(c.output.checkpointEvery, 50);
  EXPECT_FALSE(c.output.checkpointEpoch);
  EXPECT_EQ(c.output.keep, 3);
  EXPECT_EQ(c.output.progress, "lines");
  EXPECT_TRUE(c.output.overwrite);
  EXPECT_FALSE(Config{}.output.overwrite);
}

TEST(Config, DottedKeysCrlfAndUnicodeEscapes) {
  Config c = parse("optim.lr = 0.5\r\ntrain . epochs = 4\r\nname = \"caf\\u00e9 \\U0001F600\"\r\n");
  EXPECT_DOUBLE_EQ(c.optim.lr, 0.5);
  EXPECT_EQ(c.train.epochs, 4);
  EXPECT_EQ(c.name, "caf\xc3\xa9 \xf0\x9f\x98\x80");
}

// Syntax errors name the file and line and say what was expected there.
TEST(Config, SyntaxErrorsNameTheLineAndWhatWasExpected) {
  struct Case {
    std::string text, expected;
  };
  const std::vector<Case> cases = {
      {"[optim]\nlr 0.1\n", "run.toml:2: expected '=' after the key 'lr', got '0'"},
      {"[optim]\n\nname = \"sgd\n", "run.toml:3: unterminated string"},
      {"[optim\nlr = 1\n", "run.toml:1: expected ']' to close the section header [optim"},
      {"[optim]\nlr = 0.1 0.2\n", "run.toml:2: expected the end of the line after the value of 'lr', got '0'"},
      {"[optim]\nlr = \n", "run.toml:2: expected a value"},
      {"[optim]\nlr = abc\n", "run.toml:2: expected a value: a \"string\", a number, true, false or [integers], got 'abc'"},
      {"[optim]\nlr = 1.\n", "run.toml:2: expected digits after the '.' in '1.'"},
      {"[optim]\nlr = 1e\n", "run.toml:2: expected digits after the exponent"},
      {"[train]\nepochs = 007\n", "run.toml:2: leading zeros are not allowed"},
      {"[train]\nseed = 99999999999999999999\n", "run.toml:2: the integer '99999999999999999999' does not fit in 64 bits"},
      {"[model]\nhidden = [1, 2\n\n", "run.toml:4: unterminated array: expected ']'"},
      {"[model]\nhidden = [1 2]\n", "run.toml:2: expected ',' or ']' in the array, got '2'"},
      {"[model]\nhidden = [1, 2.5]\n", "run.toml:2: arrays may hold integers only, got a float 2.5"},
      {"name = \"a\\qb\"\n", "run.toml:1: unknown escape '\\q'"},
      {"[[optim]]\n", "run.toml:1: arrays of tables"},
      {"= 3\n", "run.toml:1: expected a key"},
      {"\"quoted\" = 1\n", "run.toml:1: quoted keys are not supported"},
      {"name = \"\"\"x\"\"\"\n", "run.toml:1: multi-line strings"},
  };
  for (const Case& c : cases) EXPECT_CONTAINS(errorOf(c.text), c.expected);
}

TEST(Config, UnknownKeySuggestsTheClosest) {
  EXPECT_EQ(errorOf("\n[train]\nepoch = 3\n"), "run.toml:3: unknown key 'train.epoch' (did you mean train.epochs?)");
  EXPECT_CONTAINS(errorOf("[optim]\nweightdecay = 0.1\n"), "(did you mean optim.weight_decay?)");
  // A known key under the wrong section.
  EXPECT_CONTAINS(errorOf("[train]\nlr = 0.1\n"), "run.toml:2: unknown key 'train.lr' (did you mean optim.lr?)");
  // Nothing close: the section's keys are listed.
  std::string msg = errorOf("[ddp]\ncompletely_different = 1\n");
  EXPECT_CONTAINS(msg, "run.toml:2: unknown key 'ddp.completely_different'; the keys of [ddp] are: bucket_mb, ");
  EXPECT_CONTAINS(msg, "transport");
}

TEST(Config, UnknownSection) {
  EXPECT_CONTAINS(errorOf("[optim]\n[optm]\nlr = 1\n"), "run.toml:2: unknown section [optm] (did you mean [optim]?)");
  std::string msg = errorOf("[zzzzzzzz]\n");
  EXPECT_CONTAINS(msg, "run.toml:1: unknown section [zzzzzzzz]; the sections are: data, model, optim, schedule");
}

TEST(Config, WrongTypeSaysTheExpectedType) {
  EXPECT_EQ(errorOf("[train]\nbatch_size = \"big\"\n"),
            "run.toml:2: train.batch_size = \"big\" has the wrong type: expected an integer (e.g. 128), got a string");
  EXPECT_CONTAINS(errorOf("[train]\nepochs = 2.5\n"), "run.toml:2: train.epochs = 2.5 has the wrong type: expected an integer");
  EXPECT_CONTAINS(errorOf("[optim]\nlr = true\n"), "expected a float (e.g. 0.05), got a boolean");
  EXPECT_CONTAINS(errorOf("[optim]\nname = 3\n"), "optim.name = 3 has the wrong type: expected a string");
  EXPECT_CONTAINS(errorOf("[train]\nshuffle = 1\n"), "expected a boolean (e.g. true), got an integer");
  EXPECT_CONTAINS(errorOf("[model]\nhidden = 512\n"), "expected an array of integers (e.g. [512, 256]), got an integer");
  // An integer is accepted for a float.
  EXPECT_DOUBLE_EQ(parse("[optim]\nlr = 1\n").optim.lr, 1.0);
}

TEST(Config, DuplicateKeyAndSection) {
  EXPECT_EQ(errorOf("[optim]\nlr = 0.1\nname = \"sgd\"\nlr = 0.2\n"),
            "run.toml:4: duplicate key optim.lr (already set on line 2); keep one of the two");
  EXPECT_CONTAINS(errorOf("optim.lr = 0.1\n[optim]\nlr = 0.2\n"), "run.toml:3: duplicate key optim.lr");
  EXPECT_CONTAINS(errorOf("[optim]\nlr = 0.1\n[train]\n[optim]\n"),
                  "run.toml:4: section [optim] appears twice (first on line 1)");
}

TEST(Config, EnumerationsListTheChoices) {
  EXPECT_EQ(errorOf("[optim]\n\nname = \"adamx\"\n"),
            "run.toml:3: optim.name = \"adamx\" is not allowed; the choices are: sgd, adam, adamw");
  struct Case {
    std::string key, choices;
  };
  const std::vector<Case> cases = {
      {"precision", "fp32, bf16, fp16"},
      {"data.dataset", "fashion-mnist, cifar10, fortunes"},
      {"model.name", "mlp, cnn, gpt"},
      {"parallel.schedule", "none, gpipe, 1f1b, interleaved, zb-h1, pipedream, 2bw"},
      {"parallel.balance", "params, time"},
      {"schedule.name", "constant, cosine, step"},
      {"ddp.comm_dtype", "fp32, fp16, bf16"},
      {"ddp.algo", "auto, ring, hd, tree, direct, hier, mpi"},
      {"ddp.transport", "\"\", auto, shm, tcp, mpi, mixed"},
      {"output.progress", "auto, bar, lines, none"},
  };
  for (const Case& c : cases) {
    std::string msg = errorOf("", {c.key + "=bogus"});
    EXPECT_EQ(msg, "--set " + c.key + "=bogus: " + c.key + " = \"bogus\" is not allowed; the choices are: " + c.choices);
  }
  // Every listed choice is accepted.
  EXPECT_EQ(parse("", {"ddp.transport=", "ddp.algo=hd", "precision=fp16", "output.progress=none"}).ddp.transport, "");
}

TEST(Config, RangesNameTheBound) {
  struct Case {
    std::string override, expected;
  };
  const std::vector<Case> cases = {
      {"optim.lr=0", "optim.lr = 0.0 is out of range: it must be > 0"},
      {"optim.lr=-0.1", "it must be > 0"},
      {"train.epochs=0", "train.epochs = 0 is out of range: it must be in [1, 1000000]"},
      {"train.batch_size=0", "train.batch_size = 0 is out of range: it must be in [1, 2147483648]"},
      {"model.layers=0", "model.layers = 0 is out of range: it must be in [1, 1024]"},
      {"model.heads=0", "model.heads = 0 is out of range: it must be in [1, 1024]"},
      {"model.embed=0", "model.embed = 0 is out of range: it must be in [1, 65536]"},
      {"model.context=0", "model.context = 0 is out of range: it must be in [1, 65536]"},
      {"model.dropout=1", "model.dropout = 1.0 is out of range: it must be in [0, 1)"},
      {"model.dropout=-0.1", "it must be in [0, 1)"},
      {"parallel.tp=0", "parallel.tp = 0 is out of range: it must be in [1, 1024]"},
      {"parallel.pp=0", "parallel.pp = 0 is out of range: it must be in [1, 1024]"},
      {"ddp.bucket_mb=0", "ddp.bucket_mb = 0.0 is out of range: it must be in (0, 65536]"},
      {"optim.momentum=1", "optim.momentum = 1.0 is out of range: it must be in [0, 1)"},
      {"optim.momentum=-0.5", "it must be in [0, 1)"},
      {"optim.beta1=1.0", "optim.beta1 = 1.0 is out of range: it must be in [0, 1)"},
      {"optim.beta2=1.5", "optim.beta2 = 1.5 is out of range: it must be in [0, 1)"},
      {"optim.eps=0", "optim.eps = 0.0 is out of range: it must be > 0"},
      {"optim.weight_decay=-1", "it must be >= 0"},
      {"amp.growth_factor=1", "amp.growth_factor = 1.0 is out of range: it must be > 1"},
      {"amp.backoff_factor=1", "amp.backoff_factor = 1.0 is out of range: it must be in (0, 1)"},
      {"amp.backoff_factor=0", "it must be in (0, 1)"},
      {"amp.init_scale=0", "it must be > 0"},
      {"amp.growth_interval=0", "it must be >= 1"},
      {"output.keep=0", "output.keep = 0 is out of range: it must be >= 1"},
      {"train.threads=-1", "train.threads = -1 is out of range: it must be in [0, 1024]"},
      {"data.limit_train=-5", "data.limit_train = -5 is out of range: it must be >= 0"},
      {"data.limit_test=-1", "it must be >= 0"},
      {"train.log_every=0", "it must be >= 1"},
      {"train.seed=-1", "train.seed = -1 is out of range: it must be >= 0"},
      {"schedule.gamma=0", "it must be in (0, 1]"},
      {"schedule.warmup_start=1.5", "it must be in [0, 1]"},
      {"model.hidden=[]", "model.hidden = [] is not allowed: it must be a list of integers, non-empty, each >= 1"},
      {"model.channels=[32, 0]", "model.channels = [32, 0] is not allowed: it must be a list of integers, non-empty"},
      {"model.fc=0", "it must be >= 1"},
      {"output.dir=", "output.dir = \"\" is not allowed: it must not be empty"},
  };
  for (const Case& c : cases) {
    std::string msg = errorOf("", {c.override});
    EXPECT_CONTAINS(msg, "--set " + c.override + ": ");
    EXPECT_CONTAINS(msg, c.expected);
  }
  // From a file, the message names the line the value came from.
  EXPECT_EQ(errorOf("[optim]\nname = \"sgd\"\nmomentum = 1.0\n"),
            "run.toml:3: optim.momentum = 1.0 is out of range: it must be in [0, 1)");
  // Range ends that are allowed.
  Config c = parse("", {"optim.momentum=0", "schedule.gamma=1", "train.threads=0", "schedule.warmup_start=1"});
  EXPECT_DOUBLE_EQ(c.optim.momentum, 0.0);
}

// Keys that start threads or processes, or multiply into step counts, have an upper bound:
// unbounded, `--set train.threads=100000` hung a worker creating threads.
TEST(Config, ThreadAndProcessCountsAreBounded) {
  struct Case {
    std::string override, expected;
  };
  const std::string cores = "; this machine has ";
  const std::vector<Case> cases = {
      {"train.threads=100000", "train.threads = 100000 is out of range: it must be in [0, 1024]" + cores},
      {"ps.apply_threads=100000", "ps.apply_threads = 100000 is out of range: it must be in [1, 1024]" + cores},
      {"ps.servers=100000", "ps.servers = 100000 is out of range: it must be in [0, 1024]; each server is a process"},
      {"train.epochs=9223372036854775807", "it must be in [1, 1000000]"},
      {"compression.levels=1000", "compression.levels = 1000 is out of range: it must be in [1, 127]"},
      {"compression.rank=1000000000", "it must be in [1, 65536]"},
      {"train.straggler_delay_ms=9223372036854775807", "it must be in [0, 3600000]"},
      {"train.straggler_factor=1e300", "it must be in [1, 1000]"},
      {"ddp.bucket_mb=1e300", "it must be in (0, 65536]"},
      {"parallel.tp=100000", "parallel.tp = 100000 is out of range: it must be in [1, 1024]"},
      {"parallel.pp=100000", "parallel.pp = 100000 is out of range: it must be in [1, 1024]"},
      {"model.layers=9223372036854775807", "it must be in [1, 1024]"},
      {"model.embed=1000000", "it must be in [1, 65536]"},
      {"model.context=1000000", "it must be in [1, 65536]"},
      {"train.batch_size=2147483649",
       "train.batch_size = 2147483649 is out of range: it must be in [1, 2147483648]; a global batch above 2^31 "
       "samples would overflow the step counts"},
      // planSteps multiplied this into sample counts and overflowed (issue 11).
      {"train.batch_size=9223372036854775807", "it must be in [1, 2147483648]"},
  };
  for (const Case& c : cases) {
    std::string msg = errorOf("", {c.override});
    EXPECT_CONTAINS(msg, "--set " + c.override + ": ");
    EXPECT_CONTAINS(msg, c.expected);
  }
  // The upper ends themselves are allowed.
  Config c = parse("", {"train.threads=1024", "ps.apply_threads=1024", "train.epochs=1000000", "compression.levels=127",
                        "compression.rank=65536", "ddp.bucket_mb=65536"});
  EXPECT_EQ(c.train.threads, 1024);
  EXPECT_EQ(c.ps.applyThreads, 1024);
  EXPECT_EQ(parse("", {"ps.servers=1024"}, 0).ps.servers, 1024);
}

TEST(Config, BatchSizeMustSplitOverTheWorkers) {
  EXPECT_EQ(errorOf("", {}, 3),
            "train.batch_size = 128 (default): 128 global samples cannot be split evenly over 3 workers; "
            "use a multiple of 3 such as 126 or 129");
  EXPECT_EQ(errorOf("[train]\nbatch_size = 100\n", {}, 8),
            "run.toml:2: train.batch_size = 100: 100 global samples cannot be split evenly over 8 workers; "
            "use a multiple of 8 such as 96 or 104");
  EXPECT_CONTAINS(errorOf("", {"train.batch_size=2"}, 3),
                  "--set train.batch_size=2: train.batch_size = 2: 2 global samples cannot be split evenly over 3 "
                  "workers; use a multiple of 3 such as 3");
  EXPECT_EQ(parse("", {"train.batch_size=129"}, 3).train.batchSize, 129);
  for (int w : {1, 2, 4, 8}) EXPECT_NO_THROW(parse("[train]\nbatch_size = 128\n", {}, w)) << w;
  EXPECT_THROW(parse("", {}, -1), ConfigError);
  // 0 workers: not known yet (chorus train reads ps.servers first); the split is not checked.
  EXPECT_NO_THROW(parse("[train]\nbatch_size = 100\n", {}, 0));
  // Found by fuzz/config_fuzz.cc's UBSan build (fuzz/corpus/config/finding-batch-size-overflow):
  // the multiple above a batch size near INT64_MAX overflowed while the message was built. The
  // batch is now at most 2^31; at the top of the range the suggestions stay inside it.
  EXPECT_EQ(errorOf("[train]\nbatch_size = 2147483647\n", {}, 2),
            "run.toml:2: train.batch_size = 2147483647: 2147483647 global samples cannot be split evenly over 2 "
            "workers; use a multiple of 2 such as 2147483646 or 2147483648");
  EXPECT_EQ(errorOf("[train]\nbatch_size = 2147483648\n", {}, 3),
            "run.toml:2: train.batch_size = 2147483648: 2147483648 global samples cannot be split evenly over 3 "
            "workers; use a multiple of 3 such as 2147483646");
  EXPECT_EQ(parse("[train]\nbatch_size = 2147483648\n", {}, 2).train.batchSize, int64_t{1} << 31);
  EXPECT_CONTAINS(errorOf("[train]\nbatch_size = 9223372036854775807\n", {}, 2),
                  "run.toml:2: train.batch_size = 9223372036854775807 is out of range: it must be in [1, 2147483648]");
}

TEST(Config, CrossKeyRules) {
  EXPECT_EQ(errorOf("[optim]\nmomentum = 0.0\nnesterov = true\n"),
            "run.toml:3: optim.nesterov = true: Nesterov momentum needs optim.momentum > 0 (set at run.toml:2); "
            "set optim.momentum (e.g. 0.9) or optim.nesterov = false");
  EXPECT_TRUE(parse("[optim]\nnesterov = true\n").optim.nesterov);
  // DGC applies momentum itself; a compression method decides the wire format on its own.
  EXPECT_CONTAINS(errorOf("", {"compression.method=dgc"}),
                  "--set compression.method=dgc: compression.method = \"dgc\": DGC applies momentum itself");
  EXPECT_NO_THROW(parse("", {"compression.method=dgc", "optim.momentum=0"}));
  EXPECT_CONTAINS(errorOf("", {"compression.method=dgc", "optim.momentum=0", "compression.dense_steps=10"}),
                  "DGC warms up by its sparsity schedule");
  EXPECT_CONTAINS(errorOf("", {"compression.dense_steps=10"}), "not to compression.method = \"none\"");
  EXPECT_NO_THROW(parse("", {"compression.method=powersgd", "compression.dense_steps=10"}));
  EXPECT_CONTAINS(errorOf("", {"compression.method=topk", "ddp.comm_dtype=fp16"}),
                  "already decides what goes on the wire");
  EXPECT_CONTAINS(errorOf("", {"compression.method=top-k"}), "topk, topk_sampled, randomk");
  EXPECT_CONTAINS(errorOf("", {"compression.ratio=0"}), "compression.ratio");
  EXPECT_CONTAINS(errorOf("", {"schedule.min_lr=0.1"}),
                  "--set schedule.min_lr=0.1: schedule.min_lr = 0.1: the cosine schedule decays from optim.lr = 0.05 "
                  "(default) down to min_lr");
  EXPECT_NO_THROW(parse("", {"schedule.min_lr=0.1", "schedule.name=step"}));
  EXPECT_CONTAINS(errorOf("", {"data.limit_train=100", "train.drop_last=true"}), "every epoch would be empty");
  EXPECT_NO_THROW(parse("", {"data.limit_train=100"}));
}

TEST(Config, Overrides) {
  const std::string file = "[optim]\nname = \"sgd\"\nlr = 0.1\n";
  Config c = parse(file, {"optim.lr=0.2", "optim.name=adam", "model.hidden=[64, 32]", "name=my run",
                          "data.path=\"/x y/z\"", "train.shuffle=false", "optim.lr = 0.3 ", "name=123"});
  EXPECT_DOUBLE_EQ(c.optim.lr, 0.3);  // the later override wins
  EXPECT_EQ(c.optim.name, "adam");    // a bare word is a string
  EXPECT_EQ(c.model.hidden, (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(c.name, "123");           // a string key takes the text as written
  EXPECT_EQ(c.data.path, "/x y/z");   // a quoted TOML string
  EXPECT_FALSE(c.train.shuffle);

  EXPECT_EQ(errorOf("", {"optim.lr"}),
            "--set optim.lr: expected key=value, e.g. --set optim.lr=0.1 or --set model.hidden=[256,128]");
  EXPECT_CONTAINS(errorOf("", {"=3"}), "expected key=value");
  EXPECT_EQ(errorOf("", {"train.epoch=3"}), "--set train.epoch=3: unknown key 'train.epoch' (did you mean train.epochs?)");
  EXPECT_CONTAINS(errorOf("", {"optm.lr=3"}), "(did you mean optim.lr?)");
  EXPECT_EQ(errorOf("", {"optim.lr=abc"}), "--set optim.lr=abc: optim.lr expects a float (e.g. 0.05); 'abc' is not one");
  EXPECT_CONTAINS(errorOf("", {"train.epochs=\"3\""}), "--set train.epochs=\"3\": train.epochs = \"3\" has the wrong type");
  EXPECT_EQ(errorOf("", {"model.hidden=[1,"}),
            "--set model.hidden=[1,: model.hidden expects an array of integers (e.g. [512, 256]); '[1,' is not one: "
            "unterminated array: expected ']'");
  // An override fixes a bad value in the file; the file's other errors still count.
  EXPECT_DOUBLE_EQ(parse("[optim]\nlr = -1\n", {"optim.lr=0.5"}).optim.lr, 0.5);
  EXPECT_CONTAINS(errorOf("[optim]\nlr = 0.1\n", {"optim.lr=-2"}), "--set optim.lr=-2: optim.lr = -2.0 is out of range");
  EXPECT_EQ(defaultConfig({"train.epochs=9"}, 1).train.epochs, 9);
}

// The GPT on the fortunes text: the two go together.
Overrides gptWith(Overrides more) {
  Overrides o = {"model.name=gpt", "data.dataset=fortunes"};
  o.insert(o.end(), more.begin(), more.end());
  return o;
}

TEST(Config, DataPathFollowsTheDatasetUnlessSet) {
  EXPECT_EQ(parse("", gptWith({})).data.path, "/usr/share/games/fortunes");
  EXPECT_EQ(parse("").data.path, "/usr/share/datasets/fashion-mnist");
  EXPECT_EQ(parse("", {"data.dataset=cifar10"}).data.path, "/usr/share/datasets/fashion-mnist");
  EXPECT_EQ(parse("[data]\npath = \"/my/text\"\n", gptWith({})).data.path, "/my/text");
  EXPECT_EQ(parse("", gptWith({"data.path=/other"})).data.path, "/other");
  // Set to fashion-mnist's folder on purpose: kept.
  EXPECT_EQ(parse("", gptWith({"data.path=/usr/share/datasets/fashion-mnist"})).data.path,
            "/usr/share/datasets/fashion-mnist");
  EXPECT_EQ(defaultDataPath("fortunes"), "/usr/share/games/fortunes");
  EXPECT_EQ(defaultDataPath("fashion-mnist"), "/usr/share/datasets/fashion-mnist");
  EXPECT_EQ(defaultConfig(gptWith({}), 1).data.path, "/usr/share/games/fortunes");
}

TEST(Config, GptNeedsFortunesAndViceVersa) {
  EXPECT_EQ(errorOf("", {"model.name=gpt"}),
            "--set model.name=gpt: model.name = \"gpt\": the GPT is a byte-level language model and trains on text; "
            "set data.dataset = \"fortunes\" (now \"fashion-mnist\" (default))");
  EXPECT_EQ(errorOf("[model]\nname = \"cnn\"\n", {"data.dataset=fortunes"}),
            "--set data.dataset=fortunes: data.dataset = \"fortunes\": fortunes is text, which only model.name = "
            "\"gpt\" reads (now \"cnn\" (set at run.toml:2)); set model.name = \"gpt\" or an image dataset");
  Config c = parse("", gptWith({}));
  EXPECT_EQ(c.model.name, "gpt");
  EXPECT_EQ(c.model.layers, 4);
  EXPECT_EQ(c.model.heads, 4);
  EXPECT_EQ(c.model.embed, 128);
  EXPECT_EQ(c.model.context, 128);
  EXPECT_DOUBLE_EQ(c.model.dropout, 0.0);
  EXPECT_TRUE(c.model.tieEmbeddings);
  EXPECT_EQ(c.parallel, ParallelConfig{});
  // fp16 with the GPT is allowed.
  EXPECT_EQ(parse("", gptWith({"precision=fp16"})).precision, "fp16");
}

TEST(Config, GptShapes) {
  EXPECT_EQ(errorOf("", gptWith({"model.embed=130"})),
            "--set model.embed=130: model.embed = 130: 130 is not a multiple of model.heads = 4 (default); each head "
            "takes embed / heads dimensions; use a multiple of 4 such as 128 or 132");
  EXPECT_CONTAINS(errorOf("", gptWith({"model.heads=6", "model.embed=4"})),
                  "model.embed = 4: 4 is not a multiple of model.heads = 6 (set at --set model.heads=6); each head "
                  "takes embed / heads dimensions; use a multiple of 6 such as 6");
  EXPECT_NO_THROW(parse("", gptWith({"model.heads=6", "model.embed=96"})));
  // The mlp ignores the GPT's keys.
  EXPECT_NO_THROW(parse("", {"model.embed=130"}));
}

TEST(Config, TensorParallelRules) {
  // tp must divide the heads.
  EXPECT_EQ(errorOf("[model]\nheads = 6\nembed = 96\n[parallel]\ntp = 4\n", gptWith({}), 4),
            "run.toml:5: parallel.tp = 4: model.heads = 6 (set at run.toml:2) cannot be split evenly over 4 "
            "tensor-parallel workers; use a parallel.tp that divides 6 or a number of heads that is a multiple of 4");
  Config c = parse("[model]\nheads = 6\nembed = 96\n[parallel]\ntp = 3\n", gptWith({}), 6);
  EXPECT_EQ(c.parallel.tp, 3);
  // The vocabulary (256 bytes) is padded to a multiple of tp: not an error.
  EXPECT_NO_THROW(parse("", gptWith({"model.heads=6", "model.embed=96", "parallel.tp=3"}), 3));
  // Only the GPT is split.
  EXPECT_EQ(errorOf("", {"parallel.tp=2"}, 2),
            "--set parallel.tp=2: parallel.tp = 2: tensor parallelism is implemented for model.name = \"gpt\" (now "
            "\"mlp\" (default)); set parallel.tp = 1 or model.name = \"gpt\"");
  // The workers must form whole replicas.
  EXPECT_EQ(errorOf("", gptWith({"parallel.tp=2"}), 3),
            "--set parallel.tp=2: parallel.tp = 2: 3 workers cannot be divided into model replicas of parallel.tp x "
            "parallel.pp = 2 x 1 = 2 workers; run a multiple of 2 workers (dp = workers / 2) or change parallel.tp or "
            "parallel.pp");
  // Worker count not known yet: not checked.
  EXPECT_NO_THROW(parse("", gptWith({"parallel.tp=2"}), 0));
  // The batch is split over the dp replicas, not over every worker.
  EXPECT_EQ(parse("", gptWith({"parallel.tp=2", "train.batch_size=6"}), 4).train.batchSize, 6);
  EXPECT_EQ(errorOf("", gptWith({"parallel.tp=2", "train.batch_size=7"}), 4),
            "--set train.batch_size=7: train.batch_size = 7: 7 global samples cannot be split evenly over 2 "
            "data-parallel replicas (4 workers / (parallel.tp = 2 x parallel.pp = 1)); use a multiple of 2 such as 6 "
            "or 8");
  EXPECT_NO_THROW(parse("", gptWith({"parallel.tp=4", "train.batch_size=7"}), 4));  // dp = 1
  // Not with the parameter server, nor with codecs other than 16-bit casts.
  EXPECT_EQ(errorOf("", gptWith({"parallel.tp=2", "ps.servers=1"}), 2),
            "--set ps.servers=1: ps.servers = 1: the parameter server holds whole model replicas and cannot be "
            "combined with parallel.tp = 2 or parallel.pp = 1; set ps.servers = 0 or parallel.tp = parallel.pp = 1");
  EXPECT_EQ(errorOf("", gptWith({"parallel.tp=2", "compression.method=topk"}), 2),
            "--set compression.method=topk: compression.method = \"topk\": gradient compression is not supported "
            "for model.name = \"gpt\" (set at --set model.name=gpt) (at any parallel.tp, now 2): its codecs keep "
            "per-bucket state that GPT checkpoints do not hold; use none, fp16 or bf16 (a 16-bit all-reduce)");
  for (const char* m : {"none", "fp16", "bf16"})
    EXPECT_NO_THROW(parse("", gptWith({"parallel.tp=2", std::string("compression.method=") + m}), 2)) << m;
}

// A GPT's gradients are all-reduced dense (or cast to 16 bits) at every tp, 1 included: the
// codecs are refused before any worker starts, whatever the worker count.
TEST(Config, GptRefusesGradientCodecsAtEveryTp) {
  for (int world : {0, 1, 2, 4}) {
    EXPECT_EQ(errorOf("", gptWith({"compression.method=powersgd"}), world),
              "--set compression.method=powersgd: compression.method = \"powersgd\": gradient compression is not "
              "supported for model.name = \"gpt\" (set at --set model.name=gpt) (at any parallel.tp, now 1): its "
              "codecs keep per-bucket state that GPT checkpoints do not hold; use none, fp16 or bf16 (a 16-bit "
              "all-reduce)")
        << world;
  }
  for (const char* m : {"topk", "topk_sampled", "randomk", "threshold", "qsgd", "terngrad", "sign", "int8", "dgc"}) {
    EXPECT_CONTAINS(errorOf("", gptWith({std::string("compression.method=") + m}), 2),
                    "gradient compression is not supported for model.name = \"gpt\"")
        << m;
  }
  for (const char* m : {"none", "fp16", "bf16"}) {
    EXPECT_EQ(parse("", gptWith({std::string("compression.method=") + m}), 2).compression.method, m);
  }
  // The image models keep every codec at tp = 1.
  EXPECT_EQ(parse("", {"compression.method=topk"}, 2).compression.method, "topk");
}

TEST(Config, SequenceParallelRules) {
  EXPECT_EQ(errorOf("", gptWith({"parallel.sequence_parallel=true"})),
            "--set parallel.sequence_parallel=true: parallel.sequence_parallel = true: sequence parallelism splits "
            "the sequence over the tensor-parallel workers and needs parallel.tp > 1 (now 1 (default)); set "
            "parallel.tp or sequence_parallel = false");
  EXPECT_EQ(errorOf("[model]\ncontext = 102\n", gptWith({"parallel.tp=4", "parallel.sequence_parallel=true"}), 4),
            "--set parallel.sequence_parallel=true: parallel.sequence_parallel = true: model.context = 102 (set at "
            "run.toml:2) positions cannot be split evenly over parallel.tp = 4 workers along the sequence; use a "
            "model.context that is a multiple of 4 such as 100 or 104, or sequence_parallel = false");
  EXPECT_CONTAINS(errorOf("", gptWith({"model.context=2", "parallel.tp=4", "parallel.sequence_parallel=true"}), 4),
                  "use a model.context that is a multiple of 4 such as 4, or");
  EXPECT_TRUE(parse("", gptWith({"parallel.tp=2", "parallel.sequence_parallel=true"}), 2).parallel.sequenceParallel);
}

TEST(Config, LayerwiseRules) {
  Config c = parse("", gptWith({"parallel.pp=2"}), 2);
  EXPECT_EQ(c.parallel.pp, 2);
  EXPECT_EQ(c.parallel.schedule, "none");
  EXPECT_EQ(errorOf("", {"parallel.pp=2"}, 2),
            "--set parallel.pp=2: parallel.pp = 2: the layer-wise split is implemented for model.name = \"gpt\" (now "
            "\"mlp\" (default)); set parallel.pp = 1 or model.name = \"gpt\"");
  EXPECT_EQ(errorOf("", gptWith({"model.layers=3", "parallel.pp=4"}), 4),
            "--set parallel.pp=4: parallel.pp = 4: 4 stages for model.layers = 3 (set at --set model.layers=3) would "
            "leave a stage without a block; use at most 3 stages");
  EXPECT_NO_THROW(parse("", gptWith({"model.layers=4", "parallel.pp=4"}), 4));
  // tp and pp together (3D parallelism): tp x pp must divide the workers; sequence parallelism
  // stays with tp alone.
  EXPECT_NO_THROW(parse("", gptWith({"parallel.tp=2", "parallel.pp=2"}), 8));
  EXPECT_NO_THROW(parse("", gptWith({"parallel.tp=2", "parallel.pp=2"}), 0));
  EXPECT_EQ(errorOf("", gptWith({"parallel.tp=2", "parallel.pp=2"}), 6),
            "--set parallel.tp=2: parallel.tp = 2: 6 workers cannot be divided into model replicas of parallel.tp x "
            "parallel.pp = 2 x 2 = 4 workers; run a multiple of 4 workers (dp = workers / 4) or change parallel.tp or "
            "parallel.pp");
  EXPECT_EQ(errorOf("", gptWith({"parallel.tp=2", "parallel.pp=2", "parallel.sequence_parallel=true"}), 4),
            "--set parallel.sequence_parallel=true: parallel.sequence_parallel = true: sequence parallelism is not "
            "combined with parallel.pp = 2 (set at --set parallel.pp=2) stages yet; set sequence_parallel = false "
            "(parallel.tp still splits each stage's layers)");
  // optim.clip_norm: the whole model's norm, refused where none exists at an update.
  EXPECT_EQ(parse("", gptWith({"parallel.tp=2", "parallel.pp=2", "optim.clip_norm=1"}), 4).optim.clipNorm, 1.0);
  EXPECT_CONTAINS(errorOf("", {"ps.servers=1", "optim.clip_norm=1"}, 2),
                  "optim.clip_norm = 1.0: the parameter servers apply the workers' gradients one push at a time");
  EXPECT_CONTAINS(errorOf("", gptWith({"parallel.pp=2", "parallel.schedule=pipedream", "model.tie_embeddings=false",
                                       "optim.clip_norm=1"}),
                          2),
                  "optim.clip_norm = 1.0: schedule \"pipedream\" updates each stage at its own time");
  EXPECT_CONTAINS(errorOf("", gptWith({"parallel.pp=2"}), 3), "--set parallel.pp=2: parallel.pp = 2: 3 workers");
  // The batch is split over the dp = W / pp replicas.
  EXPECT_EQ(parse("", gptWith({"parallel.pp=2", "train.batch_size=10"}), 4).train.batchSize, 10);
  EXPECT_CONTAINS(errorOf("", gptWith({"parallel.pp=2", "train.batch_size=9"}), 4),
                  "9 global samples cannot be split evenly over 2 data-parallel replicas (4 workers / (parallel.tp = 1 "
                  "x parallel.pp = 2))");
  // A tied embedding spans the first and last stages: allowed (the stages keep it in step).
  EXPECT_TRUE(parse("", gptWith({"parallel.pp=2", "model.tie_embeddings=true"}), 2).model.tieEmbeddings);
  EXPECT_CONTAINS(errorOf("", gptWith({"parallel.pp=2", "ps.servers=1"}), 2), "parallel.pp = 2; set ps.servers = 0");
  EXPECT_CONTAINS(errorOf("", {"parallel.schedule=pipedream-2"}),
                  "parallel.schedule = \"pipedream-2\" is not allowed; the choices are: none, gpipe, 1f1b, "
                  "interleaved, zb-h1, pipedream, 2bw");
}

TEST(Config, PipelineScheduleRules) {
  const Config c = parse("", gptWith({"parallel.pp=2", "parallel.schedule=1f1b", "parallel.micro_batches=4",
                                      "train.batch_size=16"}),
                         4);
  EXPECT_EQ(c.parallel.schedule, "1f1b");
  EXPECT_EQ(c.parallel.microBatches, 4);
  EXPECT_EQ(errorOf("", gptWith({"parallel.schedule=gpipe"})),
            "--set parallel.schedule=gpipe: parallel.schedule = \"gpipe\": schedule \"gpipe\" runs the stages of a "
            "pipeline and needs parallel.pp > 1 (now 1 (default)); set parallel.pp or schedule = \"none\"");
  EXPECT_EQ(errorOf("", gptWith({"parallel.pp=2", "parallel.micro_batches=2"}), 2),
            "--set parallel.micro_batches=2: parallel.micro_batches = 2: 2 micro-batches need a pipeline schedule; "
            "set parallel.schedule = \"gpipe\", \"1f1b\", \"interleaved\", \"zb-h1\", \"pipedream\" or \"2bw\", or "
            "micro_batches = 1");
  // interleaved: v >= 2 chunks per stage, pp x v virtual stages at most the layers (blocks + 2),
  // and a partition of pp x v counts.
  EXPECT_EQ(parse("", gptWith({"parallel.pp=2", "parallel.schedule=interleaved", "parallel.virtual_stages=2"}), 2)
                .parallel.virtualStages,
            2);
  EXPECT_CONTAINS(errorOf("", gptWith({"parallel.pp=2", "parallel.schedule=interleaved"}), 2),
                  "needs parallel.virtual_stages >= 2 (now 1); set virtual_stages = 2");
  EXPECT_CONTAINS(errorOf("", gptWith({"parallel.pp=2", "parallel.schedule=1f1b", "parallel.virtual_stages=2"}), 2),
                  "2 model chunks per stage need schedule = \"interleaved\"");
  EXPECT_CONTAINS(errorOf("", gptWith({"model.layers=2", "parallel.pp=2", "parallel.schedule=interleaved",
                                       "parallel.virtual_stages=3"}),
                          2),
                  "parallel.pp x virtual_stages = 2 x 3 = 6 virtual stages for model.layers + 2 = 4 layers");
  EXPECT_CONTAINS(errorOf("", gptWith({"model.layers=2", "parallel.pp=2", "parallel.schedule=interleaved",
                                       "parallel.virtual_stages=2", "parallel.partition=[2, 2]"}),
                          2),
                  "2 stage(s) holding 4 layers; give parallel.pp x virtual_stages = 2 x 2 = 4 counts");
  // Each replica cuts batch_size / dp windows: 16 / 2 = 8 windows do not cut into 3.
  EXPECT_EQ(errorOf("", gptWith({"parallel.pp=2", "parallel.schedule=zb-h1", "parallel.micro_batches=3",
                                 "train.batch_size=16"}),
                    4),
            "--set parallel.micro_batches=3: parallel.micro_batches = 3: each replica's 8 windows (train.batch_size "
            "= 16 (set at --set train.batch_size=16) over dp = 2 replicas) cannot be cut into 3 equal micro-batches; "
            "use a micro_batches that divides 8");
  EXPECT_CONTAINS(errorOf("", gptWith({"parallel.pp=2", "parallel.schedule=1f1b", "parallel.micro_batches=0"}), 2),
                  "parallel.micro_batches = 0 is out of range");
}

TEST(Config, AsynchronousScheduleRules) {
  const std::vector<std::string> untied = {"parallel.pp=2", "model.tie_embeddings=false", "parallel.micro_batches=4"};
  auto with = [&](std::vector<std::string> more) {
    std::vector<std::string> all = untied;
    all.insert(all.end(), more.begin(), more.end());
    return gptWith(all);
  };
  const Config c = parse("", with({"parallel.schedule=2bw", "parallel.update_every=2", "parallel.vertical_sync=true"}), 2);
  EXPECT_EQ(c.parallel.schedule, "2bw");
  EXPECT_EQ(c.parallel.updateEvery, 2);
  EXPECT_TRUE(c.parallel.verticalSync);
  EXPECT_TRUE(c.parallel.weightStashing);
  EXPECT_FALSE(parse("", with({"parallel.schedule=pipedream", "parallel.weight_stashing=false"}), 2).parallel.weightStashing);
  EXPECT_CONTAINS(errorOf("", with({"parallel.schedule=1f1b", "parallel.update_every=2"}), 2),
                  "parallel.update_every = 2: 2 is for schedule \"2bw\" (now \"1f1b\" (set at --set "
                  "parallel.schedule=1f1b)); remove it or set schedule = \"2bw\"");
  EXPECT_CONTAINS(errorOf("", with({"parallel.schedule=pipedream", "parallel.weight_stashing=false",
                                    "parallel.vertical_sync=true"}),
                          2),
                  "parallel.vertical_sync = true: vertical sync chooses which stashed weight version a stage uses, so "
                  "it needs schedule = \"pipedream\" or \"2bw\" with weight_stashing = true (now \"pipedream\", "
                  "stashing off)");
  EXPECT_CONTAINS(errorOf("", gptWith({"parallel.pp=2", "parallel.schedule=pipedream", "model.tie_embeddings=true"}), 2),
                  "model.tie_embeddings = true: schedule \"pipedream\" updates each stage's weights at its own time, "
                  "so the first and last stages cannot keep one tied embedding; set model.tie_embeddings = false");
  EXPECT_TRUE(parse("", with({"parallel.schedule=1f1b", "parallel.recompute=true"}), 2).parallel.recompute);
  EXPECT_CONTAINS(errorOf("", gptWith({"parallel.pp=2", "parallel.recompute=true"}), 2),
                  "parallel.recompute = true: recomputation is done by the pipeline executor, so it needs a "
                  "parallel.schedule (now \"none\" (default))");
  EXPECT_CONTAINS(errorOf("", with({"parallel.schedule=2bw", "parallel.update_every=-1"}), 2),
                  "parallel.update_every = -1 is out of range");
  EXPECT_EQ(parse("", with({"parallel.schedule=pipedream"}), 2).parallel.asyncFlush, "never");
  EXPECT_EQ(parse("", with({"parallel.schedule=2bw", "parallel.async_flush=step"}), 2).parallel.asyncFlush, "step");
  EXPECT_CONTAINS(errorOf("", with({"parallel.schedule=1f1b", "parallel.async_flush=step"}), 2),
                  "parallel.async_flush = \"step\": \"step\" is for the asynchronous schedules (pipedream, 2bw); "
                  "schedule \"1f1b\" (set at --set parallel.schedule=1f1b) drains the pipeline at every step anyway");
}

TEST(Config, PipelinePartitionRules) {
  // model.layers = 4 (the gpt default here): 6 layers with the embedding and the head.
  const Config c = parse("", gptWith({"parallel.pp=2", "parallel.partition=[2, 4]"}), 2);
  EXPECT_EQ(c.parallel.partition, (std::vector<int64_t>{2, 4}));
  EXPECT_CONTAINS(errorOf("", gptWith({"parallel.pp=2", "parallel.partition=[2, 3]"}), 2),
                  "parallel.partition = [2, 3]: 2 stage(s) holding 5 layers; give parallel.pp = 2 (set at --set "
                  "parallel.pp=2) counts that sum to model.layers + 2 = 6 (the embedding, the blocks and the head)");
  EXPECT_CONTAINS(errorOf("", gptWith({"parallel.partition=[6]"})), "a partition splits the layers over parallel.pp > 1");
  EXPECT_CONTAINS(errorOf("", gptWith({"parallel.pp=2", "parallel.partition=[2, 4]", "parallel.balance=time"}), 2),
                  "parallel.partition gives one; set one of them");
  EXPECT_EQ(parse("", gptWith({"parallel.pp=2", "parallel.balance=time"}), 2).parallel.balance, "time");
  // partition = "auto" (the file's spelling, or --set's) is balance = "time" without a list.
  for (const Config& a : {parse("[parallel]\npp = 2\npartition = \"auto\"\n", gptWith({}), 2),
                          parse("", gptWith({"parallel.pp=2", "parallel.partition=auto"}), 2)}) {
    EXPECT_TRUE(a.parallel.partition.empty());
    EXPECT_EQ(a.parallel.balance, "time");
  }
  EXPECT_CONTAINS(errorOf("", gptWith({"parallel.pp=2", "parallel.partition=even"}), 2),
                  "parallel.partition expects an array of integers (e.g. []) or auto; 'even' is not one");
  EXPECT_CONTAINS(errorOf("[parallel]\npp = 2\npartition = \"even\"\n", gptWith({}), 2),
                  "parallel.partition = \"even\" has the wrong type: expected an array of integers (e.g. []) or "
                  "\"auto\", got a string");
}

TEST(Config, GptConfigRoundTrips) {
  Config c = parse("", gptWith({"model.layers=6", "model.heads=6", "model.embed=96", "model.context=66",
                                "model.dropout=0.1", "model.tie_embeddings=false", "parallel.tp=3",
                                "parallel.sequence_parallel=true", "train.batch_size=30", "data.eval_windows=7",
                                "train.eval_every=50"}),
                   6);
  std::string text = toToml(c);
  EXPECT_CONTAINS(text, "\n[parallel]\ntp = 3\nsequence_parallel = true\npp = 1\nschedule = \"none\"\n");
  EXPECT_CONTAINS(text, "\neval_windows = 7\n");
  EXPECT_CONTAINS(text, "\neval_every = 50\n");
  EXPECT_CONTAINS(text, "\nlayers = 6\nheads = 6\nembed = 96\ncontext = 66\ndropout = 0.1\ntie_embeddings = false\n");
  EXPECT_CONTAINS(text, "\npath = \"/usr/share/games/fortunes\"\n");
  Config back = parseConfig(text, "resolved.toml", {}, 6);
  EXPECT_EQ(back, c) << text;
  EXPECT_EQ(back.parallel, c.parallel);
  EXPECT_EQ(back.model, c.model);
  EXPECT_EQ(toToml(back), text);
  Config layerwise = parse("", gptWith({"parallel.pp=2"}), 4);
  EXPECT_EQ(parseConfig(toToml(layerwise), "resolved.toml", {}, 4), layerwise);
}

TEST(Config, EvalKeys) {
  Config c = parse("", gptWith({}));
  EXPECT_EQ(c.data.evalWindows, 64);
  EXPECT_EQ(c.train.evalEvery, 0);
  c = parse("[data]\ndataset = \"fortunes\"\neval_windows = 4\n[train]\neval_every = 100\n", {"model.name=gpt"});
  EXPECT_EQ(c.data.evalWindows, 4);
  EXPECT_EQ(c.train.evalEvery, 100);
  EXPECT_EQ(errorOf("", gptWith({"data.eval_windows=0"})),
            "--set data.eval_windows=0: data.eval_windows = 0 is out of range: it must be in [1, 2147483648]");
  EXPECT_EQ(errorOf("[train]\neval_every = -1\n"),
            "run.toml:2: train.eval_every = -1 is out of range: it must be >= 0");
  // Image runs take eval_every too (their evaluation is the test split).
  EXPECT_EQ(parse("", {"train.eval_every=10"}).train.evalEvery, 10);
}

// The shipped GPT configs: valid at the worker counts they are meant for, the same model.
TEST(Config, ShippedGptConfigsLoad) {
  const std::string dir = std::string(CHORUS_SOURCE_DIR) + "/configs/";
  Config one = loadConfig(dir + "gpt.toml", {}, 1);
  EXPECT_EQ(one.model.name, "gpt");
  EXPECT_EQ(one.data.dataset, "fortunes");
  EXPECT_EQ(one.parallel.tp, 1);
  EXPECT_GT(one.train.maxSteps, 0);
  Config two = loadConfig(dir + "gpt-tp.toml", {}, 2);
  EXPECT_EQ(two.parallel.tp, 2);
  EXPECT_EQ(two.model, one.model);
  EXPECT_EQ(two.optim, one.optim);
  EXPECT_EQ(two.schedule, one.schedule);
  EXPECT_EQ(two.train, one.train);
  EXPECT_EQ(two.data, one.data);
  try {
    loadConfig(dir + "gpt-tp.toml", {}, 3);
    ADD_FAILURE() << "3 workers at tp = 2 were accepted";
  } catch (const ConfigError& e) {
    EXPECT_CONTAINS(e.what(), "gpt-tp.toml:");
    EXPECT_CONTAINS(e.what(), "parallel.tp = 2: 3 workers cannot be divided");
  }
}

// A config with every field away from its default.
Config everythingChanged() {
  Config c;
  c.name = "run \"q\" \\ \n\t é";
  c.precision = "fp16";
  c.data = {.dataset = "cifar10", .path = "/d/cifar", .limitTrain = 70, .limitTest = 3};
  c.model = {.name = "cnn", .hidden = {3}, .channels = {8, 16, 32}, .fc = 64, .layers = 7, .heads = 3, .embed = 48,
             .context = 33, .dropout = 0.1 + 0.2, .tieEmbeddings = false};
  c.optim = {.name = "adam", .lr = 0.1 + 0.2, .momentum = 0.3, .nesterov = true, .weightDecay = 1e-300,
             .beta1 = 0.5, .beta2 = 0.75, .eps = 1.0 / 3.0};
  c.schedule = {.name = "step", .warmupSteps = 11, .warmupStart = 0.0, .minLr = 1e-7, .stepEpochs = 4, .gamma = 0.3};
  c.train = {.epochs = 5, .batchSize = 30, .maxSteps = 99, .seed = (uint64_t(1) << 62) + 1, .shuffle = false,
             .dropLast = true, .eval = false, .logEvery = 3, .threads = 1};
  c.ddp = {.bucketMb = 0.125, .findUnused = true, .broadcastBuffers = false, .commDtype = "fp16", .algo = "tree",
           .transport = "shm"};
  c.amp = {.initScale = 1e10, .growthFactor = 1.5, .backoffFactor = 0.1, .growthInterval = 7};
  c.output = {.dir = "out", .checkpointEvery = 13, .checkpointEpoch = false, .keep = 9, .progress = "bar",
              .overwrite = true};
  return c;
}

TEST(Config, ToTomlRoundTrips) {
  for (const Config& c : {Config{}, everythingChanged()}) {
    std::string text = toToml(c);
    Config back = parseConfig(text, "resolved.toml", {}, 2);
    EXPECT_EQ(back, c) << text;
    // Field by field where operator== would hide which one differs.
    EXPECT_EQ(back.name, c.name);
    EXPECT_EQ(back.optim.lr, c.optim.lr);
    EXPECT_EQ(back.optim.eps, c.optim.eps);
    EXPECT_EQ(back.optim.weightDecay, c.optim.weightDecay);
    EXPECT_EQ(back.train.seed, c.train.seed);
    EXPECT_EQ(back.model.channels, c.model.channels);
    EXPECT_EQ(back.ddp.transport, c.ddp.transport);
    EXPECT_EQ(toToml(back), text);
  }
  // Every key is written.
  std::string text = toToml(Config{});
  for (const std::string& key : configKeys()) {
    std::string leaf = key.substr(key.find('.') + 1);
    EXPECT_CONTAINS(text, "\n" + leaf + " = ");
  }
}

TEST(Config, ReferenceListsEveryKey) {
  std::string ref = "\n" + configReference();
  EXPECT_CONTAINS(ref, "\n[optim]: the optimizer\n");
  EXPECT_CONTAINS(ref, "  name = \"sgd\"");
  EXPECT_CONTAINS(ref, "string, one of: sgd, adam, adamw\n");
  EXPECT_CONTAINS(ref, "  lr = 0.05");
  EXPECT_CONTAINS(ref, "float, > 0\n");
  EXPECT_CONTAINS(ref, "  momentum = 0.9");
  EXPECT_CONTAINS(ref, "float, in [0, 1)\n");
  EXPECT_CONTAINS(ref, "  hidden = [512, 256]");
  EXPECT_CONTAINS(ref, "array of integers, non-empty, each >= 1\n");
  EXPECT_CONTAINS(ref, "  transport = \"\"");
  EXPECT_CONTAINS(ref, "one of: \"\", auto, shm, tcp, mpi, mixed");
  for (const std::string& key : configKeys()) {
    std::string section = key.find('.') == std::string::npos ? "top level" : "[" + key.substr(0, key.find('.')) + "]";
    std::string leaf = key.substr(key.find('.') + 1);
    size_t at = ref.find("\n" + section);
    ASSERT_NE(at, std::string::npos) << section;
    EXPECT_NE(ref.find("\n  " + leaf + " = ", at), std::string::npos) << key;
  }
  // 72 + compression.residual_decay + output.overwrite + 6 gpt keys of [model] + 11 of [parallel]
  // + data.eval_windows + train.eval_every + compression.scope
  EXPECT_EQ(configKeys().size(), 97u);
}

// docs/train-config.md carries configReference() between two markers. CHORUS_UPDATE_DOCS=1
// rewrites that block from the code.
TEST(Config, DocsMatchTheReference) {
  const std::string path = std::string(CHORUS_SOURCE_DIR) + "/docs/train-config.md";
  std::ifstream in(path);
  ASSERT_TRUE(in) << "cannot read " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  std::string doc = ss.str();
  const std::string begin = "<!-- BEGIN configReference() -->\n```\n", end = "```\n<!-- END configReference() -->";
  size_t b = doc.find(begin), e = doc.find(end);
  ASSERT_TRUE(b != std::string::npos && e != std::string::npos && b < e) << path << " lacks the reference markers";
  std::string block = doc.substr(b + begin.size(), e - b - begin.size());
  if (block != configReference() && std::getenv("CHORUS_UPDATE_DOCS")) {
    doc.replace(b + begin.size(), e - b - begin.size(), configReference());
    std::ofstream(path) << doc;
    block = configReference();
  }
  EXPECT_EQ(block, configReference()) << path << " is out of date; rerun this test with CHORUS_UPDATE_DOCS=1";
}

TEST(Config, LoadConfigReadsAFileAndNamesAMissingOne) {
  const std::string dir = ::testing::TempDir() + "/chorus_config_test_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/run.toml";
  std::ofstream(path) << "[train]\nepochs = 2\n[optim]\nname = \"nope\"\n";
  try {
    loadConfig(path, {}, 1);
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_CONTAINS(e.what(), path + ":4: optim.name = \"nope\" is not allowed");
  }
  EXPECT_EQ(loadConfig(path, {"optim.name=adam"}, 2).train.epochs, 2);
  try {
    loadConfig(dir + "/missing.toml", {}, 1);
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_CONTAINS(e.what(), "cannot read the config file '" + dir + "/missing.toml': No such file or directory");
  }
  std::filesystem::remove_all(dir);
}

// A directory read as empty text, so `chorus train /tmp` ran the defaults; other files that
// are not regular files (devices, pipes) are refused the same way.
TEST(Config, LoadConfigRefusesWhatIsNotARegularFile) {
  const std::string dir = ::testing::TempDir() + "/chorus_config_dir_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  try {
    loadConfig(dir, {}, 1);
    ADD_FAILURE() << "a directory was accepted as a config";
  } catch (const ConfigError& e) {
    EXPECT_CONTAINS(e.what(), "the config file '" + dir + "' is a directory; pass an existing TOML file");
  }
  try {
    loadConfig("/dev/null", {}, 1);
    ADD_FAILURE() << "/dev/null was accepted as a config";
  } catch (const ConfigError& e) {
    EXPECT_CONTAINS(e.what(), "the config file '/dev/null' is not a regular file");
  }
  // Unreadable: root reads anything, so only an unprivileged run can check this.
  const std::string locked = dir + "/locked.toml";
  std::ofstream(locked) << "[train]\nepochs = 2\n";
  std::filesystem::permissions(locked, std::filesystem::perms::none);
  if (::geteuid() != 0) {
    try {
      loadConfig(locked, {}, 1);
      ADD_FAILURE() << "an unreadable file was read";
    } catch (const ConfigError& e) {
      EXPECT_CONTAINS(e.what(), "cannot read the config file '" + locked + "': Permission denied");
    }
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace chorus::train
