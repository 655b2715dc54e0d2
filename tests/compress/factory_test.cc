// The codec factory: one list of method names, one settings struct, and the documented
// selection rule of the torch-free top-k (std::nth_element, NaN largest, ties to the lower index).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/compress/dgc.h"
#include "chorus/compress/factory.h"
#include "chorus/compress/sparse.h"

namespace chorus::compress {
namespace {

TEST(CodecFactory, EveryCodecNameBuildsThatCodec) {
  const auto& methods = compressionMethods();
  EXPECT_EQ(methods.front(), "none");
  EXPECT_EQ(methods.back(), "powersgd");
  EXPECT_EQ(codecNames().size() + 2, methods.size());
  for (const auto& m : codecNames()) {
    CodecConfig c;
    c.method = m;
    if (m == "qsgd") c.levels = 7;
    auto codec = makeCodec(c);
    ASSERT_TRUE(codec) << m;
    EXPECT_EQ(codec->name(), m);
    EXPECT_TRUE(isCodecMethod(m));
    EXPECT_TRUE(std::find(methods.begin(), methods.end(), m) != methods.end()) << m;
  }
  for (const char* m : {"none", "powersgd", "topq"}) {
    CodecConfig c;
    c.method = m;
    EXPECT_FALSE(isCodecMethod(m));
    EXPECT_THROW(makeCodec(c), ConfigError) << m;
  }
  EXPECT_TRUE(usesRatio("topk") && usesRatio("topk_sampled") && usesRatio("randomk"));
  EXPECT_FALSE(usesRatio("threshold") || usesRatio("dgc"));
}

TEST(CodecFactory, DgcScheduleFromTheConfig) {
  CodecConfig c;
  c.method = "dgc";
  c.sparsity = 0.99;
  c.warmupEpochs = 2;
  auto codec = makeCodec(c);
  auto& dgc = dynamic_cast<DgcCodec&>(*codec);
  EXPECT_EQ(dgc.options().sparsitySchedule, (std::vector<double>{0.75, 0.9375, 0.99}));
  c.momentum = 1.0;
  EXPECT_THROW(makeCodec(c), ConfigError);
}

TEST(TopKSelection, TiesGoToTheLowerIndexAndNanIsLargest) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(selectTopK(std::vector<float>{1, 2, 2, 2, 0}, 2), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(selectTopK(std::vector<float>{3, 3, 3, 3}, 3), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(selectTopK(std::vector<float>{5, nan, 1, nan}, 2), (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(selectTopK(std::vector<float>{5, nan, 1, 7}, 2), (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(selectTopK(std::vector<float>{1, 2}, 5), (std::vector<int64_t>{0, 1}));
  EXPECT_TRUE(selectTopK(std::vector<float>{1, 2}, 0).empty());
}

}  // namespace
}  // namespace chorus::compress
