// Datasets held in memory as tensors, read through zlib so that gzip and plain files load
// alike (gzread passes a plain file through unchanged).
//
// Fashion-MNIST comes as IDX files, read and checked into bytes by idx.cc (the format is in
// idx.h). CIFAR-10's binary batches are records of 1 label byte and 3072 image bytes (1024
// red, 1024 green, 1024 blue, each 32x32 row-major), 10000 records per file.
//
// Pixels go through a 256-entry table (byte -> normalized float), one pass from the bytes
// into the float tensor.
#include "chorus/train/datasets.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/train/idx.h"

namespace chorus::train {
namespace {

constexpr int64_t kClasses = kIdxClasses;
// Mean and standard deviation of Fashion-MNIST's train split, pixels scaled to [0, 1].
constexpr float kFashionMean = 0.2860f;
constexpr float kFashionStd = 0.3530f;
// CIFAR-10 per channel (R, G, B), over the train split.
constexpr float kCifarMean[3] = {0.4914f, 0.4822f, 0.4465f};
constexpr float kCifarStd[3] = {0.2470f, 0.2435f, 0.2616f};
constexpr int64_t kCifarSide = 32;
constexpr int64_t kCifarImageBytes = 3 * kCifarSide * kCifarSide;

const char* kFashionHint =
    "install the Debian package dataset-fashion-mnist (apt install dataset-fashion-mnist) or set data.path "
    "to the folder holding train-images-idx3-ubyte.gz";
const char* kCifarHint =
    "download the CIFAR-10 binary version (cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html), "
    "unpack it and set data.path to the folder holding data_batch_1.bin";

bool isFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// "<dir>/<name>.gz" if it exists, else "<dir>/<name>"; InvalidArgument naming both if neither.
std::string locate(const std::string& dir, const std::string& name, const char* what, const char* hint) {
  std::string plain = dir + "/" + name;
  if (isFile(plain + ".gz")) return plain + ".gz";
  if (isFile(plain)) return plain;
  throw InvalidArgument(str(what, " file not found: neither ", plain, ".gz nor ", plain, " exists; ", hint));
}

// byte -> (byte / 255 - mean) / std
struct PixelTable {
  float v[256];
  PixelTable(float mean, float std) {
    for (int i = 0; i < 256; ++i) v[i] = (static_cast<float>(i) / 255.0f - mean) / std;
  }
};

void checkLimit(int64_t limit) {
  if (limit < 0) throw InvalidArgument(str("dataset limit must be >= 0 (0: everything), got ", limit));
}

}  // namespace

Dataset loadFashionMnist(const std::string& dir, bool train, int64_t limit) {
  checkLimit(limit);
  const std::string prefix = train ? "train" : "t10k";
  GzFile images(locate(dir, prefix + "-images-idx3-ubyte", "Fashion-MNIST", kFashionHint), kFashionHint);
  GzFile labels(locate(dir, prefix + "-labels-idx1-ubyte", "Fashion-MNIST", kFashionHint), kFashionHint);
  const IdxSplit split = readIdxSplit(images, labels, limit);

  Dataset d;
  d.name = str("fashion-mnist/", train ? "train" : "test");
  d.classes = kClasses;
  d.images = torch::empty({split.count, 1, kMnistSide, kMnistSide}, torch::kFloat32);
  const PixelTable table(kFashionMean, kFashionStd);
  float* img = d.images.data_ptr<float>();
  for (size_t i = 0; i < split.pixels.size(); ++i) img[i] = table.v[split.pixels[i]];
  d.labels = torch::empty({split.count}, torch::kInt64);
  int64_t* l = d.labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < split.count; ++i) l[i] = split.labels[static_cast<size_t>(i)];
  return d;
}

Dataset loadCifar10(const std::string& dir, bool train, int64_t limit) {
  checkLimit(limit);
  // The archive unpacks into cifar-10-batches-bin/; accept that folder or its parent.
  std::string root = dir;
  const char* first = train ? "data_batch_1.bin" : "test_batch.bin";
  if (!isFile(root + "/" + first) && !isFile(root + "/" + first + ".gz") &&
      isFile(root + "/cifar-10-batches-bin/" + first))
    root += "/cifar-10-batches-bin";
  std::vector<std::string> names;
  if (train)
    for (int i = 1; i <= 5; ++i) names.push_back(str("data_batch_", i, ".bin"));
  else
    names.push_back("test_batch.bin");

  // Records are gathered as bytes, then converted once into the float tensor.
  constexpr size_t kRecord = 1 + kCifarImageBytes;
  std::vector<unsigned char> records;
  int64_t n = 0;
  for (const std::string& name : names) {
    if (limit > 0 && n >= limit) break;
    GzFile f(locate(root, name, "CIFAR-10", kCifarHint), kCifarHint);
    int64_t inFile = 0;
    while (limit == 0 || n < limit) {
      records.resize((n + 1) * kRecord);
      size_t got = f.read(records.data() + n * kRecord, kRecord);
      if (got == 0) break;
      if (got != kRecord)
        throw Error(str(f.path(), " is truncated: its record ", inFile, " is cut short (a record is ", kRecord,
                        " bytes: 1 label + 3072 pixels); ", kCifarHint));
      unsigned char label = records[n * kRecord];
      if (label >= kClasses)
        throw Error(str(f.path(), ": label ", int(label), " of record ", inFile, " is not a class 0..", kClasses - 1,
                        "; the file is corrupt or not CIFAR-10; ", kCifarHint));
      ++n, ++inFile;
    }
    if (inFile == 0 && (limit == 0 || n < limit))
      throw Error(str(f.path(), " holds no records; ", kCifarHint));
  }

  Dataset d;
  d.name = str("cifar10/", train ? "train" : "test");
  d.classes = kClasses;
  d.images = torch::empty({n, 3, kCifarSide, kCifarSide}, torch::kFloat32);
  d.labels = torch::empty({n}, torch::kInt64);
  const PixelTable tables[3] = {{kCifarMean[0], kCifarStd[0]}, {kCifarMean[1], kCifarStd[1]},
                                {kCifarMean[2], kCifarStd[2]}};
  float* img = d.images.data_ptr<float>();
  int64_t* lab = d.labels.data_ptr<int64_t>();
  constexpr int64_t kPlane = kCifarSide * kCifarSide;
  for (int64_t i = 0; i < n; ++i) {
    const unsigned char* r = records.data() + i * kRecord;
    lab[i] = r[0];
    for (int64_t j = 0; j < kCifarImageBytes; ++j) img[i * kCifarImageBytes + j] = tables[j / kPlane].v[r[1 + j]];
  }
  return d;
}

void checkDatasetFiles(const std::string& name, const std::string& dir, bool withTest) {
  if (name == "fashion-mnist") {
    for (const char* split : {"train", "t10k"}) {
      if (!withTest && std::string(split) == "t10k") continue;
      locate(dir, str(split, "-images-idx3-ubyte"), "Fashion-MNIST", kFashionHint);
      locate(dir, str(split, "-labels-idx1-ubyte"), "Fashion-MNIST", kFashionHint);
    }
  } else if (name == "cifar10") {
    std::string d = isFile(dir + "/data_batch_1.bin") || !isFile(dir + "/cifar-10-batches-bin/data_batch_1.bin")
                        ? dir
                        : dir + "/cifar-10-batches-bin";
    for (int i = 1; i <= 5; ++i) {
      if (!isFile(str(d, "/data_batch_", i, ".bin"))) {
        throw InvalidArgument(str("CIFAR-10 file not found: ", d, "/data_batch_", i, ".bin; ", kCifarHint));
      }
    }
    if (withTest && !isFile(d + "/test_batch.bin")) {
      throw InvalidArgument(str("CIFAR-10 file not found: ", d, "/test_batch.bin; ", kCifarHint));
    }
  } else {
    throw InvalidArgument(str("unknown dataset '", name, "'; the datasets are: fashion-mnist, cifar10"));
  }
}

namespace {

struct LoadedDatasets {
  std::mutex mu;
  bool keep = false;
  std::map<std::tuple<std::string, std::string, bool, int64_t>, Dataset> loaded;
};

LoadedDatasets& loadedDatasets() {
  static LoadedDatasets d;
  return d;
}

Dataset load(const std::string& name, const std::string& dir, bool train, int64_t limit) {
  if (name == "fashion-mnist") return loadFashionMnist(dir, train, limit);
  if (name == "cifar10") return loadCifar10(dir, train, limit);
  throw InvalidArgument(str("unknown dataset '", name, "'; the datasets are: fashion-mnist, cifar10"));
}

}  // namespace

Dataset loadDataset(const std::string& name, const std::string& dir, bool train, int64_t limit) {
  LoadedDatasets& d = loadedDatasets();
  std::lock_guard<std::mutex> lock(d.mu);
  if (!d.keep) return load(name, dir, train, limit);
  const auto key = std::make_tuple(name, dir, train, limit);
  auto it = d.loaded.find(key);
  if (it == d.loaded.end()) it = d.loaded.emplace(key, load(name, dir, train, limit)).first;
  return it->second;
}

void keepDatasetsLoaded(bool keep) {
  LoadedDatasets& d = loadedDatasets();
  std::lock_guard<std::mutex> lock(d.mu);
  d.keep = keep;
  if (!keep) d.loaded.clear();
}

}  // namespace chorus::train
