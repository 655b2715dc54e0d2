// Sharding is pure tensor slicing: no communication. A spec with `blocks` cuts the (padded)
// dimension into blocks first and each block into k pieces, so a fused [q; k; v] weight gives
// rank r [q_r; k_r; v_r], the heads it owns of each.
//
// The parameter seed hashes the name (FNV-1a) and mixes in the seed with splitmix64's
// finalizer, so nearby seeds and similar names give unrelated streams.
#include "chorus/parallel/tensor/sharding.h"

#include <ATen/CPUGeneratorImpl.h>

#include "chorus/common/error.h"

namespace chorus::parallel {

namespace {

int64_t specDim(const torch::Tensor& t, const ShardSpec& s, const char* op) {
  if (s.dim < 0 || s.dim >= t.dim())
    throw InvalidArgument(chorus::str(op, ": the spec splits dimension ", s.dim, " but the tensor has shape ", t.sizes()));
  if (s.blocks < 1) throw InvalidArgument(chorus::str(op, ": blocks must be >= 1, got ", s.blocks));
  if (s.padded() && s.blocks != 1)
    throw InvalidArgument(chorus::str(op, ": a padded dimension cannot also be fused in blocks (blocks = ", s.blocks, ")"));
  return s.dim;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

int64_t paddedSizeFor(int64_t fullSize, int k, int blocks) {
  const int64_t m = static_cast<int64_t>(k) * blocks;
  if (m < 1) throw InvalidArgument(chorus::str("paddedSizeFor: k (", k, ") and blocks (", blocks, ") must be >= 1"));
  return (fullSize + m - 1) / m * m;
}

torch::Tensor shardOf(const torch::Tensor& full, const ShardSpec& s, int rank, int k) {
  if (k < 1 || rank < 0 || rank >= k) throw InvalidArgument(chorus::str("shardOf: rank ", rank, " is not in [0, ", k, ")"));
  if (s.dim == -1) return full.detach().clone(at::MemoryFormat::Contiguous);
  const int64_t d = specDim(full, s, "shardOf");
  torch::Tensor t = full.detach();
  if (s.fullSize > 0 && t.size(d) != s.fullSize)
    throw InvalidArgument(chorus::str("shardOf: dimension ", d, " of shape ", t.sizes(), " should be the full size ", s.fullSize));
  if (s.padded()) {
    std::vector<int64_t> shape = t.sizes().vec();
    shape[d] = s.paddedSize - t.size(d);
    t = torch::cat({t, torch::zeros(shape, t.options())}, d);
  }
  const int64_t size = t.size(d);
  if (size % (static_cast<int64_t>(k) * s.blocks) != 0)
    throw InvalidArgument(chorus::str("shardOf: dimension ", d, " of size ", size, " cannot be split into ", s.blocks, " block(s) of ", k,
                              " equal pieces; choose a size divisible by ", k * s.blocks));
  const int64_t block = size / s.blocks, piece = block / k;
  std::vector<torch::Tensor> parts;
  for (int b = 0; b < s.blocks; ++b) parts.push_back(t.narrow(d, b * block + rank * piece, piece));
  return torch::cat(parts, d).contiguous();
}

torch::Tensor unshard(const std::vector<torch::Tensor>& shards, const ShardSpec& s) {
  if (shards.empty()) throw InvalidArgument("unshard: no shards given");
  if (s.dim == -1) return shards[0];
  const int64_t d = specDim(shards[0], s, "unshard");
  std::vector<torch::Tensor> blocks;
  for (int b = 0; b < s.blocks; ++b) {
    std::vector<torch::Tensor> pieces;
    for (const auto& shard : shards) {
      if (shard.size(d) % s.blocks != 0)
        throw InvalidArgument(chorus::str("unshard: a shard of shape ", shard.sizes(), " does not hold ", s.blocks, " blocks along dim ", d));
      const int64_t piece = shard.size(d) / s.blocks;
      pieces.push_back(shard.detach().narrow(d, b * piece, piece));
    }
    blocks.push_back(torch::cat(pieces, d));
  }
  torch::Tensor full = torch::cat(blocks, d);
  if (s.fullSize > 0 && full.size(d) > s.fullSize) full = full.narrow(d, 0, s.fullSize);
  return full.contiguous();
}

std::map<std::string, ShardSpec> shardSpecs(torch::nn::Module& m) {
  std::map<std::string, ShardSpec> found;
  auto collect = [&found](const std::string& prefix, torch::nn::Module& mod) {
    if (auto* sharded = dynamic_cast<ShardedModule*>(&mod)) {
      for (const auto& [local, spec] : sharded->localShardSpecs())
        found.emplace(prefix.empty() ? local : prefix + "." + local, spec);  // the first (nearest the root) wins
    }
  };
  collect("", m);
  for (const auto& item : m.named_modules("", /*include_self=*/false)) collect(item.key(), *item.value());
  std::map<std::string, ShardSpec> specs;
  for (const auto& p : m.named_parameters(/*recurse=*/true)) {
    auto it = found.find(p.key());
    specs[p.key()] = it == found.end() ? ShardSpec{} : it->second;
  }
  return specs;
}

void allReduceSequenceParallelGradients(torch::nn::Module& m, const TpGroup& g) {
  if (tpSize(g) == 1) return;
  const auto specs = shardSpecs(m);
  // One all-reduce for all of them, in named_parameters() order (the same on every rank).
  std::vector<torch::Tensor> grads;
  for (const auto& p : m.named_parameters(/*recurse=*/true)) {
    if (!specs.at(p.key()).sequenceParallel || !p.value().grad().defined()) continue;
    grads.push_back(p.value().grad());
  }
  if (grads.empty()) return;
  std::vector<torch::Tensor> flat;
  for (const auto& grad : grads) flat.push_back(grad.reshape(-1));
  torch::Tensor sum = allReduceSum(torch::cat(flat), g);
  int64_t offset = 0;
  torch::NoGradGuard noGrad;
  for (auto& grad : grads) {
    grad.copy_(sum.narrow(0, offset, grad.numel()).view_as(grad));
    offset += grad.numel();
  }
}

uint64_t parameterSeed(uint64_t seed, const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : name) h = (h ^ c) * 0x100000001b3ull;
  return splitmix64(splitmix64(seed) ^ h);
}

torch::Tensor initNormal(at::IntArrayRef fullShape, double std, uint64_t seed, const std::string& name) {
  if (std < 0) throw InvalidArgument(chorus::str("initNormal: std must be >= 0 for '", name, "', got ", std));
  if (std == 0) return torch::zeros(fullShape, torch::kFloat32);
  at::Generator gen = at::detail::createCPUGenerator(parameterSeed(seed, name));
  return torch::empty(fullShape, torch::kFloat32).normal_(0.0, std, gen);
}

}  // namespace chorus::parallel
