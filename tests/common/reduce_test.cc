// Reduction kernels and 16-bit conversions against scalar references.
#include <gtest/gtest.h>
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "chorus/common/dtype.h"
#include "chorus/common/error.h"
#include "chorus/common/reduce.h"

namespace chorus::kernels {
void combineGeneric(void* out, const void* a, const void* b, size_t n, DType t, ReduceOp op);
void combineAvx2(void* out, const void* a, const void* b, size_t n, DType t, ReduceOp op);
}  // namespace chorus::kernels

namespace chorus {
namespace {

__attribute__((target("f16c"))) float hwHalfToFloat(uint16_t h) { return _cvtsh_ss(h); }
__attribute__((target("f16c"))) uint16_t hwFloatToHalf(float f) {
  return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
}

bool hasF16c() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

TEST(HalfTest, EveryHalfWidensExactlyAndRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = halfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(halfToFloat(floatToHalf(f))));
      continue;
    }
    EXPECT_EQ(floatToHalf(f), h) << "half 0x" << std::hex << h;
    if (hasF16c()) {
      float hw = hwHalfToFloat(static_cast<uint16_t>(h));
      EXPECT_EQ(std::memcmp(&f, &hw, 4), 0) << std::hex << h;
    }
  }
}

TEST(HalfTest, RoundsToNearestEvenLikeHardware) {
  if (!hasF16c()) GTEST_SKIP() << "no F16C on this CPU to compare with";
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 200000; ++i) {
    uint32_t u = bits(rng);
    float f;
    std::memcpy(&f, &u, 4);
    if (std::isnan(f)) continue;
    ASSERT_EQ(floatToHalf(f), hwFloatToHalf(f)) << "float bits 0x" << std::hex << u;
  }
  // Ties, subnormals and overflow edges.
  for (float f : {65504.0f, 65519.0f, 65520.0f, 1e-8f, 2.9802322e-8f, 5.9604645e-8f, 6.1035156e-5f, -0.0f}) {
    EXPECT_EQ(floatToHalf(f), hwFloatToHalf(f)) << f;
  }
}

TEST(Bf16Test, RoundsToNearestEven) {
  EXPECT_EQ(floatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16ToFloat(0x3f80), 1.0f);
  // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: rounds to even (1.0).
  EXPECT_EQ(floatToBf16(1.0f + 1.0f / 256), 0x3f80);
  EXPECT_EQ(floatToBf16(1.0f + 3.0f / 256), 0x3f82);
  EXPECT_TRUE(std::isnan(bf16ToFloat(floatToBf16(std::nanf("")))));
}

// Scalar reference through double (exact for the small integers used below).
double refOp(double a, double b, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg: return a + b;
    case ReduceOp::kProd: return a * b;
    case ReduceOp::kMin: return std::min(a, b);
    case ReduceOp::kMax: return std::max(a, b);
  }
  return 0;
}

void store(void* p, size_t i, DType t, double v) {
  switch (t) {
    case DType::kFloat32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case DType::kFloat64: static_cast<double*>(p)[i] = v; break;
    case DType::kFloat16: static_cast<uint16_t*>(p)[i] = floatToHalf(static_cast<float>(v)); break;
    case DType::kBFloat16: static_cast<uint16_t*>(p)[i] = floatToBf16(static_cast<float>(v)); break;
    case DType::kInt32: static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v); break;
    case DType::kInt64: static_cast<int64_t*>(p)[i] = static_cast<int64_t>(v); break;
    case DType::kUInt8: static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(v); break;
  }
}

class KernelTest : public ::testing::TestWithParam<std::tuple<DType, ReduceOp>> {};

TEST_P(KernelTest, MatchesScalarReferenceOnBothPaths) {
  auto [dtype, op] = GetParam();
  const size_t es = dtypeSize(dtype);
  for (size_t n : {0ul, 1ul, 7ul, 8ul, 31ul, 257ul, 1003ul}) {
    std::vector<uint8_t> a(n * es + 1), b(n * es + 1), expect(n * es + 1);
    for (size_t i = 0; i < n; ++i) {
      // Values in [-3, 3] (unsigned: [0, 6]): every sum and product is exact in every dtype.
      double x = static_cast<double>(static_cast<int>(i * 3 % 7) - 3);
      double y = static_cast<double>(static_cast<int>(i * 5 % 7) - 3);
      if (dtype == DType::kUInt8) x += 3, y += 3;
      store(a.data(), i, dtype, x);
      store(b.data(), i, dtype, y);
      store(expect.data(), i, dtype, refOp(x, y, op));
    }
    std::vector<uint8_t> out = a;
    reduceInto(out.data(), b.data(), n, dtype, op);
    EXPECT_EQ(std::memcmp(out.data(), expect.data(), n * es), 0) << dtypeName(dtype) << " n=" << n;
    std::vector<uint8_t> g(n * es + 1);
    kernels::combineGeneric(g.data(), a.data(), b.data(), n, dtype, op);
    EXPECT_EQ(std::memcmp(g.data(), expect.data(), n * es), 0) << "generic " << dtypeName(dtype);
    if (hasF16c()) {
      std::vector<uint8_t> v(n * es + 1);
      kernels::combineAvx2(v.data(), a.data(), b.data(), n, dtype, op);
      EXPECT_EQ(std::memcmp(v.data(), expect.data(), n * es), 0) << "avx2 " << dtypeName(dtype);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypesAndOps, KernelTest,
                         ::testing::Combine(::testing::ValuesIn(kAllDTypes), ::testing::ValuesIn(kAllReduceOps)),
                         [](const auto& info) {
                           return std::string(dtypeName(std::get<0>(info.param))) + "_" +
                                  reduceOpName(std::get<1>(info.param));
                         });

TEST(FinishReduceTest, AveragesEveryDtype) {
  float f[3] = {3, 6, -9};
  finishReduce(f, 3, DType::kFloat32, ReduceOp::kAvg, 3);
  EXPECT_EQ(f[0], 1);
  EXPECT_EQ(f[2], -3);
  int32_t i[2] = {7, -7};
  finishReduce(i, 2, DType::kInt32, ReduceOp::kAvg, 2);
  EXPECT_EQ(i[0], 3);
  EXPECT_EQ(i[1], -3);
  uint16_t h[1] = {floatToHalf(6.0f)};
  finishReduce(h, 1, DType::kFloat16, ReduceOp::kAvg, 4);
  EXPECT_EQ(halfToFloat(h[0]), 1.5f);
  float s[1] = {6};
  finishReduce(s, 1, DType::kFloat32, ReduceOp::kSum, 4);
  EXPECT_EQ(s[0], 6);
  EXPECT_THROW(finishReduce(f, 3, DType::kFloat32, ReduceOp::kAvg, 0), InvalidArgument);
}

TEST(DTypeTest, ParsesNamesAndRejectsUnknown) {
  for (DType t : kAllDTypes) EXPECT_EQ(parseDType(dtypeName(t)), t);
  for (ReduceOp op : kAllReduceOps) EXPECT_EQ(parseReduceOp(reduceOpName(op)), op);
  EXPECT_EQ(parseDType("bf16"), DType::kBFloat16);
  try {
    parseDType("float8");
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("bfloat16"), std::string::npos);
  }
}

}  // namespace
}  // namespace chorus
