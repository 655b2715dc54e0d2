// A text corpus for byte-level language models: the plain-text files of a folder (Debian's
// `fortunes` package by default) read as one stream of bytes, split into training and
// validation by file, and cut into windows of `context` bytes.
//
// Names: B windows in a batch, T context (bytes per window), N bytes in a split.
//
// The split, by file: the folder's regular files (not symbolic links, not subfolders, not
// names starting with '.' or ending in ".dat", the strfile indexes of fortune files) sorted
// by name (byte order); the file at sorted index i belongs to validation when i % 10 == 1,
// to training otherwise. Each split is its files' bytes concatenated in sorted order. Every
// file lands in exactly one split, a folder of two files or more gives both splits at least
// one file, and the rule depends only on the names. For the fortunes package (43 files, 2.6
// MB) validation is ascii-art, fortunes, magic, politics and work: 10.2% of the bytes.
// bench/model-parallel/gpt_torch.py reimplements this rule; change both together.
//
// Windows: a window starting at byte s gives ids = bytes[s, s+T) and targets = bytes[s+1,
// s+T+1) (the next byte at every position), both int64. Training windows start anywhere in
// [0, N-T-1], uniformly. Validation windows are fixed: `count` starts spread evenly from the
// first byte to the last full window.
//
// Exact resume and data parallelism: step s's global batch is drawn from a generator seeded
// by windowSeed(seed, s) alone, and data-parallel rank r of D takes rows [r*B/D, (r+1)*B/D)
// of it. So a step's windows depend only on (seed, step, rank, D), never on what ran before:
// a run resumed at step s (even at another dp size or tp) sees the windows it would have
// seen, the dp ranks together see exactly the global batch of a single process, and tensor-
// parallel ranks of one dp group see the same windows. No global torch generator is used.
//
// Errors: InvalidArgument naming the folder or file and what to do (a missing corpus names
// the Debian package to install and data.path).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Generator.h>
#include <torch/torch.h>

namespace chorus::train {

// The folder the Debian package `fortunes` installs its text to.
inline constexpr const char* kFortunesDir = "/usr/share/games/fortunes";

struct TextCorpus {
  std::string name;                // "<dir> (train)" or "<dir> (validation)", for messages
  std::vector<std::string> files;  // this split's file names (no folder), sorted
  torch::Tensor bytes;             // [N] uint8: the files concatenated in that order
  int64_t size() const { return bytes.defined() ? bytes.size(0) : 0; }
};

// ids [B, T] and targets [B, T], int64 in [0, 256); targets[b, t] is the byte after ids[b, t].
struct TextBatch {
  torch::Tensor ids;
  torch::Tensor targets;
};

// The file names of one split of `dir` (the rule above), sorted, without reading them.
// InvalidArgument if the folder cannot be listed or holds fewer than 2 such files.
std::vector<std::string> textCorpusFiles(const std::string& dir, bool train);

// Reads one split into memory. Same errors as textCorpusFiles, plus an unreadable file, and
// an empty split (all its files empty).
TextCorpus loadTextCorpus(const std::string& dir, bool train);

// The windows starting at `starts` ([B] int64, each in [0, size - T - 1]).
TextBatch windowsAt(const TextCorpus& corpus, const torch::Tensor& starts, int64_t context);

// `batch` windows with starts drawn uniformly from [0, size - T - 1] by `gen` (a CPU
// generator; it advances). InvalidArgument if the corpus holds fewer than T + 1 bytes.
TextBatch randomWindows(const TextCorpus& corpus, int64_t batch, int64_t context, at::Generator& gen);

// The seed of step `step`'s window generator: splitmix64(splitmix64(seed) ^ step).
uint64_t windowSeed(uint64_t seed, int64_t step);

// Data-parallel rank `rank` of `ranks`' share of step `step`'s global batch of `globalBatch`
// windows (rows [rank*B/ranks, (rank+1)*B/ranks) of randomWindows with a generator seeded by
// windowSeed(seed, step)). globalBatch must be a multiple of ranks.
TextBatch trainWindows(const TextCorpus& corpus, int64_t globalBatch, int64_t context, uint64_t seed, int64_t step,
                       int rank = 0, int ranks = 1);

// `count` fixed windows, start_i = i * (N - T - 1) / (count - 1) (integer division; one
// window starts at 0). count must not exceed the N - T distinct starts.
TextBatch evalWindows(const TextCorpus& corpus, int64_t count, int64_t context);

// A mean cross-entropy in nats per byte as bits per byte: loss / ln 2 (8 is a uniform guess
// over 256 byte values).
double bitsPerByte(double meanLossNats);

}  // namespace chorus::train
