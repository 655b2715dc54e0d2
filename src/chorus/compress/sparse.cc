// Sparsifying codecs with error feedback (see sparse.h for the wire format).
//
// The exactness of error feedback rests on one detail: the values sent are read from the
// accumulator and those same entries are then set to zero, so no arithmetic touches what is
// sent and decoded(message) + residual reproduces the accumulator bit for bit. Indices are
// sorted before packing, which makes messages canonical (identical selections give identical
// bytes) and makes decodeAdd() walk `out` in order.
//
// Cost per step for n entries and k sent: one pass for acc += grad and |acc|; then
//   topk          O(n) on average (std::nth_element) + O(k log k) to sort the indices,
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
#include <numeric>
#include <vector>

#include "chorus/common/error.h"

namespace chorus::compress {

void checkSparseGrad(std::span<const float> grad, const std::string& codec) {
  if (grad.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
    throw InvalidArgument(str("codec ", codec, ": gradient of ", grad.size(),
                              " entries exceeds the sparse format's int32 indices; split it into "
                              "smaller buckets"));
}

std::vector<float> magnitudes(std::span<const float> values) {
  std::vector<float> m(values.size());
  for (size_t i = 0; i < values.size(); ++i) m[i] = std::fabs(values[i]);
  return m;
}

namespace {

// a > b for magnitudes, with NaN above every number (a strict weak order, unlike float's >).
inline bool larger(float a, float b) {
  const bool na = std::isnan(a), nb = std::isnan(b);
  if (na || nb) return na && !nb;
  return a > b;
}

std::vector<int64_t> allIndices(int64_t n) {
  std::vector<int64_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), int64_t{0});
  return idx;
}

}  // namespace

SparsePairs unpackSparse(const Message& msg) {
  const SparseHeader h = parseSparseHeader(msg);
  SparsePairs out;
  out.kind = h.kind;
  out.numel = h.numel;
  out.indices.resize(static_cast<size_t>(h.k));
  out.values.resize(static_cast<size_t>(h.k));
  decodeSparsePairs(msg, h, out.indices.data(), out.values.data());
  return out;
}

int64_t targetCount(const SparseOptions& opts, int64_t numel) {
  if (numel <= 0) return 0;
  int64_t k = opts.k > 0 ? opts.k : std::llround(opts.ratio * static_cast<double>(numel));
  return std::clamp<int64_t>(k, 1, numel);
}

std::vector<int64_t> selectTopK(std::span<const float> magnitude, int64_t k) {
  const auto n = static_cast<int64_t>(magnitude.size());
  if (k <= 0) return {};
  if (k >= n) return allIndices(n);
  std::vector<int64_t> idx = allIndices(n);
  // Larger magnitude first; equal magnitudes by ascending index.
  auto before = [&](int64_t a, int64_t b) {
    const float ma = magnitude[static_cast<size_t>(a)], mb = magnitude[static_cast<size_t>(b)];
    if (larger(ma, mb)) return true;
    if (larger(mb, ma)) return false;
    return a < b;
  };
  std::nth_element(idx.begin(), idx.begin() + (k - 1), idx.end(), before);
  idx.resize(static_cast<size_t>(k));
  std::sort(idx.begin(), idx.end());
  return idx;
}

std::vector<int64_t> selectTopKSampled(std::span<const float> magnitude, int64_t k, const SparseOptions& opts,
                                       CodecState& state) {
  const auto n = static_cast<int64_t>(magnitude.size());
  if (k <= 0) return {};
  int64_t s = std::max<int64_t>(opts.minSample, static_cast<int64_t>(std::ceil(opts.sampleRatio * n)));
  if (s >= n) return selectTopK(magnitude, k);

  // Estimate the k-th largest magnitude as the matching quantile of a sample (with replacement).
  std::vector<float> sample(static_cast<size_t>(s));
  for (int64_t i = 0; i < s; ++i)
    sample[static_cast<size_t>(i)] = magnitude[static_cast<size_t>(state.nextRandom() % static_cast<uint64_t>(n))];
  int64_t ks = std::clamp<int64_t>(std::llround(static_cast<double>(s) * k / n), 1, s);
  // The (s - ks + 1)-th smallest sample (NaN above every number).
  auto nth = sample.begin() + (s - ks);
  std::nth_element(sample.begin(), nth, sample.end(), [](float a, float b) { return larger(b, a); });
  const float threshold = *nth;

  std::vector<int64_t> sel;  // ascending
  for (int64_t i = 0; i < n; ++i)
    if (magnitude[static_cast<size_t>(i)] >= threshold) sel.push_back(i);
  if (static_cast<int64_t>(sel.size()) > 2 * k) {
    // The sample underestimated the threshold: keep the exact top k of the candidates.
    std::vector<float> sub(sel.size());
    for (size_t i = 0; i < sel.size(); ++i) sub[i] = magnitude[static_cast<size_t>(sel[i])];
    std::vector<int64_t> top = selectTopK(sub, k);
    for (auto& t : top) t = sel[static_cast<size_t>(t)];
    sel = std::move(top);
  } else if (sel.empty()) {
    // The largest (the first NaN if any, else the first of the largest).
    int64_t best = 0;
    for (int64_t i = 1; i < n; ++i)
      if (larger(magnitude[static_cast<size_t>(i)], magnitude[static_cast<size_t>(best)])) best = i;
    sel.push_back(best);
  }
  return sel;
}

Message packSparse(SparseKind kind, int64_t numel, std::span<const int64_t> indices, std::span<const float> values) {
  const auto k = static_cast<int64_t>(indices.size());
  CHORUS_CHECK(values.size() == indices.size(), "indices and values differ in length: ", k, " vs ", values.size());
  return encodeSparsePairs(kind, numel, indices.data(), values.data(), k);
}

std::vector<int64_t> selectLayerwise(std::span<const float> magnitude, const std::vector<int64_t>& ends,
                                     const std::function<std::vector<int64_t>(std::span<const float>)>& pick) {
  if (ends.empty()) return pick(magnitude);
  const auto n = static_cast<int64_t>(magnitude.size());
  if (ends.back() != n)
    throw InvalidArgument(str("sparse codec: the segments end at ", ends.back(), ", not at the gradient's ", n,
                              " entries"));
  std::vector<int64_t> all;
  int64_t start = 0;
  for (int64_t end : ends) {
    if (end < start) throw InvalidArgument("sparse codec: segment ends must ascend");
    if (end > start) {
      std::vector<int64_t> part = pick(magnitude.subspan(static_cast<size_t>(start), static_cast<size_t>(end - start)));
      for (int64_t i : part) all.push_back(i + start);
    }
    start = end;
  }
  return all;
}

namespace {

// Sends acc[idx] and zeroes those entries: no arithmetic touches what is sent.
Message takeSelected(SparseKind kind, std::vector<float>& acc, const std::vector<int64_t>& idx) {
  std::vector<float> vals(idx.size());
  for (size_t i = 0; i < idx.size(); ++i) {
    float& a = acc[static_cast<size_t>(idx[i])];
    vals[i] = a;
    a = 0.0f;
  }
  return packSparse(kind, static_cast<int64_t>(acc.size()), idx, vals);
}

}  // namespace

Message SparseCodec::encode(std::span<const float> grad, CodecState& state) {
  checkSparseGrad(grad, name());
  std::vector<float>& acc = state.residual(grad.size());
  for (size_t i = 0; i < grad.size(); ++i) acc[i] += grad[i];
  return takeSelected(kind(), acc, select(acc, state));
}

void SparseCodec::decodeAdd(const Message& msg, std::span<float> out) const {
  const SparseHeader h = parseSparseHeader(msg);
  if (static_cast<int64_t>(out.size()) != h.numel)
    throw InvalidArgument(str("codec ", name(), ": decodeAdd needs an output of ", h.numel,
                              " entries (the message's numel); got ", out.size(), " entries"));
  SparsePairs p = unpackSparse(msg);
  for (int64_t i = 0; i < h.k; ++i) out[static_cast<size_t>(p.indices[static_cast<size_t>(i)])] += p.values[static_cast<size_t>(i)];
}

int64_t SparseCodec::sparseCount(const Message& msg) const { return parseSparseHeader(msg).k; }

TopKCodec::TopKCodec(SparseOptions opts) : opts_(opts) {}

std::vector<int64_t> TopKCodec::select(std::span<const float> acc, CodecState& state) {
  return selectLayerwise(magnitudes(acc), opts_.layerwise ? state.segments : std::vector<int64_t>{},
                         [&](std::span<const float> m) {
                           return selectTopK(m, targetCount(opts_, static_cast<int64_t>(m.size())));
                         });
}

TopKSampledCodec::TopKSampledCodec(SparseOptions opts) : opts_(opts) {}

std::vector<int64_t> TopKSampledCodec::select(std::span<const float> acc, CodecState& state) {
  return selectLayerwise(magnitudes(acc), opts_.layerwise ? state.segments : std::vector<int64_t>{},
                         [&](std::span<const float> m) {
                           return selectTopKSampled(m, targetCount(opts_, static_cast<int64_t>(m.size())), opts_, state);
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
Message RandomKCodec::encode(std::span<const float> grad, CodecState& state) {
  checkSparseGrad(grad, name());
  if (!rk_.errorFeedback) {
    std::vector<int64_t> idx = select(grad, state);
    std::vector<float> vals(idx.size());
    // float32 arithmetic, as the scale was applied before (a float tensor times a scalar).
    const float scale = idx.empty() ? 1.0f
                                    : static_cast<float>(static_cast<double>(grad.size()) / static_cast<double>(idx.size()));
    for (size_t i = 0; i < idx.size(); ++i) vals[i] = grad[static_cast<size_t>(idx[i])] * scale;
    return packSparse(kind(), static_cast<int64_t>(grad.size()), idx, vals);
  }
  std::vector<float>& acc = state.residual(grad.size());
  if (rk_.residualDecay != 1.0) {
    const auto decay = static_cast<float>(rk_.residualDecay);
    for (float& a : acc) a *= decay;
  }
  for (size_t i = 0; i < grad.size(); ++i) acc[i] += grad[i];
  return takeSelected(kind(), acc, select(acc, state));
}

std::vector<int64_t> RandomKCodec::select(std::span<const float> acc, CodecState& state) {
  // Floyd's algorithm: k draws give k distinct indices, uniformly among all k-subsets.
  const auto n = static_cast<int64_t>(acc.size());
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
  return picked;
}

ThresholdCodec::ThresholdCodec(double tau) : tau_(tau) {
  if (!(tau >= 0) || !std::isfinite(tau))
    throw InvalidArgument(str("threshold codec: tau must be finite and >= 0; got ", tau));
}

std::vector<int64_t> ThresholdCodec::select(std::span<const float> acc, CodecState&) {
  const auto tau = static_cast<float>(tau_);  // compared in float32, as before
  std::vector<int64_t> idx;
  for (size_t i = 0; i < acc.size(); ++i)
    if (std::fabs(acc[i]) >= tau) idx.push_back(static_cast<int64_t>(i));
  return idx;
}

}  // namespace chorus::compress
