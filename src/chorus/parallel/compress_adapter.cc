#include "chorus/parallel/compress_adapter.h"

#include <cstring>

#include "chorus/common/error.h"

namespace chorus::parallel {
namespace {

void checkFloat(const torch::Tensor& t, const std::string& what) {
  if (!t.defined() || t.scalar_type() != torch::kFloat32 || !t.device().is_cpu() || !t.is_contiguous())
    throw InvalidArgument(str(what, " needs a contiguous float32 CPU tensor; got ",
                              t.defined() ? t.toString() : std::string("an undefined tensor"),
                              " (convert it with .to(torch::kFloat32).contiguous())"));
}

}  // namespace

std::span<const float> floatSpan(const torch::Tensor& t, const std::string& what) {
  checkFloat(t, what);
  return {t.data_ptr<float>(), static_cast<size_t>(t.numel())};
}

std::span<float> mutableFloatSpan(const torch::Tensor& t, const std::string& what) {
  checkFloat(t, what);
  return {t.data_ptr<float>(), static_cast<size_t>(t.numel())};
}

compress::Message encode(compress::Codec& codec, const torch::Tensor& grad, compress::CodecState& state) {
  return codec.encode(floatSpan(grad, str("codec ", codec.name(), ": encode")), state);
}

void decodeAdd(const compress::Codec& codec, const compress::Message& msg, const torch::Tensor& out) {
  codec.decodeAdd(msg, mutableFloatSpan(out, str("codec ", codec.name(), ": decodeAdd")));
}

torch::Tensor bufferView(compress::CodecState& state, const std::string& name) {
  auto it = state.buffers.find(name);
  if (it == state.buffers.end()) throw InvalidArgument(str("codec state has no buffer '", name, "'"));
  return torch::from_blob(it->second.data(), {static_cast<int64_t>(it->second.size())}, torch::kFloat32);
}

torch::Tensor bufferOf(compress::CodecState& state, const std::string& name, at::IntArrayRef shape) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  std::vector<float>& b = state.buffer(name, static_cast<size_t>(numel));
  return torch::from_blob(b.data(), shape, torch::kFloat32);
}

torch::Tensor bufferTensor(const compress::CodecState& state, const std::string& name) {
  const std::vector<float>& b = state.buffers.at(name);
  torch::Tensor t = torch::empty({static_cast<int64_t>(b.size())}, torch::kFloat32);
  if (!b.empty()) std::memcpy(t.data_ptr<float>(), b.data(), b.size() * sizeof(float));
  return t;
}

void setBuffer(compress::CodecState& state, const std::string& name, const torch::Tensor& t) {
  torch::Tensor flat = t.to(torch::kCPU, torch::kFloat32).contiguous().reshape({-1});
  const auto n = static_cast<size_t>(flat.numel());
  std::vector<float>& b = state.buffers[name];
  b.resize(n);
  if (n > 0) std::memcpy(b.data(), flat.data_ptr<float>(), n * sizeof(float));
}

}  // namespace chorus::parallel
