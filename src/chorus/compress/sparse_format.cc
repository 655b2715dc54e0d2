// The sparse wire format's encoder and decoder (layout in sparse.h).
//
// Elias-Fano in brief: of each ascending index x_i (i = 0..k-1) the low l bits go to a packed
// array of k codes, and the high part x_i >> l is stored in unary as a mark at bit
// (x_i >> l) + i of a bit array; since the high parts never decrease, the marks appear in order
// and decoding reads them back with a count of the marks seen so far.
//   l = floor(log2(n / k)), so the bit array has k + ((n - 1) >> l) + 1 <= 3k bits and each
//   index costs at most 2 + ceil(log2(n / k)) bits.
// The decoder checks everything a corrupt or hostile message could get wrong: the size, each
// mark's place (at most k marks, none past the array), that the indices ascend within
// [0, n), and that no padding bit is set; what passes re-encodes to the same bytes.
#include "chorus/compress/sparse_format.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>

#include "chorus/common/error.h"

namespace chorus::compress {
namespace {

static_assert(std::endian::native == std::endian::little, "the sparse format is written in host order");

int lowBitsFor(int64_t numel, int64_t k) {
  if (k <= 0 || k >= numel) return 0;
  int l = 0;
  while ((k << (l + 1)) <= numel) ++l;  // largest l with k * 2^l <= numel
  return l;
}

size_t lowBytes(int64_t k, int l) { return static_cast<size_t>((k * l + 7) / 8); }
// No pairs need no bit array: an empty message is its header alone.
uint64_t highBits(int64_t numel, int64_t k, int l) {
  return numel == 0 || k == 0 ? 0 : static_cast<uint64_t>(k) + (static_cast<uint64_t>(numel - 1) >> l) + 1;
}

uint32_t load32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace

size_t sparseMessageBytes(int64_t numel, int64_t k) {
  int l = lowBitsFor(numel, k);
  return kSparseHeaderBytes + lowBytes(k, l) + static_cast<size_t>((highBits(numel, k, l) + 7) / 8) +
         4 * static_cast<size_t>(k);
}

SparseHeader parseSparseHeader(std::span<const uint8_t> msg) {
  if (msg.size() < kSparseHeaderBytes || msg[0] != kSparseMagic)
    throw InvalidArgument(str("sparse codec: message of ", msg.size(),
                              " bytes is not a sparse message (bad size or magic); check that "
                              "every rank uses the same codec"));
  SparseHeader h{};
  uint8_t kind = msg[1];
  if (kind < static_cast<uint8_t>(SparseKind::kTopK) || kind > static_cast<uint8_t>(SparseKind::kDgc))
    throw InvalidArgument(str("sparse codec: unknown sparse kind ", int(kind), " in message header"));
  h.kind = static_cast<SparseKind>(kind);
  if (msg[3] != 0)
    throw InvalidArgument(str("sparse codec: reserved header byte is ", int(msg[3]),
                              ", expected 0; the message comes from another version of the format or is corrupt"));
  h.lowBits = msg[2];
  h.numel = load32(msg.data() + 4);
  h.k = load32(msg.data() + 8);
  if (h.numel > std::numeric_limits<int32_t>::max() || h.k > h.numel || h.lowBits != lowBitsFor(h.numel, h.k) ||
      msg.size() != sparseMessageBytes(h.numel, h.k))
    throw InvalidArgument(str("sparse codec: corrupt message header (numel ", h.numel, ", k ", h.k, ", low bits ",
                              h.lowBits, ", ", msg.size(), " bytes; expected ",
                              h.k <= h.numel ? sparseMessageBytes(h.numel, h.k) : 0, ")"));
  return h;
}

void decodeSparsePairs(std::span<const uint8_t> msg, const SparseHeader& h, int64_t* idx, float* values) {
  if (h.k == 0) return;
  const int l = h.lowBits;
  const uint8_t* low = msg.data() + kSparseHeaderBytes;
  const uint8_t* high = low + lowBytes(h.k, l);
  const uint64_t nHigh = highBits(h.numel, h.k, l);
  const uint8_t* vals = high + (nHigh + 7) / 8;
  int64_t i = 0, prev = -1;
  uint64_t lowPos = 0;
  const uint64_t lowMask = (uint64_t{1} << l) - 1;
  for (uint64_t byte = 0; byte < (nHigh + 7) / 8; ++byte) {
    for (unsigned bits = high[byte]; bits != 0; bits &= bits - 1) {
      const uint64_t pos = byte * 8 + static_cast<unsigned>(std::countr_zero(bits));
      if (pos >= nHigh)
        throw InvalidArgument(str("sparse codec: corrupt message, padding bit ", pos, " of the index marks is set (",
                                  nHigh, " bits are used)"));
      if (i >= h.k)
        throw InvalidArgument(str("sparse codec: corrupt message, more than k = ", h.k, " index marks"));
      uint64_t lowCode = 0;
      if (l > 0) {
        // Up to 32 low bits starting at bit lowPos: read 8 bytes (or what is left) and shift.
        uint64_t word = 0;
        const size_t at = lowPos / 8, avail = std::min<size_t>(8, lowBytes(h.k, l) - at);
        std::memcpy(&word, low + at, avail);
        lowCode = (word >> (lowPos % 8)) & lowMask;
        lowPos += static_cast<uint64_t>(l);
      }
      const int64_t x = static_cast<int64_t>(((pos - static_cast<uint64_t>(i)) << l) | lowCode);
      if (x <= prev || x >= h.numel)
        throw InvalidArgument(str("sparse codec: corrupt message, index ", x, " is outside [0, ", h.numel,
                                  ") or not above the previous one (", prev, ")"));
      idx[i++] = prev = x;
    }
  }
  if (i != h.k)
    throw InvalidArgument(str("sparse codec: corrupt message, ", i, " index marks for k = ", h.k));
  const uint64_t lowUsed = static_cast<uint64_t>(h.k) * static_cast<uint64_t>(l);
  if (lowUsed % 8 != 0 && (low[lowUsed / 8] >> (lowUsed % 8)) != 0)
    throw InvalidArgument(str("sparse codec: corrupt message, padding bits after the ", h.k, " low index codes are set"));
  std::memcpy(values, vals, 4 * static_cast<size_t>(h.k));
}

std::vector<uint8_t> encodeSparsePairs(SparseKind kind, int64_t numel, const int64_t* idx, const float* values,
                                       int64_t k) {
  CHORUS_CHECK(k >= 0 && k <= numel, "sparse message of ", k, " pairs out of ", numel, " entries");
  CHORUS_CHECK(numel <= std::numeric_limits<int32_t>::max(), "sparse message numel ", numel,
               " does not fit the format");
  std::vector<uint8_t> msg(sparseMessageBytes(numel, k), 0);
  const int l = lowBitsFor(numel, k);
  msg[0] = kSparseMagic;
  msg[1] = static_cast<uint8_t>(kind);
  msg[2] = static_cast<uint8_t>(l);
  const auto n32 = static_cast<uint32_t>(numel), k32 = static_cast<uint32_t>(k);
  std::memcpy(msg.data() + 4, &n32, 4);
  std::memcpy(msg.data() + 8, &k32, 4);
  if (k == 0) return msg;
  uint8_t* low = msg.data() + kSparseHeaderBytes;
  uint8_t* high = low + lowBytes(k, l);
  const uint64_t lowMask = (uint64_t{1} << l) - 1;
  uint64_t lowPos = 0;
  for (int64_t i = 0; i < k; ++i) {
    const auto x = static_cast<uint64_t>(idx[i]);
    CHORUS_CHECK(idx[i] >= 0 && idx[i] < numel && (i == 0 || idx[i] > idx[i - 1]),
                 "sparse indices must be ascending, distinct and in [0, ", numel, "); entry ", i, " is ", idx[i]);
    for (uint64_t b = x & lowMask; b != 0; b &= b - 1) {
      const uint64_t bit = lowPos + static_cast<uint64_t>(std::countr_zero(b));
      low[bit / 8] = static_cast<uint8_t>(low[bit / 8] | (1u << (bit % 8)));
    }
    lowPos += static_cast<uint64_t>(l);
    const uint64_t pos = (x >> l) + static_cast<uint64_t>(i);
    high[pos / 8] = static_cast<uint8_t>(high[pos / 8] | (1u << (pos % 8)));
  }
  std::memcpy(high + (highBits(numel, k, l) + 7) / 8, values, 4 * static_cast<size_t>(k));
  return msg;
}

}  // namespace chorus::compress
