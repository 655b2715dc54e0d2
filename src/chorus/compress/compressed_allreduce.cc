#include "chorus/compress/compressed_allreduce.h"

#include <algorithm>
#include <numeric>

#include "chorus/common/error.h"

namespace chorus::compress {

bool denseIsCheaper(int64_t numel, uint64_t totalMessageBytes, int world) {
  if (world <= 1) return false;
  const double dense = 2.0 * (world - 1) / world * static_cast<double>(numel) * 4.0;
  // A ring allgather has each rank send (W-1)/W of all the messages.
  const double sparse = static_cast<double>(totalMessageBytes) * (world - 1) / world;
  return sparse > dense;
}

CompressedResult compressedAllreduce(comm::ProcessGroup& group, Codec& codec, std::span<float> flat, CodecState& state) {
  const auto numel = static_cast<int64_t>(flat.size());
  auto zero = [&] { std::fill(flat.begin(), flat.end(), 0.0f); };
  CompressedResult r;
  r.denseBytes = static_cast<uint64_t>(numel) * 4;
  Message mine = codec.encode(flat, state);
  r.messageBytes = mine.size();
  const int world = group.size();
  if (world == 1) {
    zero();
    codec.decodeAdd(mine, flat);
    return r;
  }
  // Sizes (and, for sparse codecs, pair counts) from every rank.
  std::vector<int64_t> meta(2 * static_cast<size_t>(world));
  int64_t own[2] = {static_cast<int64_t>(mine.size()), codec.sparseCount(mine)};
  comm::AllgatherOptions mo;
  mo.input = own;
  mo.output = meta.data();
  mo.count = 2;
  mo.dtype = DType::kInt64;
  group.allgather(mo);
  bool sparse = true;
  uint64_t bytes = 0;
  for (int k = 0; k < world; ++k) {
    if (meta[2 * k + 1] < 0) sparse = false;
    bytes += static_cast<uint64_t>(meta[2 * k]);
  }
  if (sparse && denseIsCheaper(numel, bytes, world)) {
    // Every rank saw the same counts, so every rank takes this branch.
    zero();
    codec.decodeAdd(mine, flat);
    comm::AllreduceOptions ao;
    ao.data = flat.data();
    ao.count = flat.size();
    ao.dtype = DType::kFloat32;
    ao.op = ReduceOp::kAvg;
    group.allreduce(ao);
    r.wentDense = true;
    return r;
  }
  std::vector<size_t> counts(world);
  for (int k = 0; k < world; ++k) counts[k] = static_cast<size_t>(meta[2 * k]);
  const size_t total = std::accumulate(counts.begin(), counts.end(), size_t{0});
  std::vector<uint8_t> all(total);
  comm::AllgatherOptions go;
  go.input = mine.data();
  go.output = all.data();
  go.count = mine.size();
  go.counts = counts;
  go.dtype = DType::kUInt8;
  group.allgather(go);
  zero();
  size_t off = 0;
  for (int k = 0; k < world; ++k) {
    Message m(all.begin() + static_cast<std::ptrdiff_t>(off), all.begin() + static_cast<std::ptrdiff_t>(off + counts[k]));
    codec.decodeAdd(m, flat);
    off += counts[k];
  }
  const auto w = static_cast<float>(world);
  for (float& x : flat) x /= w;  // float32 division, as a tensor's div_ did
  return r;
}

}  // namespace chorus::compress
