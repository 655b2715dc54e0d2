// The compression methods by name (factory.h). Apart from the codecs themselves, so that what
// only needs the names (the config schema, and the config fuzzer that builds config.cc alone)
// links without them.
#include <algorithm>
#include <string>
#include <vector>

#include "chorus/compress/factory.h"

namespace chorus::compress {

const std::vector<std::string>& compressionMethods() {
  static const std::vector<std::string> names = {"none",  "fp16",     "bf16", "topk", "topk_sampled", "randomk", "threshold",
                                                 "qsgd",  "terngrad", "sign", "int8", "dgc",          "powersgd"};
  return names;
}

const std::vector<std::string>& codecNames() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const auto& m : compressionMethods())
      if (m != "none" && m != "powersgd") v.push_back(m);
    return v;
  }();
  return names;
}

bool isCodecMethod(const std::string& method) {
  const auto& c = codecNames();
  return std::find(c.begin(), c.end(), method) != c.end();
}

bool usesRatio(const std::string& method) {
  return method == "topk" || method == "topk_sampled" || method == "randomk";
}

}  // namespace chorus::compress
