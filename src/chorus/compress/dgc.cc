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
namespace {

// The state tensor `name`, as zeros shaped like the flat gradient on first use.
torch::Tensor& stateTensor(CodecState& state, const std::string& name, const torch::Tensor& g) {
  torch::Tensor& t = state.tensors[name];
  if (!t.defined() || t.numel() != g.numel()) t = torch::zeros({g.numel()}, g.options());
  return t;
}

}  // namespace

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

torch::Tensor DgcCodec::select(const torch::Tensor& velocity, CodecState& state) {
  SparseOptions opts;
  opts.ratio = 1.0 - sparsity(epochOf(state));
  opts.sampleRatio = opts_.sampleRatio;
  opts.minSample = opts_.minSample;
  return selectLayerwise(velocity.abs(), opts_.layerwise ? state.segments : std::vector<int64_t>{},
                         [&](const torch::Tensor& mag) {
                           int64_t k = targetCount(opts, mag.numel());
                           return opts_.sampledTopK ? selectTopKSampled(mag, k, opts, state) : selectTopK(mag, k);
                         });
}

Message DgcCodec::encode(const torch::Tensor& grad, CodecState& state) {
  torch::Tensor g = checkedFlatGrad(grad, name());
  if (opts_.maxNorm > 0) {
    double limit = opts_.maxNorm / std::sqrt(static_cast<double>(opts_.worldSize));
    double norm = g.norm().item<double>();
    if (norm > limit) g = g * (limit / norm);  // a copy: encode() leaves grad untouched
  }
  torch::Tensor& u = stateTensor(state, "momentum", g);
  torch::Tensor& v = stateTensor(state, "velocity", g);
  u.mul_(opts_.momentum).add_(g);
  v.add_(u);
  torch::Tensor idx = select(v, state);
  torch::Tensor vals = v.index_select(0, idx);
  v.index_fill_(0, idx, 0.0);
  u.index_fill_(0, idx, 0.0);
  return packSparse(kind(), g.numel(), idx, vals);
}

}  // namespace chorus::compress
