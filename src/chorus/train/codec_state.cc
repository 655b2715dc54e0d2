// Per-rank codec state in checkpoints, and its merge across world sizes (see codec_state.h).
#include "chorus/train/codec_state.h"

#include <algorithm>

#include <torch/torch.h>

#include "chorus/common/error.h"
#include "chorus/parallel/compress_adapter.h"
#include "chorus/parallel/data/compression_hooks.h"
#include "chorus/train/checkpoint.h"

namespace chorus::train {

std::string encodeCodecStates(const CodecStates& states) {
  std::vector<std::pair<std::string, torch::Tensor>> entries;
  for (const auto& [bucket, cs] : states) {
    for (const auto& [name, b] : cs.buffers) entries.emplace_back(str("b", bucket, "_t_", name), parallel::bufferTensor(cs, name));
    for (const auto& [name, v] : cs.scalars) entries.emplace_back(str("b", bucket, "_s_", name), torch::tensor({v}, torch::kDouble));
    entries.emplace_back(str("b", bucket, "_rng"), torch::tensor({static_cast<int64_t>(cs.rngState)}, torch::kLong));
  }
  return encodeTensors(entries);
}

CodecStates decodeCodecStates(const std::string& blob, const std::string& source) {
  CodecStates states;
  for (auto& [key, t] : decodeTensors(blob.data(), blob.size(), source)) {
    const size_t u = key.find('_');
    const std::string digits = key.substr(1, u == std::string::npos ? std::string::npos : u - 1);
    const std::string rest = u == std::string::npos ? std::string() : key.substr(u + 1);
    const bool scalar = rest == "rng" || rest.starts_with("s_");
    if (key[0] != 'b' || digits.empty() || digits.size() > 9 ||
        !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
        !(scalar || rest.starts_with("t_")) ||
        (scalar && (t.numel() != 1 || t.scalar_type() != (rest == "rng" ? torch::kLong : torch::kDouble))))
      throw Error(str(source, ": compression state entry '", key, "' is not one chorus writes; the file is corrupt"));
    compress::CodecState& cs = states[std::stoul(digits)];
    if (rest == "rng") {
      cs.rngState = static_cast<uint64_t>(t.item<int64_t>());
    } else if (rest.starts_with("t_")) {
      parallel::setBuffer(cs, rest.substr(2), t);  // older checkpoints hold PowerSGD's as matrices
    } else {
      cs.scalars[rest.substr(2)] = t.item<double>();
    }
  }
  return states;
}

CodecStates carryCodecStates(const std::vector<CodecStates>& saved, int rank, int world, uint64_t seed,
                             const std::string& source) {
  if (saved.empty()) throw InvalidArgument("carryCodecStates: no saved states (a world of 0 ranks)");
  if (world < 1 || rank < 0 || rank >= world)
    throw InvalidArgument(str("carryCodecStates: rank ", rank, " is not in a world of ", world));
  const int old = static_cast<int>(saved.size());
  if (old == world && !saved[static_cast<size_t>(rank)].empty()) return saved[static_cast<size_t>(rank)];

  // Old rank 0 is the reference for what is equal on every rank (Q, scalars); a bucket it lacks
  // (its state lost at an in-process recovery; never in a checkpoint chorus writes: every rank
  // runs every bucket) falls back to the lowest old rank that has it.
  std::map<size_t, const compress::CodecState*> reference;
  for (const CodecStates& states : saved)
    for (const auto& [bucket, cs] : states) reference.try_emplace(bucket, &cs);

  const double scale = static_cast<double>(world) / static_cast<double>(old);
  CodecStates out;
  for (const auto& [bucket, ref] : reference) {
    compress::CodecState& cs = out[bucket];
    cs.scalars = ref->scalars;
    const CodecStates* own = rank < old ? &saved[static_cast<size_t>(rank)] : nullptr;
    auto mine = own ? own->find(bucket) : CodecStates::const_iterator{};
    cs.rngState = own && mine != own->end() ? mine->second.rngState : parallel::codecRngSeed(seed, bucket, rank);

    // Every buffer name any old rank holds for this bucket, with its size (the same on all).
    std::map<std::string, size_t> sizes;
    for (int r = 0; r < old; ++r) {
      auto it = saved[static_cast<size_t>(r)].find(bucket);
      if (it == saved[static_cast<size_t>(r)].end()) continue;
      for (const auto& [name, b] : it->second.buffers) {
        auto [s, inserted] = sizes.try_emplace(name, b.size());
        if (!inserted && s->second != b.size())
          throw Error(str(source, ": compression state buffer '", name, "' of bucket ", bucket, " has ", b.size(),
                          " values on rank ", r, " but ", s->second, " on a lower rank; the file is corrupt"));
      }
    }
    for (const auto& [name, size] : sizes) {
      if (name.starts_with("q.")) {
        for (const CodecStates& states : saved) {  // the lowest old rank that has it
          auto it = states.find(bucket);
          if (it == states.end()) continue;
          auto b = it->second.buffers.find(name);
          if (b == it->second.buffers.end()) continue;
          cs.buffers[name] = b->second;
          break;
        }
        continue;
      }
      std::vector<double> sum(size, 0.0);
      for (int r = rank; r < old; r += world) {
        auto it = saved[static_cast<size_t>(r)].find(bucket);
        if (it == saved[static_cast<size_t>(r)].end()) continue;
        auto b = it->second.buffers.find(name);
        if (b == it->second.buffers.end()) continue;
        for (size_t i = 0; i < size; ++i) sum[i] += static_cast<double>(b->second[i]);
      }
      std::vector<float>& dst = cs.buffers[name];
      dst.resize(size);
      for (size_t i = 0; i < size; ++i) dst[i] = static_cast<float>(sum[i] * scale);
    }
  }
  return out;
}

}  // namespace chorus::train
