#include "chorus/compress/factory.h"

#include <algorithm>
#include <cmath>

#include "chorus/common/error.h"
#include "chorus/compress/dgc.h"
#include "chorus/compress/quantize.h"
#include "chorus/compress/sparse.h"

namespace chorus::compress {
namespace {

std::string joined(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

std::unique_ptr<Codec> build(const CodecConfig& c) {
  const std::string& m = c.method;
  if (m != "qsgd" && c.levels != 0)
    throw ConfigError(str("compression: levels=", c.levels, " applies to qsgd only, not '", m, "'; leave it 0"));
  if (m == "threshold") {
    if (!(c.threshold >= 0) || !std::isfinite(c.threshold))
      throw ConfigError(str("compression: threshold tau must be finite and >= 0; got ", c.threshold));
    return std::make_unique<ThresholdCodec>(c.threshold);
  }
  if (usesRatio(m)) {
    if (!(c.ratio > 0 && c.ratio <= 1))
      throw ConfigError(str("compression: ", m, " ratio must be in (0, 1] (the fraction of entries sent); got ",
                            c.ratio));
    SparseOptions opts;
    opts.ratio = c.ratio;
    opts.layerwise = c.layerwise;
    if (m == "topk") return std::make_unique<TopKCodec>(opts);
    if (m == "topk_sampled") return std::make_unique<TopKSampledCodec>(opts);
    if (!(c.residualDecay >= 0 && c.residualDecay <= 1))
      throw ConfigError(str("compression: randomk residual decay must be in [0, 1] (1: plain error feedback); got ",
                            c.residualDecay));
    return std::make_unique<RandomKCodec>(opts, RandomKOptions{c.errorFeedback.value_or(true), c.residualDecay});
  }
  if (m == "dgc") {
    DgcOptions o;
    o.momentum = c.momentum;
    o.maxNorm = c.clipNorm;
    o.worldSize = c.worldSize;
    o.layerwise = c.layerwise;
    o.sparsitySchedule.clear();
    for (int64_t e = 0; e < c.warmupEpochs; ++e)
      o.sparsitySchedule.push_back(std::min(c.sparsity, 1 - std::pow(0.25, e + 1)));
    o.sparsitySchedule.push_back(c.sparsity);
    return std::make_unique<DgcCodec>(o);
  }
  const std::optional<bool> ef = c.errorFeedback;
  if (m == "fp16") return std::make_unique<Cast16Codec>(Cast16Codec::Format::kFloat16, ef.value_or(true));
  if (m == "bf16") return std::make_unique<Cast16Codec>(Cast16Codec::Format::kBFloat16, ef.value_or(true));
  if (m == "qsgd") return std::make_unique<QsgdCodec>(c.levels == 0 ? QsgdCodec::kDefaultLevels : c.levels, ef.value_or(false));
  if (m == "terngrad") return std::make_unique<TernGradCodec>(ef.value_or(false));
  if (m == "sign") return std::make_unique<SignCodec>(ef.value_or(true));
  if (m == "int8") return std::make_unique<Int8Codec>(ef.value_or(true));
  throw ConfigError(str("compression: '", m, "' is not a codec; use one of ", joined(codecNames()),
                        m == "none" || m == "powersgd" ? " (none and powersgd are hooks without a codec)" : ""));
}

}  // namespace

std::unique_ptr<Codec> makeCodec(const CodecConfig& config) {
  try {
    return build(config);
  } catch (const InvalidArgument& e) {  // a codec's constructor rejected a setting
    throw ConfigError(str("compression: ", e.what()));
  }
}

}  // namespace chorus::compress
