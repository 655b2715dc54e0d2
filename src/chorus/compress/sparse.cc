// Sparsifying codecs with error feedback (see sparse.h for the wire format).
//
// The exactness of error feedback rests on one detail: the values sent are read from the
// accumulator and those same entries are then set to zero, so no arithmetic touches what is
// sent and decoded(message) + residual reproduces the accumulator bit for bit. Indices are
// sorted before packing, which makes messages canonical (identical selections give identical
// bytes) and makes decodeAdd() walk `out` in order.
//
// Cost per step for n entries and k sent: one pass for acc += grad and |acc|; then
//   topk          O(n log k) (torch::topk),
//   topk_sampled  O(s log s) for the s samples + one O(n) compare pass,
//   randomk       O(k log k) (Floyd's sampling and a sort) + an n-bit mark table (and one
//                 more pass to decay the residual; none without error feedback, which keeps
//                 no residual),
//   threshold     one O(n) compare pass;
// and O(k) to gather, zero and pack. The message is sparseMessageBytes(n, k), about
// k (4 + (2 + log2(n / k)) / 8) bytes.
#include "chorus/compress/sparse.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "chorus/common/error.h"

namespace chorus::compress {

torch::Tensor checkedFlatGrad(const torch::Tensor& grad, const std::string& codec) {
  if (!grad.defined() || grad.scalar_type() != torch::kFloat32 || !grad.device().is_cpu() ||
      !grad.is_contiguous())
    throw InvalidArgument(str("codec ", codec, ": encode needs a contiguous float32 CPU gradient; got ",
                              grad.defined() ? grad.toString() : std::string("an undefined tensor"),
                              " (convert it with .to(torch::kFloat32).contiguous())"));
  if (grad.numel() > std::numeric_limits<int32_t>::max())
    throw InvalidArgument(str("codec ", codec, ": gradient of ", grad.numel(),
                              " entries exceeds the sparse format's int32 indices; split it into "
                              "smaller buckets"));
  return grad.reshape({-1});
}

namespace {

torch::Tensor emptyIndices() { return torch::empty({0}, torch::kLong); }

}  // namespace

SparsePairs unpackSparse(const Message& msg) {
  const SparseHeader h = parseSparseHeader(msg);
  SparsePairs out;
  out.kind = h.kind;
  out.numel = h.numel;
  out.indices = torch::empty({h.k}, torch::kLong);
  out.values = torch::empty({h.k}, torch::kFloat);
  decodeSparsePairs(msg, h, out.indices.data_ptr<int64_t>(), out.values.data_ptr<float>());
  return out;
}

int64_t targetCount(const SparseOptions& opts, int64_t numel) {
  if (numel <= 0) return 0;
  int64_t k = opts.k > 0 ? opts.k : std::llround(opts.ratio * static_cast<double>(numel));
  return std::clamp<int64_t>(k, 1, numel);
}

torch::Tensor selectTopK(const torch::Tensor& magnitude, int64_t k) {
  int64_t n = magnitude.numel();
  if (k <= 0) return emptyIndices();
  if (k >= n) return torch::arange(n, torch::kLong);
  torch::Tensor idx = std::get<1>(torch::topk(magnitude, k, /*dim=*/0, /*largest=*/true, /*sorted=*/false));
  return std::get<0>(idx.sort());
}

torch::Tensor selectTopKSampled(const torch::Tensor& magnitude, int64_t k, const SparseOptions& opts,
                                CodecState& state) {
  int64_t n = magnitude.numel();
  if (k <= 0) return emptyIndices();
  int64_t s = std::max<int64_t>(opts.minSample, static_cast<int64_t>(std::ceil(opts.sampleRatio * n)));
  if (s >= n) return selectTopK(magnitude, k);

  // Estimate the k-th largest magnitude as the matching quantile of a sample (with replacement).
  torch::Tensor sampleIdx = torch::empty({s}, torch::kLong);
  int64_t* p = sampleIdx.data_ptr<int64_t>();
  for (int64_t i = 0; i < s; ++i) p[i] = static_cast<int64_t>(state.nextRandom() % static_cast<uint64_t>(n));
  torch::Tensor sample = magnitude.index_select(0, sampleIdx);
  int64_t ks = std::clamp<int64_t>(std::llround(static_cast<double>(s) * k / n), 1, s);
  torch::Tensor threshold = std::get<0>(torch::kthvalue(sample, s - ks + 1));

  torch::Tensor sel = (magnitude >= threshold).nonzero().reshape({-1});  // ascending
  if (sel.numel() > 2 * k) {
    // The sample underestimated the threshold: keep the exact top k of the candidates.
    torch::Tensor sub = selectTopK(magnitude.index_select(0, sel), k);
    sel = sel.index_select(0, sub);
  } else if (sel.numel() == 0) {
    sel = magnitude.argmax().reshape({1});
  }
  return sel;
}

Message packSparse(SparseKind kind, int64_t numel, const torch::Tensor& indices, const torch::Tensor& values) {
  const int64_t k = indices.numel();
  CHORUS_CHECK(values.numel() == k, "indices and values differ in length: ", k, " vs ", values.numel());
  torch::Tensor idx64 = indices.to(torch::kLong).contiguous();
  torch::Tensor val32 = values.to(torch::kFloat).contiguous();
  return encodeSparsePairs(kind, numel, idx64.data_ptr<int64_t>(), val32.data_ptr<float>(), k);
}

torch::Tensor selectLayerwise(const torch::Tensor& magnitude, const std::vector<int64_t>& ends,
                              const std::function<torch::Tensor(const torch::Tensor&)>& pick) {
  if (ends.empty()) return pick(magnitude);
  if (ends.back() != magnitude.numel())
    throw InvalidArgument(str("sparse codec: the segments end at ", ends.back(), ", not at the gradient's ",
                              magnitude.numel(), " entries"));
  std::vector<torch::Tensor> parts;
  int64_t start = 0;
  for (int64_t end : ends) {
    if (end < start) throw InvalidArgument("sparse codec: segment ends must ascend");
    if (end > start) parts.push_back(pick(magnitude.narrow(0, start, end - start)).add_(start));
    start = end;
  }
  return parts.empty() ? emptyIndices() : torch::cat(parts);
}

Message SparseCodec::encode(const torch::Tensor& grad, CodecState& state) {
  torch::Tensor g = checkedFlatGrad(grad, name());
  torch::Tensor& acc = state.residual(g);
  acc.add_(g);
  torch::Tensor idx = select(acc, state);
  torch::Tensor vals = acc.index_select(0, idx);
  acc.index_fill_(0, idx, 0.0);
  return packSparse(kind(), g.numel(), idx, vals);
}

void SparseCodec::decodeAdd(const Message& msg, torch::Tensor& out) const {
  const SparseHeader h = parseSparseHeader(msg);
  if (!out.defined() || out.scalar_type() != torch::kFloat32 || !out.device().is_cpu() ||
      !out.is_contiguous() || out.numel() != h.numel)
    throw InvalidArgument(str("codec ", name(), ": decodeAdd needs a contiguous float32 CPU tensor of ",
                              h.numel, " entries (the message's numel); got ",
                              out.defined() ? out.toString() : std::string("an undefined tensor"),
                              " with ", out.defined() ? out.numel() : 0, " entries"));
  SparsePairs p = unpackSparse(msg);
  float* dst = out.data_ptr<float>();
  const int64_t* idx = p.indices.data_ptr<int64_t>();
  const float* val = p.values.data_ptr<float>();
  for (int64_t i = 0; i < h.k; ++i) dst[idx[i]] += val[i];
}

int64_t SparseCodec::sparseCount(const Message& msg) const { return parseSparseHeader(msg).k; }

TopKCodec::TopKCodec(SparseOptions opts) : opts_(opts) {}

torch::Tensor TopKCodec::select(const torch::Tensor& acc, CodecState& state) {
  return selectLayerwise(acc.abs(), opts_.layerwise ? state.segments : std::vector<int64_t>{},
                         [&](const torch::Tensor& m) { return selectTopK(m, targetCount(opts_, m.numel())); });
}

TopKSampledCodec::TopKSampledCodec(SparseOptions opts) : opts_(opts) {}

torch::Tensor TopKSampledCodec::select(const torch::Tensor& acc, CodecState& state) {
  return selectLayerwise(acc.abs(), opts_.layerwise ? state.segments : std::vector<int64_t>{},
                         [&](const torch::Tensor& m) {
                           return selectTopKSampled(m, targetCount(opts_, m.numel()), opts_, state);
                         });
}

RandomKCodec::RandomKCodec(SparseOptions opts, RandomKOptions rk) : opts_(opts), rk_(rk) {
  if (!(rk.residualDecay >= 0 && rk.residualDecay <= 1))
    throw InvalidArgument(str("randomk codec: residualDecay must be in [0, 1]; got ", rk.residualDecay));
}

// Why the residual decays: random-k picks an entry once per n / k steps on average whatever
// its size, so with plain error feedback (decay 1) its residual collects about that many steps
// of gradient and lands as one delayed burst. Top-k sends an entry as soon as it is large, which
// bounds both; random-k cannot. Measured on the default MLP (ratio 0.01, lr 0.05, momentum 0.9):
// the residual's norm was 13x the gradient's after 20 steps and 21x after 40; then the two grew
// together, and the run diverged at step 297 (docs/compression.md, "Random-k"). Decaying the
// residual by d a step bounds an entry's backlog to 1 / (1 - d) steps of its gradient.
Message RandomKCodec::encode(const torch::Tensor& grad, CodecState& state) {
  torch::Tensor g = checkedFlatGrad(grad, name());
  if (!rk_.errorFeedback) {
    torch::Tensor idx = select(g, state);
    torch::Tensor vals = g.index_select(0, idx);
    if (idx.numel() > 0) vals.mul_(static_cast<double>(g.numel()) / static_cast<double>(idx.numel()));
    return packSparse(kind(), g.numel(), idx, vals);
  }
  torch::Tensor& acc = state.residual(g);
  if (rk_.residualDecay != 1.0) acc.mul_(rk_.residualDecay);
  acc.add_(g);
  torch::Tensor idx = select(acc, state);
  torch::Tensor vals = acc.index_select(0, idx);
  acc.index_fill_(0, idx, 0.0);
  return packSparse(kind(), g.numel(), idx, vals);
}

torch::Tensor RandomKCodec::select(const torch::Tensor& acc, CodecState& state) {
  // Floyd's algorithm: k draws give k distinct indices, uniformly among all k-subsets.
  int64_t n = acc.numel();
  int64_t k = targetCount(opts_, n);
  std::vector<bool> chosen(static_cast<size_t>(n), false);
  std::vector<int64_t> picked;
  picked.reserve(static_cast<size_t>(k));
  for (int64_t j = n - k; j < n; ++j) {
    auto t = static_cast<int64_t>(state.nextRandom() % static_cast<uint64_t>(j + 1));
    if (chosen[static_cast<size_t>(t)]) t = j;
    chosen[static_cast<size_t>(t)] = true;
    picked.push_back(t);
  }
  std::sort(picked.begin(), picked.end());
  return torch::tensor(picked, torch::kLong);
}

ThresholdCodec::ThresholdCodec(double tau) : tau_(tau) {
  if (!(tau >= 0) || !std::isfinite(tau))
    throw InvalidArgument(str("threshold codec: tau must be finite and >= 0; got ", tau));
}

torch::Tensor ThresholdCodec::select(const torch::Tensor& acc, CodecState&) {
  return (acc.abs() >= tau_).nonzero().reshape({-1});
}

std::unique_ptr<Codec> makeSparse(const std::string& method, double ratioOrTau, bool layerwise, RandomKOptions randomk) {
  if (method == "threshold") {
    if (!(ratioOrTau >= 0) || !std::isfinite(ratioOrTau))
      throw ConfigError(str("compression: threshold tau must be finite and >= 0; got ", ratioOrTau));
    return std::make_unique<ThresholdCodec>(ratioOrTau);
  }
  if (method != "topk" && method != "topk_sampled" && method != "randomk")
    throw ConfigError(str("compression: unknown sparse method '", method,
                          "'; use one of topk, topk_sampled, randomk, threshold"));
  if (!(ratioOrTau > 0 && ratioOrTau <= 1))
    throw ConfigError(str("compression: ", method, " ratio must be in (0, 1] (the fraction of entries "
                          "sent); got ", ratioOrTau));
  SparseOptions opts;
  opts.ratio = ratioOrTau;
  opts.layerwise = layerwise;
  if (method == "topk") return std::make_unique<TopKCodec>(opts);
  if (method == "topk_sampled") return std::make_unique<TopKSampledCodec>(opts);
  if (!(randomk.residualDecay >= 0 && randomk.residualDecay <= 1))
    throw ConfigError(str("compression: randomk residual decay must be in [0, 1] (1: plain error feedback); got ",
                          randomk.residualDecay));
  return std::make_unique<RandomKCodec>(opts, randomk);
}

}  // namespace chorus::compress
