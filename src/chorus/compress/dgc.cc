// Deep Gradient Compression: momentum correction, momentum factor masking, local clipping
// and the warm-up sparsity schedule (the steps are listed in dgc.h).
//
// Why momentum correction: sparsifying plain gradients and applying momentum on the receiver
// would delay the momentum of the entries that wait in the residual. Accumulating the
// velocity u locally and summing it into v sends exactly what dense momentum SGD would have
// applied, only later. Masking u where v was sent stops the stale momentum of those entries
// from being applied twice.
//
// Cost per step for n entries: ~4 passes over n (clip norm, u update, v update, |v|) plus the
// top-k selection of sparse.cc; the message is sparseMessageBytes(n, k).
#include "chorus/compress/dgc.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "chorus/common/error.h"

namespace chorus::compress {
DgcCodec::DgcCodec(DgcOptions opts) : opts_(std::move(opts)) {
  if (!(opts_.momentum >= 0 && opts_.momentum < 1))
    throw InvalidArgument(str("dgc: momentum must be in [0, 1); got ", opts_.momentum));
  if (!(opts_.maxNorm >= 0))
    throw InvalidArgument(str("dgc: maxNorm must be >= 0 (0 turns clipping off); got ", opts_.maxNorm));
  if (opts_.worldSize < 1)
    throw InvalidArgument(str("dgc: worldSize must be >= 1; got ", opts_.worldSize));
  if (opts_.sparsitySchedule.empty())
    throw InvalidArgument("dgc: the sparsity schedule is empty; give at least one sparsity in [0, 1)");
  for (double s : opts_.sparsitySchedule)
    if (!(s >= 0 && s < 1))
      throw InvalidArgument(str("dgc: sparsity ", s, " is outside [0, 1) (it is the fraction of entries not sent)"));
}

double DgcCodec::sparsity(int64_t epoch) const {
  const auto& s = opts_.sparsitySchedule;
  if (epoch < 0) return s.front();
  return s[static_cast<size_t>(std::min<int64_t>(epoch, static_cast<int64_t>(s.size()) - 1))];
}

int64_t DgcCodec::epochOf(const CodecState& state) const {
  auto it = state.scalars.find("epoch");
  return it != state.scalars.end() ? static_cast<int64_t>(it->second) : epoch_.load();
}

std::vector<int64_t> DgcCodec::select(std::span<const float> velocity, CodecState& state) {
  SparseOptions opts;
  opts.ratio = 1.0 - sparsity(epochOf(state));
  opts.sampleRatio = opts_.sampleRatio;
  opts.minSample = opts_.minSample;
  return selectLayerwise(magnitudes(velocity), opts_.layerwise ? state.segments : std::vector<int64_t>{},
                         [&](std::span<const float> mag) {
                           int64_t k = targetCount(opts, static_cast<int64_t>(mag.size()));
                           return opts_.sampledTopK ? selectTopKSampled(mag, k, opts, state) : selectTopK(mag, k);
                         });
}

Message DgcCodec::encode(std::span<const float> grad, CodecState& state) {
  checkSparseGrad(grad, name());
  const size_t n = grad.size();
  std::vector<float> clipped;  // a copy when clipping: encode() leaves grad untouched
  std::span<const float> g = grad;
  if (opts_.maxNorm > 0) {
    double limit = opts_.maxNorm / std::sqrt(static_cast<double>(opts_.worldSize));
    double sumSq = 0;
    for (float x : grad) sumSq += static_cast<double>(x) * x;
    double norm = std::sqrt(sumSq);
    if (norm > limit) {
      const auto scale = static_cast<float>(limit / norm);
      clipped.resize(n);
      for (size_t i = 0; i < n; ++i) clipped[i] = grad[i] * scale;
      g = clipped;
    }
  }
  std::vector<float>& u = state.buffer("momentum", n);
  std::vector<float>& v = state.buffer("velocity", n);
  const auto m = static_cast<float>(opts_.momentum);
  for (size_t i = 0; i < n; ++i) {
    u[i] = u[i] * m + g[i];
    v[i] += u[i];
  }
  std::vector<int64_t> idx = select(v, state);
  std::vector<float> vals(idx.size());
  for (size_t i = 0; i < idx.size(); ++i) {
    const auto j = static_cast<size_t>(idx[i]);
    vals[i] = v[j];
    v[j] = 0.0f;
    u[j] = 0.0f;
  }
  return packSparse(kind(), static_cast<int64_t>(n), idx, vals);
}

}  // namespace chorus::compress
