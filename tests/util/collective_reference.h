// Inputs and serial references for the collective tests.
//
// Every input is a small integer chosen so that each reduction is exact in every dtype:
//   sum, avg  ((7r + 3i) mod 9) - 4, in [-4, 4] (uint8: [0, 8]); a sum over 8 ranks stays
//             within +-32, exact even in bfloat16 (8 significant bits).
//   min, max  ((5r + 11i) mod 17) - 8, in [-8, 8] (uint8: [0, 16]).
//   prod      2 where (r + i) mod 4 = 0, else -1 where (3r + i) mod 5 = 0 (uint8: 1), else 1;
//             |product| <= 4 on 8 ranks.
// Only an average of a floating type is inexact (sum / n rounded to the dtype); it is compared
// with the relative tolerance averageTolerance(). Every other result must match exactly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "chorus/common/dtype.h"

namespace chorus::testutil {

// Rank r's input element i for a reduction with op.
double inputValue(int rank, size_t i, DType dtype, ReduceOp op);
// The reduction over ranks 0..n-1 of element i, as exact arithmetic (integer averages round
// toward zero, as finishReduce does).
double expectedValue(int n, size_t i, DType dtype, ReduceOp op);

// Element access on raw buffers of any dtype.
void storeValue(void* buf, size_t i, DType dtype, double v);
double loadValue(const void* buf, size_t i, DType dtype);

// `count` elements of rank r's input; element i holds inputValue(r, firstIndex + i).
std::vector<uint8_t> makeInput(int rank, size_t count, DType dtype, ReduceOp op, size_t firstIndex = 0);

// Relative tolerance for kAvg of a floating dtype (0 for integers: exact).
double averageTolerance(DType dtype);

// Compares buf[0..count) with expectedValue(n, firstIndex + i). Returns "" when every element
// matches, else a description of the first wrong element.
std::string checkReduced(const void* buf, size_t count, DType dtype, ReduceOp op, int n, size_t firstIndex = 0);

// A value that identifies (rank, element) for the data-movement collectives, exact in every
// dtype: (rank * 31 + i) mod 97 (uint8 and the 16-bit floats hold it exactly).
double tokenValue(int rank, size_t i);
// Fills buf[0..count) with tokenValue(rank, firstIndex + i).
void fillTokens(void* buf, size_t count, DType dtype, int rank, size_t firstIndex = 0);
// "" when buf[0..count) holds tokenValue(rank, firstIndex + i), else the first difference.
std::string checkTokens(const void* buf, size_t count, DType dtype, int rank, size_t firstIndex = 0);

// FNV-1a of a byte range: lets the tests check that every rank ends with bitwise the same
// result.
uint64_t digest(const void* data, size_t bytes);

}  // namespace chorus::testutil
