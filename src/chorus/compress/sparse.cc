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

struct SparseHeader {
  SparseKind kind;
  int64_t numel;
  int64_t k;
  int lowBits;
};

torch::Tensor emptyIndices() { return torch::empty({0}, torch::kLong); }

int lowBitsFor(int64_t numel, int64_t k) {
  if (k <= 0 || k >= numel) return 0;
  int l = 0;
  while ((k << (l + 1)) <= numel) ++l;  // largest l with k * 2^l <= numel
  return l;
}

size_t lowBytes(int64_t k, int l) { return static_cast<size_t>((k * l + 7) / 8); }
uint64_t highBits(int64_t numel, int64_t k, int l) {
  return numel == 0 ? 0 : static_cast<uint64_t>(k) + (static_cast<uint64_t>(numel - 1) >> l) + 1;
}

uint32_t load32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

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
  h.lowBits = msg[2];
  h.numel = load32(msg.data() + 4);
  h.k = load32(msg.data() + 8);
  if (h.numel > std::numeric_limits<int32_t>::max() || h.k > h.numel || h.lowBits != lowBitsFor(h.numel, h.k) ||
      msg.size() != sparseMessageBytes(h.numel, h.k))
    throw InvalidArgument(str("sparse codec: corrupt message header (numel ", h.numel, ", k ", h.k, ", low bits ",
                              h.lowBits, ", ", msg.size(), " bytes; expected ",
                              h.k <= h.numel ? sparseMessageBytes(h.numel, h.k) : 0, ")"));
  return h;
}

}  // namespace

size_t sparseMessageBytes(int64_t numel, int64_t k) {
  int l = lowBitsFor(numel, k);
  return kSparseHeaderBytes + lowBytes(k, l) + static_cast<size_t>((highBits(numel, k, l) + 7) / 8) +
         4 * static_cast<size_t>(k);
}

SparsePairs unpackSparse(const Message& msg) {
  SparseHeader h = parseHeader(msg);
  SparsePairs out;
  out.kind = h.kind;
  out.numel = h.numel;
  out.indices = torch::empty({h.k}, torch::kLong);
  out.values = torch::empty({h.k}, torch::kFloat);
  if (h.k == 0) return out;
  const int l = h.lowBits;
  const uint8_t* low = msg.data() + kSparseHeaderBytes;
  const uint8_t* high = low + lowBytes(h.k, l);
  const uint64_t nHigh = highBits(h.numel, h.k, l);
  const uint8_t* vals = high + (nHigh + 7) / 8;
  int64_t* idx = out.indices.data_ptr<int64_t>();
  int64_t i = 0, prev = -1;
  uint64_t lowPos = 0;
  const uint64_t lowMask = (uint64_t{1} << l) - 1;
  for (uint64_t byte = 0; byte < (nHigh + 7) / 8; ++byte) {
    for (unsigned bits = high[byte]; bits != 0; bits &= bits - 1) {
      const uint64_t pos = byte * 8 + static_cast<unsigned>(std::countr_zero(bits));
      if (i >= h.k || pos >= nHigh)
        throw InvalidArgument(str("sparse codec: corrupt message, more than k = ", h.k, " index marks"));
      uint64_t lowCode = 0;
      if (l > 0) {
        // Up to 32 low bits starting at bit lowPos: read 8 bytes (or what is left) and shift.
        uint64_t word = 0;
        const size_t at = lowPos / 8, avail = std::min<size_t>(8, lowBytes(h.k, l) - at);
        std::memcpy(&word, low + at, avail);
        lowCode = (word >> (lowPos % 8)) & lowMask;
        lowPos += static_cast<uint64_t>(l);
      }
      const int64_t x = static_cast<int64_t>(((pos - static_cast<uint64_t>(i)) << l) | lowCode);
      if (x <= prev || x >= h.numel)
        throw InvalidArgument(str("sparse codec: corrupt message, index ", x, " is outside [0, ", h.numel,
                                  ") or not above the previous one (", prev, ")"));
      idx[i++] = prev = x;
    }
  }
  if (i != h.k)
    throw InvalidArgument(str("sparse codec: corrupt message, ", i, " index marks for k = ", h.k));
  std::memcpy(out.values.data_ptr<float>(), vals, 4 * static_cast<size_t>(h.k));
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
  CHORUS_CHECK(numel >= 0 && numel <= std::numeric_limits<int32_t>::max(), "sparse message numel ", numel,
               " does not fit the format");
  Message msg(sparseMessageBytes(numel, k), 0);
  const int l = lowBitsFor(numel, k);
  msg[0] = kSparseMagic;
  msg[1] = static_cast<uint8_t>(kind);
  msg[2] = static_cast<uint8_t>(l);
  const auto n32 = static_cast<uint32_t>(numel), k32 = static_cast<uint32_t>(k);
  std::memcpy(msg.data() + 4, &n32, 4);
  std::memcpy(msg.data() + 8, &k32, 4);
  if (k == 0) return msg;
  torch::Tensor idx64 = indices.to(torch::kLong).contiguous();
  torch::Tensor val32 = values.to(torch::kFloat).contiguous();
  const int64_t* idx = idx64.data_ptr<int64_t>();
  uint8_t* low = msg.data() + kSparseHeaderBytes;
  uint8_t* high = low + lowBytes(k, l);
  const uint64_t lowMask = (uint64_t{1} << l) - 1;
  uint64_t lowPos = 0;
  for (int64_t i = 0; i < k; ++i) {
    const auto x = static_cast<uint64_t>(idx[i]);
    CHORUS_CHECK(idx[i] >= 0 && idx[i] < numel && (i == 0 || idx[i] > idx[i - 1]),
                 "sparse indices must be ascending, distinct and in [0, ", numel, "); entry ", i, " is ", idx[i]);
    for (uint64_t b = x & lowMask; b != 0; b &= b - 1) {
      const uint64_t bit = lowPos + static_cast<uint64_t>(std::countr_zero(b));
      low[bit / 8] = static_cast<uint8_t>(low[bit / 8] | (1u << (bit % 8)));
    }
    lowPos += static_cast<uint64_t>(l);
    const uint64_t pos = (x >> l) + static_cast<uint64_t>(i);
    high[pos / 8] = static_cast<uint8_t>(high[pos / 8] | (1u << (pos % 8)));
  }
  std::memcpy(high + (highBits(numel, k, l) + 7) / 8, val32.data_ptr<float>(), 4 * static_cast<size_t>(k));
  return msg;
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
  SparseHeader h = parseHeader(msg);
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

int64_t SparseCodec::sparseCount(const Message& msg) const { return parseHeader(msg).k; }

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

std::unique_ptr<Codec> makeSparse(const std::string& method, double ratioOrTau, bool layerwise) {
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
  return std::make_unique<RandomKCodec>(opts);
}

}  // namespace chorus::compress
