#include "collective_reference.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "chorus/common/error.h"

namespace chorus::testutil {

namespace {
bool isFloating(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat64 || t == DType::kFloat16 || t == DType::kBFloat16;
}
}  // namespace

double inputValue(int rank, size_t i, DType dtype, ReduceOp op) {
  const auto r = static_cast<size_t>(rank);
  const bool unsignedType = dtype == DType::kUInt8;
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg: {
      const auto v = static_cast<double>((7 * r + 3 * i) % 9);
      return unsignedType ? v : v - 4;
    }
    case ReduceOp::kMin:
    case ReduceOp::kMax: {
      const auto v = static_cast<double>((5 * r + 11 * i) % 17);
      return unsignedType ? v : v - 8;
    }
    case ReduceOp::kProd:
      if ((r + i) % 4 == 0) return 2;
      if ((3 * r + i) % 5 == 0) return unsignedType ? 1 : -1;
      return 1;
  }
  return 0;
}

double expectedValue(int n, size_t i, DType dtype, ReduceOp op) {
  double acc = inputValue(0, i, dtype, op);
  for (int r = 1; r < n; ++r) {
    const double v = inputValue(r, i, dtype, op);
    switch (op) {
      case ReduceOp::kSum:
      case ReduceOp::kAvg: acc += v; break;
      case ReduceOp::kMin: acc = std::min(acc, v); break;
      case ReduceOp::kMax: acc = std::max(acc, v); break;
      case ReduceOp::kProd: acc *= v; break;
    }
  }
  if (op == ReduceOp::kAvg) acc = isFloating(dtype) ? acc / n : std::trunc(acc / n);
  return acc;
}

void storeValue(void* buf, size_t i, DType dtype, double v) {
  switch (dtype) {
    case DType::kFloat32: static_cast<float*>(buf)[i] = static_cast<float>(v); return;
    case DType::kFloat64: static_cast<double*>(buf)[i] = v; return;
    case DType::kFloat16: static_cast<uint16_t*>(buf)[i] = floatToHalf(static_cast<float>(v)); return;
    case DType::kBFloat16: static_cast<uint16_t*>(buf)[i] = floatToBf16(static_cast<float>(v)); return;
    case DType::kInt32: static_cast<int32_t*>(buf)[i] = static_cast<int32_t>(v); return;
    case DType::kInt64: static_cast<int64_t*>(buf)[i] = static_cast<int64_t>(v); return;
    case DType::kUInt8: static_cast<uint8_t*>(buf)[i] = static_cast<uint8_t>(v); return;
  }
}

double loadValue(const void* buf, size_t i, DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return static_cast<const float*>(buf)[i];
    case DType::kFloat64: return static_cast<const double*>(buf)[i];
    case DType::kFloat16: return halfToFloat(static_cast<const uint16_t*>(buf)[i]);
    case DType::kBFloat16: return bf16ToFloat(static_cast<const uint16_t*>(buf)[i]);
    case DType::kInt32: return static_cast<const int32_t*>(buf)[i];
    case DType::kInt64: return static_cast<double>(static_cast<const int64_t*>(buf)[i]);
    case DType::kUInt8: return static_cast<const uint8_t*>(buf)[i];
  }
  return 0;
}

std::vector<uint8_t> makeInput(int rank, size_t count, DType dtype, ReduceOp op, size_t firstIndex) {
  std::vector<uint8_t> buf(count * dtypeSize(dtype));
  for (size_t i = 0; i < count; ++i) storeValue(buf.data(), i, dtype, inputValue(rank, firstIndex + i, dtype, op));
  return buf;
}

double averageTolerance(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 1e-6;
    case DType::kFloat64: return 1e-14;
    case DType::kFloat16: return 2e-3;   // two units in the last place (2^-10 relative)
    case DType::kBFloat16: return 1.6e-2;  // two units in the last place (2^-7 relative)
    default: return 0;
  }
}

std::string checkReduced(const void* buf, size_t count, DType dtype, ReduceOp op, int n, size_t firstIndex) {
  const double tol = op == ReduceOp::kAvg ? averageTolerance(dtype) : 0;
  for (size_t i = 0; i < count; ++i) {
    const double want = expectedValue(n, firstIndex + i, dtype, op);
    const double got = loadValue(buf, i, dtype);
    if (std::fabs(got - want) > tol * std::max(1.0, std::fabs(want))) {
      return str(reduceOpName(op), " over ", n, " ranks, ", dtypeName(dtype), " element ", firstIndex + i, ": got ",
                 got, ", want ", want);
    }
  }
  return "";
}

double tokenValue(int rank, size_t i) { return static_cast<double>((static_cast<size_t>(rank) * 31 + i) % 97); }

void fillTokens(void* buf, size_t count, DType dtype, int rank, size_t firstIndex) {
  for (size_t i = 0; i < count; ++i) storeValue(buf, i, dtype, tokenValue(rank, firstIndex + i));
}

std::string checkTokens(const void* buf, size_t count, DType dtype, int rank, size_t firstIndex) {
  for (size_t i = 0; i < count; ++i) {
    const double want = tokenValue(rank, firstIndex + i), got = loadValue(buf, i, dtype);
    if (got != want) {
      return str(dtypeName(dtype), " element ", i, " (rank ", rank, "'s element ", firstIndex + i, "): got ", got,
                 ", want ", want);
    }
  }
  return "";
}

uint64_t digest(const void* data, size_t bytes) {
  uint64_t h = 1469598103934665603ull;
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < bytes; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace chorus::testutil
