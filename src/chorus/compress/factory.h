// One place that knows the compression methods by name: the list a config may choose from,
// and the codec each codec method builds from one settings struct (docs/compression.md,
// "The interface").
//
// Methods fall in three groups:
//   none                    no compression (a dense float32 all-reduce);
//   codecs                  everything makeCodec() builds: fp16, bf16 (Cast16Codec; the trainer
//                           all-reduces these in the 16-bit type instead, without a codec),
//                           topk, topk_sampled, randomk, threshold (sparse.h), qsgd, terngrad,
//                           sign, int8 (quantize.h), dgc (dgc.h);
//   powersgd                low-rank matrices, a hook of its own in parallel/ (LibTorch math).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "chorus/compress/codec.h"

namespace chorus::compress {

// The settings of every codec; each method reads the fields its comment names.
struct CodecConfig {
  std::string method = "none";
  double ratio = 0.01;         // topk, topk_sampled, randomk: fraction of the entries sent, in (0, 1]
  double residualDecay = 0.9;  // randomk with error feedback: the residual's decay per step, in [0, 1]
  double threshold = 1e-3;     // threshold: send entries with |value| >= this (finite, >= 0)
  int64_t levels = 0;          // qsgd: levels s, 1 to 127 (0: QsgdCodec::kDefaultLevels); 0 for the others
  // randomk and the quantizers: keep what was not sent (unset: the method's default, which is
  // on for all but qsgd and terngrad; randomk's is on).
  std::optional<bool> errorFeedback;
  bool layerwise = true;       // topk, topk_sampled, dgc: k per parameter tensor (CodecState::segments)
  double sparsity = 0.999;     // dgc: final sparsity, in [0, 1)
  int64_t warmupEpochs = 4;    // dgc: epochs of sparsity min(sparsity, 1 - 0.25^(epoch+1)) before it
  double momentum = 0.9;       // dgc: momentum, in [0, 1)
  double clipNorm = 0.0;       // dgc: global clipping norm (0: off)
  int64_t worldSize = 1;       // dgc: ranks that average (for the clipping threshold)
};

// Every method a config may name, in the order help texts list them: none, the codecs,
// powersgd.
const std::vector<std::string>& compressionMethods();
// The methods makeCodec() builds (compressionMethods() less none and powersgd).
const std::vector<std::string>& codecNames();
bool isCodecMethod(const std::string& method);
// Whether `method` sends a fraction CodecConfig::ratio of the entries (topk, topk_sampled,
// randomk).
bool usesRatio(const std::string& method);

// The codec for config.method. Throws ConfigError naming the allowed codecs for any other
// method (none and powersgd included), and for a setting the method reads that is out of range.
std::unique_ptr<Codec> makeCodec(const CodecConfig& config);

}  // namespace chorus::compress
