// The dataset loaders: the real Fashion-MNIST (sizes, shapes, labels, normalization, load
// time), and small IDX and CIFAR-10 files written here, gzipped and plain, to check the exact
// values and every kind of broken file (missing, truncated, bad magic, count mismatch, bad
// label), each of whose errors must name the file.
#include "chorus/train/datasets.h"

#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "chorus/common/error.h"

namespace chorus::train {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<unsigned char>;

const std::string kFashionDir = "/usr/share/datasets/fashion-mnist";

#define EXPECT_CONTAINS(haystack, needle) EXPECT_NE(std::string(haystack).find(needle), std::string::npos) \
    << "  message: " << (haystack) << "\n  expected to contain: " << (needle)

// A fresh temporary folder per test, removed afterwards.
class TempDir : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/chorus_datasets_test_" + std::to_string(::getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return dir_ + "/" + name; }

  void writeFile(const std::string& name, const Bytes& data, bool gzip) {
    if (gzip) {
      gzFile f = gzopen(path(name).c_str(), "wb");
      ASSERT_NE(f, nullptr);
      ASSERT_EQ(gzwrite(f, data.data(), static_cast<unsigned>(data.size())), static_cast<int>(data.size()));
      ASSERT_EQ(gzclose(f), Z_OK);
    } else {
      std::ofstream(path(name), std::ios::binary).write(reinterpret_cast<const char*>(data.data()), data.size());
    }
  }

  std::string dir_;
};

void putBigEndian(Bytes& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<unsigned char>(v >> shift));
}

// An IDX file: magic, dimensions, then the payload.
Bytes idx(uint32_t magic, const std::vector<uint32_t>& dims, const Bytes& payload) {
  Bytes out;
  putBigEndian(out, magic);
  for (uint32_t d : dims) putBigEndian(out, d);
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

// n 28x28 images whose pixel j of image i is (i * 31 + j) % 256, and labels i % 10.
Bytes imagePixels(uint32_t n) {
  Bytes px(n * 784);
  for (size_t k = 0; k < px.size(); ++k) px[k] = static_cast<unsigned char>((k / 784 * 31 + k % 784) % 256);
  return px;
}
Bytes labelBytes(uint32_t n) {
  Bytes l(n);
  for (uint32_t i = 0; i < n; ++i) l[i] = static_cast<unsigned char>(i % 10);
  return l;
}

float fashionValue(int byte) { return (byte / 255.0f - 0.2860f) / 0.3530f; }

// The message of the chorus::Error that f throws (and its exact type through `ExpectedType`).
template <typename ExpectedType, typename F>
std::string errorOf(F f) {
  try {
    f();
  } catch (const ExpectedType& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no exception";
  return "";
}

TEST(FashionMnist, RealFilesLoadNormalizedAndFast) {
  if (!fs::exists(kFashionDir + "/train-images-idx3-ubyte.gz"))
    GTEST_SKIP() << "Fashion-MNIST is not installed (apt install dataset-fashion-mnist)";
  auto start = std::chrono::steady_clock::now();
  Dataset train = loadFashionMnist(kFashionDir, true);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("loading the Fashion-MNIST train split took %.3f s\n", seconds);
  EXPECT_LT(seconds, 5.0);  // about 0.3 s in an optimized build; sanitizer builds are slower

  EXPECT_EQ(train.name, "fashion-mnist/train");
  EXPECT_EQ(train.size(), 60000);
  EXPECT_EQ(train.classes, 10);
  EXPECT_EQ(train.images.sizes(), (std::vector<int64_t>{60000, 1, 28, 28}));
  EXPECT_EQ(train.images.scalar_type(), torch::kFloat32);
  EXPECT_EQ(train.labels.scalar_type(), torch::kInt64);
  EXPECT_EQ(train.labels.min().item<int64_t>(), 0);
  EXPECT_EQ(train.labels.max().item<int64_t>(), 9);
  // Fashion-MNIST's train split is balanced: 6000 of each class.
  auto counts = torch::bincount(train.labels);
  EXPECT_TRUE(torch::equal(counts, torch::full({10}, 6000, torch::kInt64))) << counts;
  EXPECT_NEAR(train.images.mean().item<double>(), 0.0, 0.01);
  EXPECT_NEAR(train.images.std().item<double>(), 1.0, 0.01);
  // The smallest value is a black pixel.
  EXPECT_FLOAT_EQ(train.images.min().item<float>(), fashionValue(0));
  EXPECT_FLOAT_EQ(train.images.max().item<float>(), fashionValue(255));

  Dataset test = loadFashionMnist(kFashionDir, false);
  EXPECT_EQ(test.name, "fashion-mnist/test");
  EXPECT_EQ(test.size(), 10000);
  EXPECT_EQ(test.images.sizes(), (std::vector<int64_t>{10000, 1, 28, 28}));
  EXPECT_EQ(test.labels.max().item<int64_t>(), 9);

  // A limit keeps the first samples.
  Dataset few = loadDataset("fashion-mnist", kFashionDir, true, 100);
  EXPECT_EQ(few.size(), 100);
  EXPECT_TRUE(torch::equal(few.images, train.images.narrow(0, 0, 100)));
  EXPECT_TRUE(torch::equal(few.labels, train.labels.narrow(0, 0, 100)));
  EXPECT_EQ(loadFashionMnist(kFashionDir, false, 1000000).size(), 10000);
}

using FashionFiles = TempDir;

TEST_F(FashionFiles, GzipAndPlainGiveTheExactValues) {
  for (bool gzip : {true, false}) {
    std::string suffix = gzip ? ".gz" : "";
    writeFile("t10k-images-idx3-ubyte" + suffix, idx(2051, {3, 28, 28}, imagePixels(3)), gzip);
    writeFile("t10k-labels-idx1-ubyte" + suffix, idx(2049, {3}, {7, 0, 9}), gzip);
    Dataset d = loadFashionMnist(dir_, false);
    ASSERT_EQ(d.size(), 3);
    EXPECT_EQ(d.images.sizes(), (std::vector<int64_t>{3, 1, 28, 28}));
    EXPECT_EQ(d.labels[0].item<int64_t>(), 7);
    EXPECT_EQ(d.labels[1].item<int64_t>(), 0);
    EXPECT_EQ(d.labels[2].item<int64_t>(), 9);
    auto flat = d.images.reshape({3, 784});
    for (int i = 0; i < 3; ++i)
      for (int j : {0, 1, 27, 28, 400, 783})
        EXPECT_FLOAT_EQ(flat[i][j].item<float>(), fashionValue((i * 31 + j) % 256)) << gzip << " " << i << " " << j;
    Dataset one = loadFashionMnist(dir_, false, 1);
    EXPECT_EQ(one.size(), 1);
    EXPECT_TRUE(torch::equal(one.images[0], d.images[0]));
    fs::remove(path("t10k-images-idx3-ubyte" + suffix));
    fs::remove(path("t10k-labels-idx1-ubyte" + suffix));
  }
}

TEST_F(FashionFiles, GzipIsPreferredOverPlain) {
  writeFile("train-images-idx3-ubyte.gz", idx(2051, {2, 28, 28}, imagePixels(2)), true);
  writeFile("train-labels-idx1-ubyte.gz", idx(2049, {2}, {1, 2}), true);
  writeFile("train-images-idx3-ubyte", Bytes{1, 2, 3}, false);  // garbage, must not be read
  writeFile("train-labels-idx1-ubyte", Bytes{1, 2, 3}, false);
  EXPECT_EQ(loadFashionMnist(dir_, true).labels[1].item<int64_t>(), 2);
}

TEST_F(FashionFiles, MissingFilesSayWhatToInstall) {
  std::string msg = errorOf<InvalidArgument>([&] { loadFashionMnist(dir_, true); });
  EXPECT_CONTAINS(msg, path("train-images-idx3-ubyte.gz"));
  EXPECT_CONTAINS(msg, path("train-images-idx3-ubyte") + " exists");
  EXPECT_CONTAINS(msg, "install the Debian package dataset-fashion-mnist (apt install dataset-fashion-mnist) "
                       "or set data.path to the folder holding train-images-idx3-ubyte.gz");
  // Images present, labels missing.
  writeFile("train-images-idx3-ubyte.gz", idx(2051, {2, 28, 28}, imagePixels(2)), true);
  EXPECT_CONTAINS(errorOf<InvalidArgument>([&] { loadFashionMnist(dir_, true); }), path("train-labels-idx1-ubyte"));
  EXPECT_CONTAINS(errorOf<InvalidArgument>([&] { loadFashionMnist(dir_ + "/nowhere", false); }),
                  dir_ + "/nowhere/t10k-images-idx3-ubyte.gz");
}

TEST_F(FashionFiles, TruncatedFilesNameTheFile) {
  for (bool gzip : {true, false}) {
    std::string suffix = gzip ? ".gz" : "";
    // The header promises 5 images; the file holds 3 and a half.
    Bytes px = imagePixels(4);
    px.resize(3 * 784 + 392);
    writeFile("train-images-idx3-ubyte" + suffix, idx(2051, {5, 28, 28}, px), gzip);
    writeFile("train-labels-idx1-ubyte" + suffix, idx(2049, {5}, labelBytes(5)), gzip);
    std::string msg = errorOf<Error>([&] { loadFashionMnist(dir_, true); });
    EXPECT_CONTAINS(msg, path("train-images-idx3-ubyte" + suffix) + " is truncated: it ends before the 3920 bytes of images");
    // Within the limit, the first samples still load.
    EXPECT_EQ(loadFashionMnist(dir_, true, 3).size(), 3);

    // Labels cut short; a header cut short.
    writeFile("train-images-idx3-ubyte" + suffix, idx(2051, {5, 28, 28}, imagePixels(5)), gzip);
    writeFile("train-labels-idx1-ubyte" + suffix, idx(2049, {5}, {1, 2}), gzip);
    EXPECT_CONTAINS(errorOf<Error>([&] { loadFashionMnist(dir_, true); }),
                    path("train-labels-idx1-ubyte" + suffix) + " is truncated");
    writeFile("train-labels-idx1-ubyte" + suffix, Bytes{0, 0, 8, 1, 0}, gzip);
    EXPECT_CONTAINS(errorOf<Error>([&] { loadFashionMnist(dir_, true); }),
                    path("train-labels-idx1-ubyte" + suffix) + " is truncated");
    fs::remove(path("train-images-idx3-ubyte" + suffix));
    fs::remove(path("train-labels-idx1-ubyte" + suffix));
  }
}

// Found by fuzz/idx_fuzz.cc (fuzz/corpus/idx/finding-huge-count): two headers that agree on a
// huge count made the loader allocate for it (3.4 TB of floats at 2^32 - 1 images) before it
// read a pixel. Memory now grows with the data read, and such a file is reported truncated.
TEST_F(FashionFiles, HugeDeclaredCountIsATruncatedFileNotAnAllocation) {
  writeFile("train-images-idx3-ubyte", idx(2051, {0xFFFFFFFFu, 28, 28}, imagePixels(1)), false);
  writeFile("train-labels-idx1-ubyte", idx(2049, {0xFFFFFFFFu}, labelBytes(1)), false);
  EXPECT_CONTAINS(errorOf<Error>([&] { loadFashionMnist(dir_, true); }),
                  path("train-images-idx3-ubyte") + " is truncated: it ends before the 3367254359280 bytes of images");
  EXPECT_EQ(loadFashionMnist(dir_, true, 1).size(), 1);
}

TEST_F(FashionFiles, CutOrCorruptGzipStreamNamesTheFile) {
  writeFile("train-images-idx3-ubyte.gz", idx(2051, {50, 28, 28}, imagePixels(50)), true);
  writeFile("train-labels-idx1-ubyte.gz", idx(2049, {50}, labelBytes(50)), true);
  ASSERT_EQ(loadFashionMnist(dir_, true).size(), 50);
  const std::string images = path("train-images-idx3-ubyte.gz");
  std::ifstream in(images, std::ios::binary);
  Bytes gz((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();

  Bytes cut(gz.begin(), gz.begin() + gz.size() / 2);
  writeFile("train-images-idx3-ubyte.gz", cut, false);
  EXPECT_CONTAINS(errorOf<Error>([&] { loadFashionMnist(dir_, true); }), images);

  Bytes corrupt = gz;
  for (size_t i = corrupt.size() / 3; i < corrupt.size() / 3 + 16; ++i) corrupt[i] ^= 0x5a;
  writeFile("train-images-idx3-ubyte.gz", corrupt, false);
  EXPECT_CONTAINS(errorOf<Error>([&] { loadFashionMnist(dir_, true); }), images);
}

TEST_F(FashionFiles, BadMagicWrongSizeAndTrailingBytes) {
  writeFile("train-images-idx3-ubyte.gz", idx(2049, {2, 28, 28}, imagePixels(2)), true);
  writeFile("train-labels-idx1-ubyte.gz", idx(2049, {2}, {1, 2}), true);
  EXPECT_CONTAINS(errorOf<Error>([&] { loadFashionMnist(dir_, true); }),
                  path("train-images-idx3-ubyte.gz") + " is not an IDX images file: its magic number is 2049, "
                                                       "expected 2051");
  writeFile("train-images-idx3-ubyte.gz", idx(2051, {2, 28, 28}, imagePixels(2)), true);
  writeFile("train-labels-idx1-ubyte.gz", idx(2051, {2}, {1, 2}), true);
  EXPECT_CONTAINS(errorOf<Error>([&] { loadFashionMnist(dir_, true); }),
                  path("train-labels-idx1-ubyte.gz") + " is not an IDX labels file: its magic number is 2051, "
                                                       "expected 2049");
  writeFile("train-images-idx3-ubyte.gz", idx(2051, {1, 32, 32}, Bytes(1024)), true);
  EXPECT_CONTAINS(errorOf<Error>([&] { loadFashionMnist(dir_, true); }),
                  path("train-images-idx3-ubyte.gz") + " holds 32x32 images, expected 28x28");
  Bytes longer = imagePixels(2);
  longer.push_back(0);
  writeFile("train-images-idx3-ubyte.gz", idx(2051, {2, 28, 28}, longer), true);
  writeFile("train-labels-idx1-ubyte.gz", idx(2049, {2}, {1, 2}), true);
  EXPECT_CONTAINS(errorOf<Error>([&] { loadFashionMnist(dir_, true); }),
                  path("train-images-idx3-ubyte.gz") + " holds more bytes than its header declares");
}

TEST_F(FashionFiles, LabelCountMustMatchImageCount) {
  writeFile("train-images-idx3-ubyte", idx(2051, {3, 28, 28}, imagePixels(3)), false);
  writeFile("train-labels-idx1-ubyte.gz", idx(2049, {4}, labelBytes(4)), true);
  EXPECT_CONTAINS(errorOf<Error>([&] { loadFashionMnist(dir_, true); }),
                  path("train-labels-idx1-ubyte.gz") + " holds 4 labels but " + path("train-images-idx3-ubyte") +
                      " holds 3 images");
}

TEST_F(FashionFiles, LabelsAboveNineAreRejected) {
  writeFile("train-images-idx3-ubyte.gz", idx(2051, {3, 28, 28}, imagePixels(3)), true);
  writeFile("train-labels-idx1-ubyte.gz", idx(2049, {3}, {1, 12, 3}), true);
  EXPECT_CONTAINS(errorOf<Error>([&] { loadFashionMnist(dir_, true); }),
                  path("train-labels-idx1-ubyte.gz") + ": label 12 at index 1 is not a class 0..9");
}

// CIFAR-10 records: label, then 1024 bytes per channel; pixel j of record i is (i + j) % 256.
Bytes cifarRecords(int first, int count) {
  Bytes out;
  for (int i = first; i < first + count; ++i) {
    out.push_back(static_cast<unsigned char>(i % 10));
    for (int j = 0; j < 3072; ++j) out.push_back(static_cast<unsigned char>((i + j) % 256));
  }
  return out;
}

float cifarValue(int channel, int byte) {
  const float mean[3] = {0.4914f, 0.4822f, 0.4465f}, std[3] = {0.2470f, 0.2435f, 0.2616f};
  return (byte / 255.0f - mean[channel]) / std[channel];
}

using CifarFiles = TempDir;

TEST_F(CifarFiles, TrainBatchesLoadInOrderWithPerChannelNormalization) {
  for (int b = 1; b <= 5; ++b) writeFile("data_batch_" + std::to_string(b) + ".bin", cifarRecords((b - 1) * 2, 2), b == 3);
  writeFile("test_batch.bin", cifarRecords(100, 3), false);
  Dataset d = loadCifar10(dir_, true);
  EXPECT_EQ(d.name, "cifar10/train");
  ASSERT_EQ(d.size(), 10);
  EXPECT_EQ(d.images.sizes(), (std::vector<int64_t>{10, 3, 32, 32}));
  EXPECT_EQ(d.images.scalar_type(), torch::kFloat32);
  EXPECT_EQ(d.labels.scalar_type(), torch::kInt64);
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(d.labels[i].item<int64_t>(), i % 10);
    for (int c = 0; c < 3; ++c)
      for (int y : {0, 5, 31})
        for (int x : {0, 17, 31})
          EXPECT_FLOAT_EQ(d.images[i][c][y][x].item<float>(), cifarValue(c, (i + c * 1024 + y * 32 + x) % 256))
              << i << " " << c << " " << y << " " << x;
  }
  Dataset test = loadDataset("cifar10", dir_, false);
  EXPECT_EQ(test.name, "cifar10/test");
  EXPECT_EQ(test.size(), 3);
  EXPECT_EQ(test.labels[0].item<int64_t>(), 0);  // record 100: label 100 % 10

  // A limit across files: the first 3 are both records of batch 1 and the first of batch 2.
  Dataset three = loadCifar10(dir_, true, 3);
  EXPECT_EQ(three.size(), 3);
  EXPECT_TRUE(torch::equal(three.images, d.images.narrow(0, 0, 3)));
  // The folder the archive unpacks into is found from its parent.
  fs::create_directories(path("cifar-10-batches-bin"));
  fs::rename(path("test_batch.bin"), path("cifar-10-batches-bin/test_batch.bin"));
  EXPECT_EQ(loadCifar10(dir_, false).size(), 3);
}

TEST_F(CifarFiles, BrokenFilesNameTheFile) {
  std::string msg = errorOf<InvalidArgument>([&] { loadCifar10(dir_, false); });
  EXPECT_CONTAINS(msg, path("test_batch.bin"));
  EXPECT_CONTAINS(msg, "set data.path to the folder holding data_batch_1.bin");

  Bytes cut = cifarRecords(0, 2);
  cut.resize(cut.size() - 100);
  writeFile("test_batch.bin", cut, false);
  EXPECT_CONTAINS(errorOf<Error>([&] { loadCifar10(dir_, false); }),
                  path("test_batch.bin") + " is truncated: its record 1 is cut short");

  Bytes bad = cifarRecords(0, 1);
  bad[0] = 10;
  writeFile("test_batch.bin", bad, false);
  EXPECT_CONTAINS(errorOf<Error>([&] { loadCifar10(dir_, false); }),
                  path("test_batch.bin") + ": label 10 of record 0 is not a class 0..9");

  writeFile("test_batch.bin", Bytes{}, false);
  EXPECT_CONTAINS(errorOf<Error>([&] { loadCifar10(dir_, false); }), path("test_batch.bin") + " holds no records");

  // Four of the five train batches.
  for (int b = 1; b <= 4; ++b) writeFile("data_batch_" + std::to_string(b) + ".bin", cifarRecords(0, 1), false);
  EXPECT_CONTAINS(errorOf<InvalidArgument>([&] { loadCifar10(dir_, true); }), path("data_batch_5.bin"));
  EXPECT_EQ(loadCifar10(dir_, true, 4).size(), 4);  // the limit stops before the missing file
}

TEST(Datasets, UnknownNameAndNegativeLimit) {
  EXPECT_CONTAINS(errorOf<InvalidArgument>([] { loadDataset("mnist", "/tmp", true); }),
                  "unknown dataset 'mnist'; the datasets are: fashion-mnist, cifar10");
  EXPECT_CONTAINS(errorOf<InvalidArgument>([] { loadFashionMnist(kFashionDir, true, -1); }), "must be >= 0");
}

}  // namespace
}  // namespace chorus::train
