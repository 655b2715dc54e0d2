// The text task: steps per epoch from the corpus size, batches that are corpus text with the
// next bytes as targets, the dp split (the union over the ranks is one rank's global batch),
// determinism by global step across epochs, evaluation through an EvalRunner (a fake model, a
// fake loss split over 2 ranks, and a tiny GPT whose two paths agree with a plain reference),
// "bpb", gptOptions, makeTask's text branch, and the errors.
#include "chorus/train/text_task.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/train/loop.h"
#include "util/rank_threads.h"

namespace chorus::train {
namespace {

namespace fs = std::filesystem;

#define EXPECT_CONTAINS(haystack, needle) EXPECT_NE(std::string(haystack).find(needle), std::string::npos) \
    << "  message: " << (haystack) << "\n  expected to contain: " << (needle)

constexpr int kFiles = 10, kBytesEach = 3000;

// File i of the corpus: kBytesEach bytes of a sequence that differs per file and rarely repeats.
std::string fileText(int i) {
  std::string s;
  uint32_t x = 12345u + 7919u * static_cast<uint32_t>(i);
  for (int j = 0; j < kBytesEach; ++j) {
    x = x * 1103515245u + 12345u;
    s.push_back(static_cast<char>(' ' + (x >> 16) % 90));
  }
  return s;
}

class TextTaskTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/chorus_text_task_test_" + std::to_string(::getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    // f00 .. f09: text.h's rule puts f01 in validation, the other nine in training.
    for (int i = 0; i < kFiles; ++i) {
      char name[8];
      std::snprintf(name, sizeof name, "f%02d", i);
      std::ofstream(dir_ + "/" + name, std::ios::binary) << fileText(i);
      (i == 1 ? validation_ : train_) += fileText(i);
    }
  }
  void TearDown() override { fs::remove_all(dir_); }

  Config config(std::vector<std::string> more = {}) const {
    std::vector<std::string> o = {"model.name=gpt",    "data.dataset=fortunes", "data.path=" + dir_,
                                  "model.context=8",   "model.layers=1",        "model.embed=16",
                                  "model.heads=2",     "train.batch_size=4",    "data.eval_windows=5"};
    o.insert(o.end(), more.begin(), more.end());
    return parseConfig("", "test", o, 0);
  }

  std::string dir_, train_, validation_;
};

std::string rowText(const torch::Tensor& row) {
  std::string s;
  for (int64_t i = 0; i < row.size(0); ++i) s.push_back(static_cast<char>(row[i].item<int64_t>()));
  return s;
}

TEST_F(TextTaskTest, StepsPerEpochCoverTheTrainingBytes) {
  TextTask t(config(), 0, 1, false);
  EXPECT_EQ(t.trainCorpus().size(), 9 * kBytesEach);
  EXPECT_EQ(t.stepsPerEpoch(), 9 * kBytesEach / (4 * 8));  // 843
  EXPECT_EQ(t.localBatch(), 4);
  // A batch larger than the corpus still makes one step.
  TextTask big(config({"train.batch_size=4096"}), 0, 1, false);
  EXPECT_EQ(big.stepsPerEpoch(), 1);
}

TEST_F(TextTaskTest, BatchesAreCorpusTextWithTheNextBytesAsTargets) {
  TextTask t(config(), 0, 1, false);
  t.setEpoch(0);
  Batch b = t.batch(3);
  ASSERT_EQ(b.input.sizes(), (std::vector<int64_t>{4, 8}));
  ASSERT_EQ(b.target.sizes(), (std::vector<int64_t>{4, 8}));
  EXPECT_EQ(b.input.scalar_type(), torch::kLong);
  EXPECT_EQ(b.target.scalar_type(), torch::kLong);
  for (int64_t r = 0; r < 4; ++r) {
    const std::string ids = rowText(b.input[r]), next = rowText(b.target[r]);
    EXPECT_EQ(ids.substr(1), next.substr(0, 7)) << r;
    EXPECT_NE(train_.find(ids + next.back()), std::string::npos) << "row " << r << " is not training text";
    EXPECT_EQ(validation_.find(ids + next.back()), std::string::npos) << "row " << r << " is validation text";
  }
}

TEST_F(TextTaskTest, TwoDataRanksTogetherHoldOneRanksGlobalBatch) {
  TextTask one(config(), 0, 1, false), r0(config(), 0, 2, false), r1(config(), 1, 2, false);
  EXPECT_EQ(r0.localBatch(), 2);
  EXPECT_EQ(r0.stepsPerEpoch(), one.stepsPerEpoch());
  for (int64_t epoch : {0, 2}) {
    for (TextTask* t : {&one, &r0, &r1}) t->setEpoch(epoch);
    for (int64_t step : {0, 1, 17}) {
      Batch a = one.batch(step), b0 = r0.batch(step), b1 = r1.batch(step);
      ASSERT_EQ(b0.input.size(0), 2);
      EXPECT_TRUE(torch::equal(torch::cat({b0.input, b1.input}), a.input)) << epoch << " " << step;
      EXPECT_TRUE(torch::equal(torch::cat({b0.target, b1.target}), a.target)) << epoch << " " << step;
    }
  }
}

TEST_F(TextTaskTest, ABatchDependsOnTheGlobalStepOnly) {
  TextTask a(config(), 0, 1, false), b(config(), 0, 1, false);
  const int64_t spe = a.stepsPerEpoch();
  a.setEpoch(2);
  Batch late = a.batch(5);
  // The same task asked again, after other batches, and another task: the same windows.
  a.setEpoch(0);
  a.batch(5);
  a.setEpoch(2);
  EXPECT_TRUE(torch::equal(a.batch(5).input, late.input));
  b.setEpoch(2);
  EXPECT_TRUE(torch::equal(b.batch(5).input, late.input));
  // It is text.h's step 2 * spe + 5 of the run, not step 5 of every epoch.
  TextBatch ref = trainWindows(a.trainCorpus(), 4, 8, 0, 2 * spe + 5);
  EXPECT_TRUE(torch::equal(ref.ids, late.input));
  EXPECT_TRUE(torch::equal(ref.targets, late.target));
  a.setEpoch(0);
  EXPECT_FALSE(torch::equal(a.batch(5).input, late.input));
  EXPECT_FALSE(torch::equal(a.batch(6).input, a.batch(5).input));
  // Another seed, other windows.
  TextTask s(config({"train.seed=7"}), 0, 1, false);
  s.setEpoch(2);
  EXPECT_FALSE(torch::equal(s.batch(5).input, late.input));
}

TEST_F(TextTaskTest, UniformLogitsScoreEightBitsPerByte) {
  TextTask t(config(), 0, 1, true);
  ASSERT_EQ(t.evalSet().ids.size(0), 5);
  EXPECT_EQ(t.evalKeys(), (std::vector<std::string>{"val_loss", "val_bpb"}));
  int calls = 0;
  EvalRunner run;
  run.forward = [&](const torch::Tensor& ids) {
    ++calls;
    return torch::zeros({ids.size(0), ids.size(1), 256});
  };
  EvalMetrics m = t.evaluate(run);
  EXPECT_EQ(calls, 2);  // 5 windows in chunks of train.batch_size = 4
  EXPECT_NEAR(m.value("val_loss"), std::log(256.0), 1e-6);
  EXPECT_NEAR(m.value("val_bpb"), 8.0, 1e-5);
  EXPECT_CONTAINS(m.text, "bits per byte");
}

// A fake loss that depends on the data: the mean target byte / 100. Over uneven chunks and two
// ranks the task must still give the mean over every validation position.
TEST_F(TextTaskTest, EvaluationWeighsChunksAndSumsOverRanks) {
  TextTask single(config({"train.batch_size=2"}), 0, 1, true);
  const double expected = single.evalSet().targets.to(torch::kDouble).mean().item<double>() / 100;
  EvalRunner run;
  run.loss = [](const Batch& b) { return b.target.to(torch::kFloat).mean() / 100; };
  EXPECT_NEAR(single.evaluate(run).value("val_loss"), expected, 1e-6);
  std::mutex mu;
  std::vector<double> got;
  testutil::runRanks(2, "loopback", [&](comm::ProcessGroup& g) {
    TextTask t(config({"train.batch_size=2"}), g.rank(), 2, true);
    EvalRunner r;
    r.group = &g;
    r.loss = run.loss;
    const double v = t.evaluate(r).value("val_loss");
    std::lock_guard<std::mutex> lock(mu);
    got.push_back(v);
  });
  ASSERT_EQ(got.size(), 2u);
  for (double v : got) EXPECT_NEAR(v, expected, 1e-6);
  // run.loss wins over forward when both are set.
  run.forward = [](const torch::Tensor& ids) { return torch::zeros({ids.size(0), ids.size(1), 256}); };
  EXPECT_NEAR(single.evaluate(run).value("val_loss"), expected, 1e-6);
}

TEST_F(TextTaskTest, ATinyGptScoresTheSameThroughForwardAndLoss) {
  Config cfg = config();
  TextTask t(cfg, 0, 1, true);
  Gpt model(gptOptions(cfg));
  model->eval();
  EvalRunner byLogits;
  byLogits.forward = [&](const torch::Tensor& ids) { return model->fullLogits(ids); };
  EvalRunner byLoss;
  byLoss.loss = [&](const Batch& b) { return model->loss(b.input, b.target); };
  // The reference: one cross-entropy over every validation position, from text.h's windows.
  TextBatch windows = evalWindows(loadTextCorpus(dir_, false), 5, 8);
  torch::NoGradGuard noGrad;
  const double ref = torch::nn::functional::cross_entropy(model->fullLogits(windows.ids).reshape({-1, 256}),
                                                          windows.targets.reshape({-1}))
                         .item<double>();
  EvalMetrics a = t.evaluate(byLogits), b = t.evaluate(byLoss);
  EXPECT_NEAR(a.value("val_loss"), ref, 1e-5);
  EXPECT_NEAR(b.value("val_loss"), ref, 1e-5);
  EXPECT_NEAR(a.value("val_bpb"), ref / std::log(2.0), 1e-5);
  // An untrained model is close to a uniform guess.
  EXPECT_NEAR(a.value("val_bpb"), 8.0, 0.5);
}

TEST_F(TextTaskTest, LossAndStepFields) {
  TextTask t(config(), 0, 1, false);
  torch::Tensor logits = torch::zeros({2, 3, 256});
  logits.index_put_({0, 0, 7}, 2.0);
  torch::Tensor target = torch::full({2, 3}, 7, torch::kLong);
  const double z = std::exp(2.0) + 255;
  const double expected = (-(2.0 - std::log(z)) + 5 * std::log(256.0)) / 6;
  EXPECT_NEAR(t.loss(logits, target).item<double>(), expected, 1e-6);
  EXPECT_EQ(t.loss(logits, target).scalar_type(), torch::kFloat);
  JsonObject record;
  record.add("loss", 1.0);
  t.stepFields(record, std::log(2.0) * 3);
  EXPECT_CONTAINS(record.str(), "\"bpb\": 3");
  EXPECT_THROW(t.makeModel(), InvalidArgument);
  EXPECT_THROW(t.evaluate(EvalRunner{}), InvalidArgument);  // no validation set loaded
}

TEST_F(TextTaskTest, GptOptionsFollowTheConfig) {
  Config cfg = config({"model.layers=3", "model.heads=4", "model.embed=32", "model.context=16", "model.dropout=0.25",
                       "model.tie_embeddings=false", "train.seed=9"});
  GptOptions o = gptOptions(cfg);
  EXPECT_EQ(o.vocab, 256);
  EXPECT_EQ(o.layers, 3);
  EXPECT_EQ(o.heads, 4);
  EXPECT_EQ(o.embed, 32);
  EXPECT_EQ(o.context, 16);
  EXPECT_DOUBLE_EQ(o.dropout, 0.25);
  EXPECT_FALSE(o.tieEmbeddings);
  EXPECT_FALSE(o.sequenceParallel);
  EXPECT_EQ(o.seed, 9u);
  EXPECT_TRUE(gptOptions(config({"parallel.tp=2", "parallel.sequence_parallel=true"})).sequenceParallel);
}

TEST_F(TextTaskTest, MakeTaskBuildsTheTextTaskForFortunes) {
  Roles roles;
  roles.dataRank = 1;
  roles.dataRanks = 2;
  roles.evaluates = false;
  std::unique_ptr<Task> task = makeTask(config(), roles);
  auto* text = dynamic_cast<TextTask*>(task.get());
  ASSERT_NE(text, nullptr);
  EXPECT_EQ(text->localBatch(), 2);
  EXPECT_FALSE(text->evalSet().ids.defined());  // evaluates = false: no validation loaded
  roles.evaluates = true;
  EXPECT_EQ(dynamic_cast<TextTask&>(*makeTask(config(), roles)).evalSet().ids.size(0), 5);
  EXPECT_FALSE(dynamic_cast<TextTask&>(*makeTask(config({"train.eval=false"}), roles)).evalSet().ids.defined());
}

TEST_F(TextTaskTest, Errors) {
  try {
    TextTask t(config({"train.batch_size=5"}), 0, 2, false);
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_CONTAINS(e.what(), "train.batch_size = 5: 5 windows cannot be split evenly over 2 data-parallel replicas");
  }
  try {
    TextTask t(config({"data.eval_windows=5000"}), 0, 1, true);
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_CONTAINS(e.what(), "data.eval_windows = 5000 with model.context = 8: ");
  }
  try {
    TextTask t(config({"model.context=30000"}), 0, 1, false);
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_CONTAINS(e.what(), "model.context = 30000: ");
  }
  try {
    TextTask t(config({"data.path=" + dir_ + "/missing"}), 0, 1, false);
    ADD_FAILURE() << "no error";
  } catch (const InvalidArgument& e) {
    EXPECT_CONTAINS(e.what(), "apt install fortunes");
  }
}

}  // namespace
}  // namespace chorus::train
