// Checkpoints: a save/load round trip resumes bit-exactly (parameters, BatchNorm buffers,
// SGD momentum and Adam moments, lr, loop state and scalars); damaged files (the frame, the entry
// table, the entries against the model) are refused, naming the file, before anything changes;
// a version-1 (TorchScript) file is refused and upgrades to an equal version-2 file; saves are
// atomic; listing, stale temporaries and pruning by a run's own history.
#include "chorus/train/checkpoint.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <sstream>

#include "chorus/common/error.h"
#include "chorus/common/tensor_file.h"
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
  expectError([&] { loadCheckpoint(p, *a, *optA); }, {p, "not a chorus checkpoint (bad magic"});
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

TEST_F(Checkpoint, NamesAndLatest) {
  EXPECT_EQ(checkpointName(1234), "ckpt-00001234.pt");
  EXPECT_EQ(checkpointName(123456789), "ckpt-123456789.pt");
  EXPECT_EQ(latestCheckpoint(path("missing")), "");
  EXPECT_EQ(latestCheckpoint(dir_), "");

  for (int64_t s : {1, 10, 2, 123456789}) writeAll(path(checkpointName(s)), "x");
  writeAll(path("ckpt-999999999.pt.tmp.42"), "x");  // a save that never finished
  writeAll(path("ckpt-99.txt"), "x");
  writeAll(path("notes.pt"), "x");
  fs::create_directory(path("ckpt-99999999999.pt"));  // not a file
  EXPECT_EQ(latestCheckpoint(dir_), path("ckpt-123456789.pt"));
  EXPECT_EQ(listCheckpoints(dir_), (std::vector<std::string>{path(checkpointName(1)), path(checkpointName(2)),
                                                             path(checkpointName(10)), path(checkpointName(123456789))}));
  EXPECT_TRUE(listCheckpoints(path("missing")).empty());
}

// Pruning goes by the order a run wrote its files, among its own files only: a folder that
// also holds another run's checkpoints with higher steps keeps them, and the new file is never
// the one removed.
TEST_F(Checkpoint, HistoryPrunesOnlyItsOwnFilesOldestWrittenFirst) {
  for (int64_t s : {5000, 6000}) writeAll(path(checkpointName(s)), "other run");
  writeAll(path(checkpointName(3)), "inherited");  // the line this run continues
  CheckpointHistory h({path(checkpointName(3))});
  auto write = [&](int64_t step) {
    writeAll(path(checkpointName(step)), "mine");
    return h.add(path(checkpointName(step)), 2);
  };
  EXPECT_TRUE(write(100).empty());
  EXPECT_EQ(write(200), std::vector<std::string>{path(checkpointName(3))});
  EXPECT_EQ(write(300), std::vector<std::string>{path(checkpointName(100))});
  EXPECT_TRUE(fs::exists(path(checkpointName(300))));  // the newest stays, though steps 5000, 6000 are higher
  EXPECT_TRUE(fs::exists(path(checkpointName(200))));
  EXPECT_TRUE(fs::exists(path(checkpointName(5000))));
  EXPECT_TRUE(fs::exists(path(checkpointName(6000))));
  EXPECT_EQ(h.files(), (std::vector<std::string>{path(checkpointName(200)), path(checkpointName(300))}));

  // Writing a file again (same step) makes it the newest rather than listing it twice.
  EXPECT_EQ(write(200), std::vector<std::string>{});
  EXPECT_EQ(h.files(), (std::vector<std::string>{path(checkpointName(300)), path(checkpointName(200))}));
  // A step lower than everything before (a run resumed from an older file) is still the newest.
  EXPECT_EQ(write(1), std::vector<std::string>{path(checkpointName(300))});
  EXPECT_TRUE(fs::exists(path(checkpointName(1))));
  // keep = 1 keeps the file just written; a listed file already gone is forgotten quietly.
  fs::remove(path(checkpointName(200)));
  EXPECT_TRUE(h.add(path(checkpointName(1)), 1).empty());
  EXPECT_EQ(h.files(), std::vector<std::string>{path(checkpointName(1))});
  EXPECT_THROW(h.add(path(checkpointName(1)), 0), InvalidArgument);
}

// A sharded checkpoint's main file goes with its shard files (of any layout, also when the main
// file is already gone); files that only look like shards stay.
TEST_F(Checkpoint, HistoryPrunesShardFilesWithTheirMainFile) {
  EXPECT_EQ(checkpointShardPath(path(checkpointName(3)), 1, 2), path("ckpt-00000003.pt.tp1-of-2"));
  EXPECT_EQ(checkpointShardPath(path(checkpointName(3)), 0, 2, 1, 3), path("ckpt-00000003.pt.pp1-of-3.tp0-of-2"));
  EXPECT_THROW(checkpointShardPath(path(checkpointName(3)), 2, 2), InvalidArgument);
  const std::string a = path(checkpointName(100)), b = path(checkpointName(200)), c = path(checkpointName(300));
  const std::vector<std::string> aShards = {a + ".pp0-of-2.tp1-of-2", a + ".tp1-of-2", a + ".tp1-of-4", a + ".tp3-of-4"};
  const std::vector<std::string> keepers = {a + ".tp2-of-2", a + ".tp1-of-x", a + ".tp1-of-2.bak", a + "x.tp1-of-2",
                                            path("ckpt-00000100.pt1.tp1-of-2"), path(checkpointName(1000) + ".tp1-of-2")};
  for (const auto& f : aShards) writeAll(f, "x");
  for (const auto& f : keepers) writeAll(f, "x");
  for (const auto& f : {a, b, c, b + ".tp1-of-2", c + ".tp1-of-2"}) writeAll(f, "x");
  EXPECT_EQ(checkpointShardFiles(a), aShards);
  EXPECT_EQ(checkpointShardFiles(b), std::vector<std::string>{b + ".tp1-of-2"});
  EXPECT_TRUE(checkpointShardFiles(path(checkpointName(5))).empty());
  EXPECT_EQ(listCheckpoints(dir_), (std::vector<std::string>{a, b, c}));  // shard files are not checkpoints

  CheckpointHistory h({a, b});
  std::vector<std::string> want = {a};
  want.insert(want.end(), aShards.begin(), aShards.end());
  EXPECT_EQ(h.add(c, 2), want);
  for (const auto& f : keepers) EXPECT_TRUE(fs::exists(f)) << f;
  // The main file already gone: its shards still go.
  fs::remove(b);
  EXPECT_EQ(h.add(c, 1), std::vector<std::string>{b + ".tp1-of-2"});
  EXPECT_TRUE(fs::exists(c + ".tp1-of-2"));
}

TEST_F(Checkpoint, RemovesTemporariesOfWritersThatAreGone) {
  // A pid that is surely not running: a child that has exited and been reaped.
  pid_t dead = fork();
  if (dead == 0) _exit(0);
  ASSERT_GT(dead, 0);
  int status = 0;
  ASSERT_EQ(waitpid(dead, &status, 0), dead);
  const std::string deadTmp = path(str(checkpointName(7), ".tmp.", dead));
  const std::string mineTmp = path(str(checkpointName(8), ".tmp.", ::getpid()));  // before our first save
  const std::string liveTmp = path(str(checkpointName(9), ".tmp.", ::getppid()));  // a live writer
  // Shard files' temporaries too; a name that is not a shard's stays.
  const std::string deadShardTmp = path(str(checkpointName(7), ".tp1-of-2.tmp.", dead));
  const std::string deadPpShardTmp = path(str(checkpointName(7), ".pp1-of-2.tp0-of-2.tmp.", dead));
  const std::string liveShardTmp = path(str(checkpointName(9), ".tp1-of-2.tmp.", ::getppid()));
  const std::string notShardTmp = path(str(checkpointName(7), ".tp2-of-2.tmp.", dead));
  for (const auto& p : {deadTmp, mineTmp, liveTmp, path("notes.tmp.1"), path(checkpointName(6)), deadShardTmp,
                        deadPpShardTmp, liveShardTmp, notShardTmp})
    writeAll(p, "x");
  std::vector<std::string> removed = removeStaleTemporaries(dir_);
  std::sort(removed.begin(), removed.end());
  std::vector<std::string> want = {deadTmp, mineTmp, deadShardTmp, deadPpShardTmp};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(removed, want);
  EXPECT_TRUE(fs::exists(liveTmp));
  EXPECT_TRUE(fs::exists(liveShardTmp));
  EXPECT_TRUE(fs::exists(notShardTmp));
  EXPECT_TRUE(fs::exists(path("notes.tmp.1")));  // not a checkpoint's temporary
  EXPECT_TRUE(fs::exists(path(checkpointName(6))));
  EXPECT_TRUE(removeStaleTemporaries(path("missing")).empty());
}

// ---- what a file can hold that load must refuse ----

TEST_F(Checkpoint, RefusesDevicesFoldersAndWrongSizesNamingTheFile) {
  auto m = smallCnn(1);
  auto opt = optimizerFor("sgd", *m);
  // Each would otherwise be read until memory runs out, or forever.
  expectError([&] { loadCheckpoint("/dev/zero", *m, *opt); }, {"checkpoint /dev/zero", "character device"});
  expectError([&] { loadCheckpoint(dir_, *m, *opt); }, {str("checkpoint ", dir_), "folder"});

  std::string p = path("c.pt");
  saveCheckpoint(p, *m, *opt, TrainState{});
  const std::string good = readAll(p);
  writeAll(p, good + std::string(1 << 20, 'x'));
  expectError([&] { loadCheckpoint(p, *m, *opt); }, {p, "length mismatch", str("found ", good.size() - 52 + (1 << 20))});
  writeAll(p, good.substr(0, good.size() / 2));
  expectError([&] { loadCheckpoint(p, *m, *opt); }, {p, "truncated"});
}

// Rewrites the file's table through `edit` with a valid checksum, so the table's own checks
// (not the SHA-256) are what must catch the damage.
template <typename Edit>
void rewriteEntries(const std::string& p, Edit edit) {
  std::string bytes = readAll(p);
  std::string payload = bytes.substr(52);
  auto entries = decodeTensorTable(payload.data(), payload.size(), p);
  std::vector<TensorRecord> records;
  for (const auto& e : entries) records.push_back({e.name, e.dtype, e.shape, e.data, e.bytes});
  edit(records);
  writeFramedFile(p, "CHORUSCK", 2, encodeTensorTable(records), "checkpoint");
}

TEST_F(Checkpoint, RefusesDamagedEntriesBeforeChangingAnything) {
  auto a = smallCnn(1);
  auto optA = optimizerFor("adam", *a);
  trainStep(a, *optA, 0);
  const std::string p = path("c.pt");
  saveCheckpoint(p, *a, *optA, TrainState{});
  const std::string good = readAll(p);

  auto b = smallCnn(2);
  auto optB = optimizerFor("adam", *b);
  const auto before = b->named_parameters()["0.weight"].clone();
  auto expectRefused = [&](auto edit, std::initializer_list<std::string> parts) {
    SCOPED_TRACE(*(parts.end() - 1));
    writeAll(p, good);
    rewriteEntries(p, edit);
    expectError([&] { loadCheckpoint(p, *b, *optB); }, parts);
    EXPECT_TRUE(torch::equal(b->named_parameters()["0.weight"], before));
    EXPECT_TRUE(optB->state().empty());
  };
  auto named = [](std::vector<TensorRecord>& r, const std::string& name) -> TensorRecord& {
    for (auto& x : r) {
      if (x.name == name) return x;
    }
    throw std::runtime_error("no entry " + name);
  };
  auto drop = [](std::vector<TensorRecord>& r, const std::string& name) {
    std::erase_if(r, [&](const TensorRecord& x) { return x.name == name; });
  };
  const int64_t kBig = 7;
  const double kHalf = 0.5;
  const uint8_t kSgd[] = {'s', 'g', 'd'};

  expectRefused([&](auto& r) { r.push_back({"extra/thing", TensorDtype::kUInt8, {0}, nullptr, 0}); },
                {p, "unknown entry 'extra/thing'"});
  expectRefused([&](auto& r) { r.push_back({"state/other", TensorDtype::kInt64, {}, &kBig, 8}); },
                {p, "unknown entry 'state/other'"});
  expectRefused([&](auto& r) { drop(r, "state/global_step"); }, {p, "entry 'state/global_step' is missing"});
  expectRefused([&](auto& r) { named(r, "state/epoch") = {"state/epoch", TensorDtype::kFloat64, {}, &kHalf, 8}; },
                {p, "'state/epoch' must be a int64 scalar, but is float64"});
  expectRefused([&](auto& r) { named(r, "params/0.weight").shape = {27}; },
                {p, "parameter '0.weight' has shape [27] in the checkpoint but [3, 1, 3, 3] in the model"});
  expectRefused(
      [&](auto& r) {
        auto& w = named(r, "params/0.weight");
        w.dtype = TensorDtype::kInt32;
      },
      {p, "parameter '0.weight' is int32 in the checkpoint but Float in the model"});
  expectRefused([&](auto& r) { drop(r, "buffers/1.running_mean"); }, {p, "buffer '1.running_mean' is missing"});
  expectRefused([&](auto& r) { named(r, "optim/kind") = {"optim/kind", TensorDtype::kUInt8, {3}, kSgd, 3}; },
                {p, "optimizer 'sgd'", "this run uses 'adam'", "optim.name"});
  expectRefused([&](auto& r) { named(r, "optim/groups") = {"optim/groups", TensorDtype::kInt64, {}, &kBig, 8}; },
                {p, "7 optimizer param groups"});
  const int64_t kNine = 9;  // the model has 7 parameters
  expectRefused([&](auto& r) { named(r, "optim/0/params") = {"optim/0/params", TensorDtype::kInt64, {}, &kNine, 8}; },
                {p, "param group 0 has 9 parameters in the checkpoint but 7 in the optimizer"});
  expectRefused([&](auto& r) { named(r, "optim/0/0/exp_avg").name = "optim/0/99/exp_avg"; },
                {p, "names parameter 99 of group 0"});
  expectRefused([&](auto& r) { named(r, "optim/0/0/exp_avg").name = "optim/00/0/exp_avg"; },
                {p, "unknown entry 'optim/00/0/exp_avg'"});
  expectRefused([&](auto& r) { named(r, "optim/0/0/exp_avg").name = "optim/0/0/momentum_buffer"; },
                {p, "unknown entry 'optim/0/0/momentum_buffer'"});
  expectRefused([&](auto& r) { drop(r, "optim/0/1/exp_avg_sq"); }, {p, "'optim/0/1/exp_avg_sq' is missing"});
  expectRefused([&](auto& r) { named(r, "optim/0/0/exp_avg").shape = {27}; },
                {p, "optimizer state 'optim/0/0/exp_avg' is float32 of shape [27]", "[3, 1, 3, 3]"});

  // The untouched file still loads.
  writeAll(p, good);
  loadCheckpoint(p, *b, *optB);
  expectSameTensors(*a, *b);
}

TEST_F(Checkpoint, UnsupportedOptimizerIsRefusedAtSave) {
  auto m = smallCnn(1);
  torch::optim::RMSprop rms(m->parameters(), torch::optim::RMSpropOptions(0.01));
  expectError([&] { saveCheckpoint(path("c.pt"), *m, rms, TrainState{}); },
              {path("c.pt"), "they hold sgd, adam and adamw"});
  EXPECT_FALSE(fs::exists(path("c.pt")));
}

TEST_F(Checkpoint, AmsgradAndOtherDtypesRoundTrip) {
  auto a = smallCnn(1);
  torch::optim::Adam optA(a->parameters(), torch::optim::AdamOptions(0.01).amsgrad(true));
  for (int64_t i = 0; i < 2; ++i) trainStep(a, optA, i);
  TrainState st;
  st.tensors["half"] = torch::tensor({1.5, -2.25}, torch::kHalf);
  st.tensors["bf16"] = torch::tensor({3.0}, torch::kBFloat16);
  st.tensors["flags"] = torch::tensor({true, false}, torch::kBool);
  st.tensors["ints"] = torch::arange(12, torch::kInt32).reshape({3, 4}).t();  // not contiguous
  st.tensors["empty"] = torch::empty({0, 3}, torch::kInt16);
  saveCheckpoint(path("c.pt"), *a, optA, st);

  auto b = smallCnn(2);
  torch::optim::Adam optB(b->parameters(), torch::optim::AdamOptions(0.01).amsgrad(true));
  TrainState got = loadCheckpoint(path("c.pt"), *b, optB);
  ASSERT_EQ(got.tensors.size(), st.tensors.size());
  for (const auto& [k, t] : st.tensors) {
    EXPECT_EQ(got.tensors[k].scalar_type(), t.scalar_type()) << k;
    EXPECT_TRUE(torch::equal(got.tensors[k], t)) << k;
  }
  for (int64_t i = 2; i < 4; ++i) {
    trainStep(a, optA, i);
    trainStep(b, optB, i);
  }
  expectSameTensors(*a, *b);

  // A file without max_exp_avg_sq cannot feed an amsgrad optimizer.
  auto c = smallCnn(3);
  auto plain = optimizerFor("adam", *c);
  trainStep(c, *plain, 0);
  saveCheckpoint(path("plain.pt"), *c, *plain, TrainState{});
  expectError([&] { loadCheckpoint(path("plain.pt"), *b, optB); }, {path("plain.pt"), "max_exp_avg_sq' is missing"});
}

// ---- version 1: the TorchScript payload chorus wrote before the data-only format ----

// The writer chorus used for version 1, kept here to make such files for the tests: a
// torch::serialize archive behind the same 52-byte frame, with the optimizer's own archive.
void saveVersion1(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer& opt,
                  const TrainState& state, const char* kind) {
  torch::serialize::OutputArchive root;
  torch::serialize::OutputArchive params(root.compilation_unit()), buffers(root.compilation_unit());
  for (const auto& p : model.named_parameters()) params.write(p.key(), p.value().detach());
  for (const auto& b : model.named_buffers()) buffers.write(b.key(), b.value().detach(), /*is_buffer=*/true);
  root.write("params", params);
  root.write("buffers", buffers);
  torch::serialize::OutputArchive optim(root.compilation_unit()), meta(root.compilation_unit());
  opt.save(optim);
  meta.write("kind", c10::IValue(std::string(kind)));
  meta.write("groups", torch::tensor(static_cast<int64_t>(opt.param_groups().size()), torch::kInt64));
  for (size_t g = 0; g < opt.param_groups().size(); ++g)
    meta.write(str("lr/", g), torch::tensor(opt.param_groups()[g].options().get_lr(), torch::kFloat64));
  root.write("optim", optim);
  root.write("optim_meta", meta);
  torch::serialize::OutputArchive st(root.compilation_unit()), scalars(root.compilation_unit());
  st.write("epoch", torch::tensor(state.epoch, torch::kInt64));
  st.write("step_in_epoch", torch::tensor(state.stepInEpoch, torch::kInt64));
  st.write("global_step", torch::tensor(state.globalStep, torch::kInt64));
  for (const auto& [name, value] : state.scalars) scalars.write(name, torch::tensor(value, torch::kFloat64));
  torch::serialize::OutputArchive tensors(root.compilation_unit());
  for (const auto& [name, value] : state.tensors) tensors.write(name, value.detach().contiguous());
  root.write("state", st);
  root.write("scalars", scalars);
  root.write("tensors", tensors);
  std::ostringstream os;
  root.save_to(os);
  writeFramedFile(path, "CHORUSCK", 1, os.str(), "checkpoint");
}

// The trainer's version-1 codec state: a TorchScript archive inside a byte tensor.
torch::Tensor version1CodecBlob() {
  torch::serialize::OutputArchive a;
  a.write("b0_t_residual", torch::arange(5, torch::kFloat32) * 0.25);
  a.write("b0_s_step", torch::tensor({3.0}, torch::kDouble));
  a.write("b0_rng", torch::tensor({static_cast<int64_t>(0x1234567890abLL)}, torch::kLong));
  std::ostringstream os;
  a.save_to(os);
  std::string s = os.str();
  return torch::from_blob(s.data(), {static_cast<int64_t>(s.size())}, torch::kUInt8).clone();
}

class Upgrade : public Checkpoint, public ::testing::WithParamInterface<std::string> {};

TEST_P(Upgrade, Version1IsRefusedThenUpgradesToEqualTensors) {
  // A model whose parameters have distinct shapes, so a misordered optimizer state would show.
  auto a = smallCnn(1);
  auto optA = optimizerFor(GetParam(), *a);
  for (int64_t i = 0; i < 3; ++i) trainStep(a, *optA, i);
  setLearningRate(*optA, 0.0123);
  TrainState st;
  st.epoch = 1;
  st.stepInEpoch = 4;
  st.globalStep = 14;
  st.scalars = {{"amp.scale", 65536.0}, {"third", 0.1 + 0.2}};
  st.tensors["codec.rank0"] = version1CodecBlob();
  const std::string old = path("old.pt"), fresh = path("new.pt");
  saveVersion1(old, *a, *optA, st, GetParam().c_str());

  auto b = smallCnn(2);
  auto optB = optimizerFor(GetParam(), *b);
  const auto before = b->named_parameters()["0.weight"].clone();
  expectError([&] { loadCheckpoint(old, *b, *optB); },
              {old, "version 1", "would run TorchScript code", "If you trust the file",
               str("chorus checkpoint upgrade ", old, " NEW.pt")});
  EXPECT_TRUE(torch::equal(b->named_parameters()["0.weight"], before));

  UpgradeReport r = upgradeCheckpoint(old, fresh);
  EXPECT_EQ(r.optimizer, GetParam());
  EXPECT_EQ(r.params, a->parameters().size());
  EXPECT_EQ(r.buffers, a->buffers().size());
  EXPECT_EQ(r.optimizerStates, optA->state().size());
  EXPECT_GT(r.optimizerStates, 0u);
  EXPECT_EQ(r.globalStep, 14);

  TrainState got = loadCheckpoint(fresh, *b, *optB);
  EXPECT_EQ(got.epoch, 1);
  EXPECT_EQ(got.stepInEpoch, 4);
  EXPECT_EQ(got.globalStep, 14);
  EXPECT_EQ(got.scalars, st.scalars);
  expectSameTensors(*a, *b);
  EXPECT_EQ(optB->param_groups()[0].options().get_lr(), 0.0123);
  // The codec blob became a tensor table with the same entries.
  torch::Tensor blob = got.tensors.at("codec.rank0");
  auto inner = decodeTensors(blob.data_ptr(), static_cast<size_t>(blob.numel()), "codec");
  ASSERT_EQ(inner.size(), 3u);
  std::map<std::string, torch::Tensor> byName(inner.begin(), inner.end());
  EXPECT_TRUE(torch::equal(byName.at("b0_t_residual"), torch::arange(5, torch::kFloat32) * 0.25));
  EXPECT_EQ(byName.at("b0_s_step").item<double>(), 3.0);
  EXPECT_EQ(byName.at("b0_rng").item<int64_t>(), 0x1234567890abLL);
  // The optimizer state came along: the next steps stay bitwise equal.
  for (int64_t i = 3; i < 5; ++i) {
    trainStep(a, *optA, i);
    trainStep(b, *optB, i);
  }
  expectSameTensors(*a, *b);

  // Once is enough; an existing target is not overwritten unless it is the file itself.
  expectError([&] { upgradeCheckpoint(fresh, path("again.pt")); }, {fresh, "already version 2"});
  expectError([&] { upgradeCheckpoint(old, fresh); }, {fresh, "exists"});
  upgradeCheckpoint(old, old);
  auto c = smallCnn(3);
  auto optC = optimizerFor(GetParam(), *c);
  EXPECT_EQ(loadCheckpoint(old, *c, *optC).globalStep, 14);
}

INSTANTIATE_TEST_SUITE_P(Optimizers, Upgrade, ::testing::Values("sgd", "adam", "adamw"));

TEST_F(Checkpoint, UpgradeRefusesWhatIsNotAVersion1Checkpoint) {
  writeFramedFile(path("junk.pt"), "CHORUSCK", 1, "not a zip archive", "checkpoint");
  expectError([&] { upgradeCheckpoint(path("junk.pt"), path("out.pt")); },
              {path("junk.pt"), "the version-1 payload cannot be read"});
  EXPECT_FALSE(fs::exists(path("out.pt")));
  expectError([&] { upgradeCheckpoint("/dev/zero", path("out.pt")); }, {"/dev/zero", "character device"});
}

TEST_F(Checkpoint, TensorsEncodeAndDecode) {
  std::vector<std::pair<std::string, torch::Tensor>> in = {{"a", torch::randn({2, 3})},
                                                           {"b", torch::tensor({7}, torch::kLong)}};
  std::string bytes = encodeTensors(in);
  auto out = decodeTensors(bytes.data(), bytes.size(), "blob");
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].first, "a");
  EXPECT_TRUE(torch::equal(out[0].second, in[0].second));
  EXPECT_TRUE(torch::equal(out[1].second, in[1].second));
  expectError([&] { decodeTensors(bytes.data(), bytes.size() - 1, "checkpoint x, entry 'codec.rank0'"); },
              {"checkpoint x, entry 'codec.rank0'"});
  std::vector<std::pair<std::string, torch::Tensor>> complex = {{"z", torch::zeros({2}, torch::kComplexFloat)}};
  expectError([&] { encodeTensors(complex); }, {"'z'", "checkpoints do not store"});
}

}  // namespace
}  // namespace chorus::train
