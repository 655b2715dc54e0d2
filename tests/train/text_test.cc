// The byte-level text corpus: the split by file (disjoint, covering, skipping indexes, links,
// hidden files and folders), the bytes of each split, windows and their targets, the
// determinism of a step's windows and their split over data-parallel ranks, the same draws as
// Python's torch (what bench/model-parallel/gpt_torch.py relies on), the evenly spread
// validation windows, bits per byte, and the errors of a missing or too small corpus.
#include "chorus/train/text.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>

#include "chorus/common/error.h"

namespace chorus::train {
namespace {

namespace fs = std::filesystem;

#define EXPECT_CONTAINS(haystack, needle) EXPECT_NE(std::string(haystack).find(needle), std::string::npos) \
    << "  message: " << (haystack) << "\n  expected to contain: " << (needle)

class TextCorpusTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/chorus_text_test_" + std::to_string(::getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  void write(const std::string& name, const std::string& text) const {
    std::ofstream(dir_ + "/" + name, std::ios::binary) << text;
  }
  // Files f00 .. f<n-1>, file i holding `bytesEach` copies of the letter 'a' + i.
  void writeNumbered(int n, int bytesEach) const {
    for (int i = 0; i < n; ++i) {
      char name[8];
      std::snprintf(name, sizeof name, "f%02d", i);
      write(name, std::string(static_cast<size_t>(bytesEach), static_cast<char>('a' + i)));
    }
  }

  std::string dir_;
};

std::string asText(const torch::Tensor& bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()), static_cast<size_t>(bytes.numel()));
}

// A corpus in memory: bytes[i] = i for i < n (n <= 256), so a window's first id is its start.
TextCorpus ramp(int64_t n) {
  TextCorpus c;
  c.name = "ramp";
  c.bytes = torch::arange(n, torch::kLong).to(torch::kUInt8);
  return c;
}

TEST_F(TextCorpusTest, SplitByFileIsDisjointAndCoversEveryFile) {
  writeNumbered(12, 3);
  // Not text files of the corpus: a strfile index, a hidden file, a link, a folder.
  write("f00.dat", "index");
  write(".hidden", "x");
  fs::create_symlink(dir_ + "/f03", dir_ + "/f03.u8");
  fs::create_directories(dir_ + "/off");
  write("off/f99", "offensive");

  std::vector<std::string> train = textCorpusFiles(dir_, true), val = textCorpusFiles(dir_, false);
  // Sorted index i is validation when i % 10 == 1: f01 and f11.
  EXPECT_EQ(val, (std::vector<std::string>{"f01", "f11"}));
  EXPECT_EQ(train, (std::vector<std::string>{"f00", "f02", "f03", "f04", "f05", "f06", "f07", "f08", "f09", "f10"}));
  std::set<std::string> all(train.begin(), train.end());
  for (const std::string& v : val) EXPECT_TRUE(all.insert(v).second) << v << " is in both splits";
  EXPECT_EQ(all.size(), 12u);

  // Each split is its files' bytes in sorted order.
  TextCorpus t = loadTextCorpus(dir_, true), v = loadTextCorpus(dir_, false);
  EXPECT_EQ(t.files, train);
  EXPECT_EQ(v.files, val);
  EXPECT_EQ(asText(v.bytes), "bbblll");
  EXPECT_EQ(asText(t.bytes), "aaacccdddeeefffggghhhiiijjjkkk");
  EXPECT_EQ(t.bytes.scalar_type(), torch::kUInt8);
  EXPECT_CONTAINS(v.name, "(validation)");
}

TEST_F(TextCorpusTest, TwoFilesGiveOneToEachSplit) {
  write("b", "second");
  write("a", "first");
  EXPECT_EQ(textCorpusFiles(dir_, true), (std::vector<std::string>{"a"}));
  EXPECT_EQ(textCorpusFiles(dir_, false), (std::vector<std::string>{"b"}));
}

TEST_F(TextCorpusTest, MissingOrTooSmallCorpusSaysWhatToInstall) {
  for (const std::string& dir : {dir_ + "/nowhere", dir_}) {
    try {
      loadTextCorpus(dir, true);
      ADD_FAILURE() << "no error for " << dir;
    } catch (const InvalidArgument& e) {
      EXPECT_CONTAINS(e.what(), "'" + dir + "'");
      EXPECT_CONTAINS(e.what(), "apt install fortunes");
      EXPECT_CONTAINS(e.what(), "data.path");
    }
  }
  write("only", "one file");
  write("only.dat", "its index");
  try {
    textCorpusFiles(dir_, false);
    ADD_FAILURE() << "one file was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_CONTAINS(e.what(), "holds 1 text file (");
    EXPECT_CONTAINS(e.what(), "it needs at least 2, one for validation");
  }
  // Files that are all empty.
  write("zz", "");
  write("only", "");
  EXPECT_THROW(loadTextCorpus(dir_, true), InvalidArgument);
}

TEST(TextWindows, TargetsAreTheNextByte) {
  const TextCorpus c = ramp(200);
  auto gen = at::detail::createCPUGenerator(5);
  TextBatch b = randomWindows(c, 64, 10, gen);
  ASSERT_EQ(b.ids.sizes(), (std::vector<int64_t>{64, 10}));
  ASSERT_EQ(b.targets.sizes(), (std::vector<int64_t>{64, 10}));
  EXPECT_EQ(b.ids.scalar_type(), torch::kLong);
  auto ids = b.ids.accessor<int64_t, 2>(), targets = b.targets.accessor<int64_t, 2>();
  for (int64_t r = 0; r < 64; ++r) {
    const int64_t start = ids[r][0];
    EXPECT_GE(start, 0);
    EXPECT_LE(start, 200 - 10 - 1);
    for (int64_t t = 0; t < 10; ++t) {
      EXPECT_EQ(ids[r][t], start + t);
      EXPECT_EQ(targets[r][t], start + t + 1);
    }
  }
}

TEST(TextWindows, StartsReachBothEnds) {
  // 12 bytes, context 10: the only starts are 0 and 1, and the last target is the last byte.
  const TextCorpus c = ramp(12);
  auto gen = at::detail::createCPUGenerator(1);
  TextBatch b = randomWindows(c, 64, 10, gen);
  std::set<int64_t> starts;
  for (int64_t r = 0; r < 64; ++r) starts.insert(b.ids[r][0].item<int64_t>());
  EXPECT_EQ(starts, (std::set<int64_t>{0, 1}));
  EXPECT_EQ(b.targets.max().item<int64_t>(), 11);
  // Context + 1 bytes is the least a window needs.
  EXPECT_NO_THROW(randomWindows(ramp(11), 4, 10, gen));
  try {
    randomWindows(ramp(10), 4, 10, gen);
    ADD_FAILURE() << "no error";
  } catch (const InvalidArgument& e) {
    EXPECT_CONTAINS(e.what(), "ramp holds 10 bytes, too few for a window of context 10");
  }
  EXPECT_THROW(windowsAt(ramp(20), torch::tensor({int64_t{10}}), 10), InvalidArgument);  // start 10 > 20-10-1
}

// Reference values from Python: gpt_torch.py's window_seed and torch.randint(0, 192, (8,),
// generator=g) with g.manual_seed(window_seed(seed, step)), torch 1.13. splitmix64(0) is the
// generator's published first output.
TEST(TextWindows, SameDrawsAsPythonTorch) {
  EXPECT_EQ(windowSeed(0, 0), 0xa706dd2f4d197e6full);
  EXPECT_EQ(windowSeed(7, 3), 0x6baa78681a99f995ull);
  const TextCorpus c = ramp(200);  // starts in [0, 200 - 8 - 1]: randint(0, 192)
  struct Case {
    uint64_t seed;
    int64_t step;
    std::vector<int64_t> starts;
  };
  const std::vector<Case> cases = {
      {0, 0, {75, 115, 27, 113, 65, 118, 94, 86}},
      {7, 3, {75, 9, 95, 78, 12, 87, 61, 136}},
      {~uint64_t{0}, 123456789, {104, 66, 11, 108, 62, 43, 48, 81}},
  };
  for (const Case& k : cases) {
    TextBatch b = trainWindows(c, 8, 8, k.seed, k.step);
    std::vector<int64_t> got(8);
    for (int64_t r = 0; r < 8; ++r) got[static_cast<size_t>(r)] = b.ids[r][0].item<int64_t>();
    EXPECT_EQ(got, k.starts) << "seed " << k.seed << " step " << k.step;
  }
}

TEST(TextWindows, StepWindowsAreDeterministicAndSplitOverDataParallelRanks) {
  const TextCorpus c = ramp(256);
  TextBatch a = trainWindows(c, 12, 16, 42, 7);
  torch::manual_seed(123);  // the global generator plays no part
  TextBatch again = trainWindows(c, 12, 16, 42, 7);
  EXPECT_TRUE(torch::equal(a.ids, again.ids));
  EXPECT_TRUE(torch::equal(a.targets, again.targets));
  EXPECT_FALSE(torch::equal(a.ids, trainWindows(c, 12, 16, 42, 8).ids)) << "the next step repeats this one";
  EXPECT_FALSE(torch::equal(a.ids, trainWindows(c, 12, 16, 43, 7).ids)) << "another seed gives the same windows";
  // Every dp size: the ranks' slices, in rank order, are the global batch.
  for (int ranks : {1, 2, 3, 4, 6, 12}) {
    std::vector<torch::Tensor> ids, targets;
    for (int r = 0; r < ranks; ++r) {
      TextBatch s = trainWindows(c, 12, 16, 42, 7, r, ranks);
      EXPECT_EQ(s.ids.size(0), 12 / ranks);
      ids.push_back(s.ids);
      targets.push_back(s.targets);
    }
    EXPECT_TRUE(torch::equal(torch::cat(ids), a.ids)) << ranks;
    EXPECT_TRUE(torch::equal(torch::cat(targets), a.targets)) << ranks;
  }
  EXPECT_THROW(trainWindows(c, 12, 16, 42, 7, 0, 5), InvalidArgument);  // 12 over 5 ranks
  EXPECT_THROW(trainWindows(c, 12, 16, 42, 7, 2, 2), InvalidArgument);  // no rank 2 of 2
}

TEST(TextWindows, EvalWindowsAreSpreadEvenly) {
  // 100 bytes, context 10: the last start is 89; 5 windows start at i * 89 / 4.
  const TextCorpus c = ramp(100);
  TextBatch b = evalWindows(c, 5, 10);
  ASSERT_EQ(b.ids.size(0), 5);
  std::vector<int64_t> starts;
  for (int64_t r = 0; r < 5; ++r) starts.push_back(b.ids[r][0].item<int64_t>());
  EXPECT_EQ(starts, (std::vector<int64_t>{0, 22, 44, 66, 89}));
  EXPECT_TRUE(torch::equal(b.targets, b.ids + 1));
  EXPECT_EQ(evalWindows(c, 1, 10).ids[0][0].item<int64_t>(), 0);
  EXPECT_EQ(evalWindows(c, 90, 10).ids.size(0), 90);  // every start once
  EXPECT_TRUE(torch::equal(evalWindows(c, 90, 10).ids.select(1, 0), torch::arange(90, torch::kLong)));
  try {
    evalWindows(c, 91, 10);
    ADD_FAILURE() << "no error";
  } catch (const InvalidArgument& e) {
    EXPECT_CONTAINS(e.what(), "it has 90 distinct starts; use 1 to 90");
  }
  EXPECT_THROW(evalWindows(c, 0, 10), InvalidArgument);
}

TEST(TextWindows, BitsPerByte) {
  EXPECT_DOUBLE_EQ(bitsPerByte(std::log(2.0)), 1.0);
  EXPECT_DOUBLE_EQ(bitsPerByte(std::log(256.0)), 8.0);  // a uniform guess over the bytes
  EXPECT_DOUBLE_EQ(bitsPerByte(0.0), 0.0);
  EXPECT_NEAR(bitsPerByte(1.0), 1.4426950408889634, 1e-15);
}

// The installed fortunes package, when there is one: the split's sizes as text.h states them.
TEST(TextCorpusFortunes, SplitOfTheInstalledPackage) {
  if (!fs::is_directory(kFortunesDir)) GTEST_SKIP() << kFortunesDir << " is missing (apt install fortunes)";
  std::vector<std::string> val = textCorpusFiles(kFortunesDir, false), train = textCorpusFiles(kFortunesDir, true);
  const size_t n = train.size() + val.size();
  EXPECT_EQ(val.size(), (n + 8) / 10);  // the indexes 1, 11, 21, ... below n
  int64_t valBytes = 0, trainBytes = 0;
  for (const std::string& f : val) valBytes += static_cast<int64_t>(fs::file_size(fs::path(kFortunesDir) / f));
  for (const std::string& f : train) trainBytes += static_cast<int64_t>(fs::file_size(fs::path(kFortunesDir) / f));
  const double share = static_cast<double>(valBytes) / static_cast<double>(valBytes + trainBytes);
  EXPECT_GT(share, 0.05);
  EXPECT_LT(share, 0.15);
  TextCorpus v = loadTextCorpus(kFortunesDir, false);
  EXPECT_EQ(v.size(), valBytes);
}

}  // namespace
}  // namespace chorus::train
