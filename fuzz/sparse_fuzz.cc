// libFuzzer target for the sparse codecs' wire format (src/chorus/compress/sparse_format.cc),
// which every rank decodes from the others' bytes: top-k, sampled top-k, random-k, threshold
// and DGC messages, with their Elias-Fano index code.
//
// 1. The input as a message: it either decodes or throws InvalidArgument (no other exception,
//    no out-of-bounds read under ASan, no undefined behaviour under UBSan); what decodes has
//    k ascending indices in [0, numel) and re-encodes to exactly the input's bytes, so a set of
//    pairs has one encoding.
// 2. The input as pairs to send: numel and a set of ascending indices built from the bytes
//    (gaps of any size, runs, both ends) encode, and the message decodes back to the same
//    indices and values, at the size sparseMessageBytes promises.
//
// fuzz-sources: src/chorus/compress/sparse_format.cc src/chorus/common/error.cc
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/compress/sparse_format.h"
#include "seeds.h"

using namespace chorus::compress;

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "sparse_fuzz: %s\n", what);
  std::abort();
}

void fuzzMessage(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> msg(data, size);
  SparseHeader h;
  try {
    h = parseSparseHeader(msg);
  } catch (const chorus::InvalidArgument&) {
    return;
  }
  if (h.k < 0 || h.k > h.numel || 4 * static_cast<size_t>(h.k) > size) fail("a header's k does not fit its message");
  std::vector<int64_t> idx(static_cast<size_t>(h.k));
  std::vector<float> vals(static_cast<size_t>(h.k));
  try {
    decodeSparsePairs(msg, h, idx.data(), vals.data());
  } catch (const chorus::InvalidArgument&) {
    return;
  }
  for (size_t i = 0; i < idx.size(); ++i) {
    if (idx[i] < 0 || idx[i] >= h.numel) fail("a decoded index is out of range");
    if (i > 0 && idx[i] <= idx[i - 1]) fail("decoded indices do not ascend");
  }
  const std::vector<uint8_t> again = encodeSparsePairs(h.kind, h.numel, idx.data(), vals.data(), h.k);
  if (again.size() != size || std::memcmp(again.data(), data, size) != 0)
    fail("a decoded message re-encodes to other bytes");
}

// Reads the input front to back; past its end every byte is 0.
struct Input {
  const uint8_t* p;
  size_t n;
  size_t at = 0;
  bool empty() const { return at >= n; }
  uint8_t byte() { return at < n ? p[at++] : 0; }
};

void fuzzPairs(const uint8_t* data, size_t size) {
  Input in{data, size};
  // numel up to 2^20 mostly; a top bit asks for one near 2^31 - 1, the format's limit.
  const uint8_t shape = in.byte();
  int64_t numel = (int64_t{in.byte()} << 12 | int64_t{in.byte()} << 4 | (in.byte() & 15)) + 1;
  if (shape & 0x80) numel = (int64_t{1} << 31) - 1 - in.byte();
  const auto kind = static_cast<SparseKind>(1 + shape % 5);
  std::vector<int64_t> idx;
  int64_t next = 0;
  while (!in.empty() && idx.size() < 4096) {
    // A gap byte: small gaps (runs), or, with the top bit, a jump scaled to numel.
    const uint8_t g = in.byte();
    next += g & 0x80 ? (numel >> (g & 31)) : g;
    if (next >= numel) break;
    idx.push_back(next++);
  }
  std::vector<float> vals(idx.size());
  for (size_t i = 0; i < vals.size(); ++i) vals[i] = static_cast<float>(i) - 0.5f;
  const auto k = static_cast<int64_t>(idx.size());
  const std::vector<uint8_t> msg = encodeSparsePairs(kind, numel, idx.data(), vals.data(), k);
  if (msg.size() != sparseMessageBytes(numel, k)) fail("a message is not sparseMessageBytes long");
  const SparseHeader h = parseSparseHeader(msg);
  if (h.numel != numel || h.k != k || h.kind != kind) fail("a header does not round-trip");
  std::vector<int64_t> gotIdx(idx.size());
  std::vector<float> gotVals(idx.size());
  decodeSparsePairs(msg, h, gotIdx.data(), gotVals.data());
  if (gotIdx != idx) fail("indices do not round-trip");
  if (!vals.empty() && std::memcmp(gotVals.data(), vals.data(), 4 * vals.size()) != 0)
    fail("values do not round-trip");
}

void writeSeeds(const char* folder) {
  struct Case {
    const char* name;
    SparseKind kind;
    int64_t numel;
    std::vector<int64_t> idx;
  };
  std::vector<int64_t> all(64), spread, cluster;
  for (int64_t i = 0; i < 64; ++i) all[static_cast<size_t>(i)] = i;
  for (int64_t i = 0; i < 1000; i += 37) spread.push_back(i);
  for (int64_t i = 1020; i < 1024; ++i) cluster.push_back(i);
  const std::vector<Case> cases = {
      {"empty", SparseKind::kThreshold, 100, {}},
      {"one_first", SparseKind::kTopK, 9, {0}},
      {"one_last", SparseKind::kRandomK, 1025, {1024}},
      {"all", SparseKind::kTopK, 64, all},
      {"ends", SparseKind::kTopKSampled, 65537, {0, 65536}},
      {"spread", SparseKind::kDgc, 1000, spread},
      {"clustered_end", SparseKind::kDgc, 1024, cluster},
      {"empty_tensor", SparseKind::kTopK, 0, {}},
  };
  for (const Case& c : cases) {
    std::vector<float> vals(c.idx.size());
    for (size_t i = 0; i < vals.size(); ++i) vals[i] = 0.25f * static_cast<float>(i + 1);
    chorus::fuzz::writeSeed(folder, c.name,
                            encodeSparsePairs(c.kind, c.numel, c.idx.data(), vals.data(),
                                              static_cast<int64_t>(c.idx.size())));
  }
}

}  // namespace

CHORUS_FUZZ_SEEDS(writeSeeds)

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    fuzzMessage(data, size);
    fuzzPairs(data, size);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sparse_fuzz: unexpected exception: %s\n", e.what());
    std::abort();
  }
  return 0;
}
