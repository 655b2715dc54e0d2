// Datasets held in memory as tensors: Fashion-MNIST from its IDX files (gzip or plain), and
// CIFAR-10 from its binary batches.
//
// A missing, truncated or corrupt file is a chorus::Error (InvalidArgument for a bad path,
// Error otherwise) whose message names the file and says what to do (e.g. "install the
// Debian package dataset-fashion-mnist, or set data.path").
#pragma once

#include <cstdint>
#include <string>

#include <torch/torch.h>

namespace chorus::train {

struct Dataset {
  std::string name;       // "fashion-mnist/train"
  torch::Tensor images;   // [N, C, H, W] float32, normalized (mean 0, std 1 over the train split)
  torch::Tensor labels;   // [N] int64 in [0, classes)
  int64_t classes = 10;
  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
};

// Fashion-MNIST: {train,t10k}-images-idx3-ubyte[.gz] and {train,t10k}-labels-idx1-ubyte[.gz]
// in `dir`. `limit` > 0 keeps the first `limit` samples.
Dataset loadFashionMnist(const std::string& dir, bool train, int64_t limit = 0);

// CIFAR-10 binary version: data_batch_{1..5}.bin / test_batch.bin in `dir`.
Dataset loadCifar10(const std::string& dir, bool train, int64_t limit = 0);

// Checks that the dataset's files exist (without reading them), so a launcher can refuse a
// bad data.path before starting workers. Same errors as the loaders' for a missing file.
void checkDatasetFiles(const std::string& name, const std::string& dir, bool withTest);

// By name: "fashion-mnist" or "cifar10" (anything else is InvalidArgument listing the names).
// With keepDatasetsLoaded(true), a load is kept in memory and the same load later returns it
// (its tensors shared, which the tasks only read): an elastic worker re-forming its job sets up
// its training again without reading and decoding the files again.
Dataset loadDataset(const std::string& name, const std::string& dir, bool train, int64_t limit = 0);
void keepDatasetsLoaded(bool keep);

}  // namespace chorus::train
