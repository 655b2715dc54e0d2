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
//   randomk       O(k log k) (Floyd's sampling and a sort) + an n-bit mark table,
//   threshold     one O(n) compare pass;
// and O(k) to gather, zero and pack. The message is 20 + 8k bytes.
#include "chorus/compress/sparse.h"

#include <algorithm>
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

struct SparseHeader {
  SparseKind kind;
  int64_t numel;
  int64_t k;
};

torch::Tensor emptyIndices() { return torch::empty({0}, torch::kLong); }

SparseHeader parseHeader(const Message& msg) {
  if (msg.size() < kSparseHeaderBytes || msg[0] != kSparseMagic)
    throw InvalidArgument(str("sparse codec: message of ", msg.size(),
                              " bytes is not a sparse message (bad size or magic); check that "
                              "every rank uses the same codec"));
  SparseHeader h{};
  uint8_t kind = msg[1];
  if (kind < static_cast<uint8_t>(SparseKind::kTopK) || kind > static_cast<uint8_t>(SparseKind::kDgc))
    throw InvalidArgument(str("sparse codec: unknown sparse kind ", int(kind), " in message header"));
  h.kind = static_cast<SparseKind>(kind);
  std::memcpy(&h.numel, msg.data() + 4, sizeof(int64_t));
  std::memcpy(&h.k, msg.data() + 12, sizeof(int64_t));
  if (h.numel < 0 || h.k < 0 || h.k > h.numel ||
      static_cast<uint64_t>(h.k) > (msg.size() - kSparseHeaderBytes) / 8 ||
      msg.size() != kSparseHeaderBytes + 8 * static_cast<uint64_t>(h.k))
    throw InvalidArgument(str("sparse codec: corrupt message header (numel ", h.numel, ", k ", h.k,
                              ", ", msg.size(), " bytes; expected ", kSparseHeaderBytes, " + 8k bytes)"));
  return h;
}

}  // namespace

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
  int64_t k = indices.numel();
  CHORUS_CHECK(values.numel() == k, "indices and values differ in length: ", k, " vs ", values.numel());
  Message msg(kSparseHeaderBytes + 8 * static_cast<size_t>(k), 0);
  msg[0] = kSparseMagic;
  msg[1] = static_cast<uint8_t>(kind);
  std::memcpy(msg.data() + 4, &numel, sizeof(int64_t));
  std::memcpy(msg.data() + 12, &k, sizeof(int64_t));
  if (k == 0) return msg;
  torch::Tensor idx32 = indices.to(torch::kInt).contiguous();
  torch::Tensor val32 = values.to(torch::kFloat).contiguous();
  std::memcpy(msg.data() + kSparseHeaderBytes, idx32.data_ptr<int32_t>(), 4 * static_cast<size_t>(k));
  std::memcpy(msg.data() + kSparseHeaderBytes + 4 * k, val32.data_ptr<float>(), 4 * static_cast<size_t>(k));
  return msg;
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
  SparseHeader h = parseHeader(msg);
  if (!out.defined() || out.scalar_type() != torch::kFloat32 || !out.device().is_cpu() ||
      !out.is_contiguous() || out.numel() != h.numel)
    throw InvalidArgument(str("codec ", name(), ": decodeAdd needs a contiguous float32 CPU tensor of ",
                              h.numel, " entries (the message's numel); got ",
                              out.defined() ? out.toString() : std::string("an undefined tensor"),
                              " with ", out.defined() ? out.numel() : 0, " entries"));
  float* dst = out.data_ptr<float>();
  const uint8_t* idxBytes = msg.data() + kSparseHeaderBytes;
  const uint8_t* valBytes = idxBytes + 4 * h.k;
  for (int64_t i = 0; i < h.k; ++i) {
    int32_t idx;
    float val;
    std::memcpy(&idx, idxBytes + 4 * i, sizeof idx);
    std::memcpy(&val, valBytes + 4 * i, sizeof val);
    if (idx < 0 || idx >= h.numel)
      throw InvalidArgument(str("codec ", name(), ": corrupt message, index ", idx, " outside [0, ",
                                h.numel, ")"));
    dst[idx] += val;
  }
}

int64_t SparseCodec::sparseCount(const Message& msg) const { return parseHeader(msg).k; }

TopKCodec::TopKCodec(SparseOptions opts) : opts_(opts) {}

torch::Tensor TopKCodec::select(const torch::Tensor& acc, CodecState&) {
  return selectTopK(acc.abs(), targetCount(opts_, acc.numel()));
}

TopKSampledCodec::TopKSampledCodec(SparseOptions opts) : opts_(opts) {}

torch::Tensor TopKSampledCodec::select(const torch::Tensor& acc, CodecState& state) {
  return selectTopKSampled(acc.abs(), targetCount(opts_, acc.numel()), opts_, state);
}

RandomKCodec::RandomKCodec(SparseOptions opts) : opts_(opts) {}

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

std::unique_ptr<Codec> makeSparse(const std::string& method, double ratioOrTau) {
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
  if (method == "topk") return std::make_unique<TopKCodec>(opts);
  if (method == "topk_sampled") return std::make_unique<TopKSampledCodec>(opts);
  return std::make_unique<RandomKCodec>(opts);
}

}  // namespace chorus::compress
