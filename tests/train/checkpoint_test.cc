// Checkpoints: a save/load round trip resumes bit-exactly (parameters, BatchNorm buffers,
// SGD momentum and Adam moments, lr, loop state and scalars); damaged files are refused before
// anything is changed; saves are atomic; latestCheckpoint and pruneCheckpoints.
#include "chorus/train/checkpoint.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>

#include "chorus/common/error.h"
#include "chorus/train/models.h"
#include "chorus/train/optim.h"

namespace chorus::train {
namespace {

namespace fs = std::filesystem;

class Checkpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = str("chorus_ckpt_", ::getpid(), "_", info->test_suite_name(), "_", info->name());
    std::replace(name.begin(), name.end(), '/', '_');  // parameterized names hold slashes
    dir_ = (fs::temp_directory_path() / name).string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  std::string dir_;
};

// A small CNN with BatchNorm (buffers) on 1x8x8 inputs, 3 classes.
torch::nn::Sequential smallCnn(uint64_t seed) {
  torch::manual_seed(seed);
  ModelConfig cfg;
  cfg.name = "cnn";
  cfg.channels = {3};
  cfg.fc = 6;
  return makeModel(cfg, 1, 8, 8, 3);
}

std::unique_ptr<torch::optim::Optimizer> optimizerFor(const std::string& name, torch::nn::Module& m) {
  OptimConfig cfg;
  cfg.name = name;
  cfg.lr = name == "sgd" ? 0.05 : 0.01;
  cfg.nesterov = true;
  cfg.weightDecay = 0.01;
  return makeOptimizer(cfg, m.parameters());
}

void trainStep(torch::nn::Sequential& m, torch::optim::Optimizer& opt, int64_t i) {
  torch::manual_seed(1000 + i);
  auto x = torch::randn({5, 1, 8, 8});
  auto y = torch::randint(0, 3, {5});
  opt.zero_grad();
  torch::nn::functional::cross_entropy(m->forward(x), y).backward();
  opt.step();
}

void expectSameTensors(torch::nn::Module& a, torch::nn::Module& b) {
  auto pb = b.named_parameters();
  for (const auto& p : a.named_parameters()) EXPECT_TRUE(torch::equal(p.value(), pb[p.key()])) << p.key();
  auto bb = b.named_buffers();
  for (const auto& p : a.named_buffers()) EXPECT_TRUE(torch::equal(p.value(), bb[p.key()])) << p.key();
}

std::string readAll(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void writeAll(const std::string& p, const std::string& data) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << data;
}

// Runs f, expects a chorus::Error whose message contains every one of parts.
template <typename F>
void expectError(F f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "expected chorus::Error";
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const auto& part : parts) EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in: " << msg;
  }
}

class RoundTrip : public Checkpoint, public ::testing::WithParamInterface<std::string> {};

TEST_P(RoundTrip, ResumesBitExactly) {
  auto a = smallCnn(1);
  auto optA = optimizerFor(GetParam(), *a);
  for (int64_t i = 0; i < 3; ++i) trainStep(a, *optA, i);
  setLearningRate(*optA, 0.0123);
  TrainState st;
  st.epoch = 2;
  st.stepInEpoch = 17;
  st.globalStep = 1234567890123;
  st.scalars = {{"amp.scale", 65536.0},
                {"amp.good_steps", 1999.0},
                {"third", 0.1 + 0.2},
                {"tiny", std::numeric_limits<double>::denorm_min()},
                {"neg", -std::numeric_limits<double>::max()}};
  std::string p = path("ckpt.pt");
  saveCheckpoint(p, *a, *optA, st);

  auto b = smallCnn(2);  // different init, fresh optimizer state
  auto optB = optimizerFor(GetParam(), *b);
  EXPECT_FALSE(torch::equal(a->named_parameters()["0.weight"], b->named_parameters()["0.weight"]));
  TrainState got = loadCheckpoint(p, *b, *optB);
  EXPECT_EQ(got.epoch, 2);
  EXPECT_EQ(got.stepInEpoch, 17);
  EXPECT_EQ(got.globalStep, 1234567890123);
  ASSERT_EQ(got.scalars.size(), st.scalars.size());
  for (const auto& [k, v] : st.scalars) {
    ASSERT_TRUE(got.scalars.count(k)) << k;
    EXPECT_EQ(std::memcmp(&got.scalars[k], &v, sizeof(double)), 0) << k;
  }
  expectSameTensors(*a, *b);
  EXPECT_TRUE(torch::equal(b->named_buffers()["1.num_batches_tracked"], torch::tensor(3, torch::kInt64)));
  EXPECT_EQ(optB->param_groups()[0].options().get_lr(), 0.0123);

  // The optimizer state came along: the next steps on both stay bitwise equal.
  for (int64_t i = 3; i < 5; ++i) {
    trainStep(a, *optA, i);
    trainStep(b, *optB, i);
  }
  expectSameTensors(*a, *b);

  // A fresh optimizer without the state would diverge: the test can tell.
  auto c = smallCnn(3);
  auto optC = optimizerFor(GetParam(), *c);
  loadCheckpoint(p, *c, *optC);
  optC = optimizerFor(GetParam(), *c);
  setLearningRate(*optC, 0.0123);
  auto d = smallCnn(3);
  auto optD = optimizerFor(GetParam(), *d);
  loadCheckpoint(p, *d, *optD);
  trainStep(c, *optC, 3);
  trainStep(d, *optD, 3);
  EXPECT_FALSE(torch::equal(c->named_parameters()["0.weight"], d->named_parameters()["0.weight"]));
}

INSTANTIATE_TEST_SUITE_P(Optimizers, RoundTrip, ::testing::Values("sgd", "adam", "adamw"));

TEST_F(Checkpoint, EmptyStateAndNoOptimizerStateRoundTrip) {
  auto a = smallCnn(1);
  auto optA = optimizerFor("adam", *a);
  saveCheckpoint(path("c.pt"), *a, *optA, TrainState{});
  auto b = smallCnn(2);
  auto optB = optimizerFor("adam", *b);
  TrainState got = loadCheckpoint(path("c.pt"), *b, *optB);
  EXPECT_EQ(got.globalStep, 0);
  EXPECT_TRUE(got.scalars.empty());
  expectSameTensors(*a, *b);
}

TEST_F(Checkpoint, SaveLeavesNoTemporaryAndCreatesTheFolder) {
  auto m = smallCnn(1);
  auto opt = optimizerFor("sgd", *m);
  std::string p = path("a/b/" + checkpointName(7));
  saveCheckpoint(p, *m, *opt, TrainState{});
  saveCheckpoint(p, *m, *opt, TrainState{});  // overwrites
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(fs::path(p).parent_path())) files.push_back(e.path().filename());
  EXPECT_EQ(files, std::vector<std::string>{"ckpt-00000007.pt"});
  std::string bytes = readAll(p);
  EXPECT_EQ(bytes.substr(0, 8), "CHORUSCK");
}

TEST_F(Checkpoint, FlippedPayloadByteIsAChecksumMismatch) {
  auto a = smallCnn(1);
  auto optA = optimizerFor("sgd", *a);
  trainStep(a, *optA, 0);
  std::string p = path("c.pt");
  saveCheckpoint(p, *a, *optA, TrainState{});
  std::string bytes = readAll(p);
  bytes[52 + (bytes.size() - 52) / 2] ^= 0x01;
  writeAll(p, bytes);

  auto b = smallCnn(2);
  auto optB = optimizerFor("sgd", *b);
  auto before = b->named_parameters()["0.weight"].clone();
  expectError([&] { loadCheckpoint(p, *b, *optB); },
              {p, "checksum mismatch: the file is corrupt; use an older checkpoint or start again"});
  EXPECT_TRUE(torch::equal(b->named_parameters()["0.weight"], before));  // untouched
  EXPECT_TRUE(optB->state().empty());
}

TEST_F(Checkpoint, TruncatedBadMagicAndMissingFiles) {
  auto a = smallCnn(1);
  auto optA = optimizerFor("sgd", *a);
  std::string p = path("c.pt");
  saveCheckpoint(p, *a, *optA, TrainState{});
  std::string bytes = readAll(p);
  size_t payload = bytes.size() - 52;

  writeAll(p, bytes.substr(0, bytes.size() - 10));
  expectError([&] { loadCheckpoint(p, *a, *optA); },
              {p, str("truncated: expected ", payload, " payload bytes, found ", payload - 10)});
  writeAll(p, bytes.substr(0, 30));
  expectError([&] { loadCheckpoint(p, *a, *optA); }, {p, "truncated"});
  writeAll(p, bytes + "x");
  expectError([&] { loadCheckpoint(p, *a, *optA); }, {p, "found " + std::to_string(payload + 1)});

  writeAll(p, "PK\x03\x04 this is a zip, not a checkpoint");
  expectError([&] { loadCheckpoint(p, *a, *optA); }, {p, "not a chorus checkpoint (bad magic)"});
  writeAll(p, "");
  expectError([&] { loadCheckpoint(p, *a, *optA); }, {p, "bad magic"});

  std::string badVersion = bytes;
  badVersion[8] = 9;
  writeAll(p, badVersion);
  expectError([&] { loadCheckpoint(p, *a, *optA); }, {p, "version 9"});

  expectError([&] { loadCheckpoint(path("nope.pt"), *a, *optA); }, {path("nope.pt"), "No such file"});
}

TEST_F(Checkpoint, OtherModelOrOptimizerIsAnErrorNamingIt) {
  auto a = smallCnn(1);
  auto optA = optimizerFor("sgd", *a);
  trainStep(a, *optA, 0);
  std::string p = path("c.pt");
  saveCheckpoint(p, *a, *optA, TrainState{});

  ModelConfig wider;
  wider.name = "cnn";
  wider.channels = {4};
  wider.fc = 6;
  auto w = makeModel(wider, 1, 8, 8, 3);
  auto optW = optimizerFor("sgd", *w);
  expectError([&] { loadCheckpoint(p, *w, *optW); }, {p, "parameter '0.weight'", "[3, 1, 3, 3]", "[4, 1, 3, 3]"});

  ModelConfig deeper = wider;
  deeper.channels = {3, 3};  // the first block matches; the second conv's "4.weight" does not exist
  auto d = makeModel(deeper, 1, 8, 8, 3);
  auto optD = optimizerFor("sgd", *d);
  expectError([&] { loadCheckpoint(p, *d, *optD); }, {p, "parameter '4.weight' is missing"});

  torch::nn::Sequential part(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 3, 3).padding(1).bias(false)),
                             torch::nn::BatchNorm2d(3));  // the first block alone
  auto optP = optimizerFor("sgd", *part);
  expectError([&] { loadCheckpoint(p, *part, *optP); },
              {p, "parameter '5.weight' is in the checkpoint but not in the model"});

  auto b = smallCnn(2);
  auto before = b->named_parameters()["0.weight"].clone();
  auto adam = optimizerFor("adam", *b);
  expectError([&] { loadCheckpoint(p, *b, *adam); }, {p, "optim.name", "sgd", "adam"});
  EXPECT_TRUE(torch::equal(b->named_parameters()["0.weight"], before));
}

TEST_F(Checkpoint, FailedSaveNamesThePathAndKeepsTheOldFile) {
  auto m = smallCnn(1);
  auto opt = optimizerFor("sgd", *m);
  TrainState old;
  old.globalStep = 5;
  std::string p = path("c.pt");
  saveCheckpoint(p, *m, *opt, old);

  // A folder in place of the temporary file: the open fails after the folder exists.
  fs::create_directory(str(p, ".tmp.", ::getpid()));
  TrainState next;
  next.globalStep = 6;
  expectError([&] { saveCheckpoint(p, *m, *opt, next); }, {p, "Is a directory"});
  EXPECT_EQ(loadCheckpoint(p, *m, *opt).globalStep, 5);

  // A path under a regular file: its folder cannot be created.
  writeAll(path("file"), "x");
  std::string under = path("file/sub/c.pt");
  expectError([&] { saveCheckpoint(under, *m, *opt, next); }, {under, "Not a directory"});
}

TEST_F(Checkpoint, NamesLatestAndPrune) {
  EXPECT_EQ(checkpointName(1234), "ckpt-00001234.pt");
  EXPECT_EQ(checkpointName(123456789), "ckpt-123456789.pt");
  EXPECT_EQ(latestCheckpoint(path("missing")), "");
  EXPECT_EQ(latestCheckpoint(dir_), "");

  for (int64_t s : {1, 10, 2, 123456789}) writeAll(path(checkpointName(s)), "x");
  writeAll(path("ckpt-999999999.pt.tmp.42"), "x");  // a save that never finished
  writeAll(path("ckpt-99.txt"), "x");
  writeAll(path("notes.pt"), "x");
  EXPECT_EQ(latestCheckpoint(dir_), path("ckpt-123456789.pt"));

  pruneCheckpoints(dir_, 2);
  EXPECT_FALSE(fs::exists(path(checkpointName(1))));
  EXPECT_FALSE(fs::exists(path(checkpointName(2))));
  EXPECT_TRUE(fs::exists(path(checkpointName(10))));
  EXPECT_TRUE(fs::exists(path(checkpointName(123456789))));
  for (const char* other : {"ckpt-999999999.pt.tmp.42", "ckpt-99.txt", "notes.pt"})
    EXPECT_TRUE(fs::exists(path(other))) << other;

  pruneCheckpoints(dir_, 5);  // fewer than keep: nothing removed
  EXPECT_TRUE(fs::exists(path(checkpointName(10))));
  pruneCheckpoints(dir_, 0);
  EXPECT_EQ(latestCheckpoint(dir_), "");
  pruneCheckpoints(path("missing"), 1);  // no folder: nothing to do
}

}  // namespace
}  // namespace chorus::train
