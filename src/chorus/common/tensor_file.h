// Tensor files: named tensors stored as data only, a table of entries followed by their raw
// bytes, inside a checksummed frame. Nothing in a file is code, and reading one runs none. This
// unit knows no torch: it moves bytes and validates the layout, so it can be fuzzed and read by
// any tool (train/checkpoint.cc maps the entries to torch tensors).
//
// Frame (all integers little-endian):
//   offset  size
//   0       8     magic, e.g. "CHORUSCK" (the kind of file)
//   8       4     u32 format version (what the payload is; the caller decides which it reads)
//   12      8     u64 payload length P
//   20      32    SHA-256 of the payload
//   52      P     payload; the file ends exactly here
//
// Table (a version-2 checkpoint's payload; also used bare, unframed, for byte blobs inside one):
//   0       4     u32 entry count N (at most kMaxTensorEntries)
//   4       4     u32 length T of the entry list below
//   8       T     N entries, each:
//                   u16 name length L (1..kMaxTensorNameBytes), then L bytes of name
//                   u8 dtype code (TensorDtype), u8 rank R (0..kMaxTensorRank)
//                   R x u64 dimensions (each below 2^63)
//                   u64 offset of the entry's bytes from the start of the table
//                   u64 length of the entry's bytes = product of dimensions x dtype size
//   8+T           the entries' bytes, back to back in entry order; nothing after the last one
//
// Decoding is strict, so one table has exactly one encoding: names are printable ASCII and
// unique; offsets follow each other without a gap or an overlap, beginning right after the
// entry list; every length matches its shape and dtype with no overflow; bool bytes are 0 or
// 1. Element bytes are little-endian, the host order of every platform chorus builds for.
//
// Thread-safety: every function is safe to call concurrently on different data.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "chorus/common/hmac.h"

namespace chorus {

// Element types; the numbers are the codes in the file and never change.
enum class TensorDtype : uint8_t {
  kFloat32 = 1,
  kFloat64 = 2,
  kFloat16 = 3,
  kBFloat16 = 4,
  kInt64 = 5,
  kInt32 = 6,
  kInt16 = 7,
  kInt8 = 8,
  kUInt8 = 9,
  kBool = 10,
};

// Bytes per element, and the name ("float32", ...), of a dtype.
size_t tensorDtypeSize(TensorDtype dtype);
const char* tensorDtypeName(TensorDtype dtype);

constexpr uint32_t kMaxTensorEntries = 1u << 20;
constexpr size_t kMaxTensorNameBytes = 1024;
constexpr size_t kMaxTensorRank = 16;

// One tensor to encode. `data` is borrowed for the call and holds `bytes` bytes, which must be
// the product of `shape` times the dtype's size.
struct TensorRecord {
  std::string name;
  TensorDtype dtype = TensorDtype::kUInt8;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t bytes = 0;
};

// One decoded entry. `data` points into the buffer given to decodeTensorTable, which must outlive
// it; `offset` is from the start of that buffer.
struct TensorEntry {
  std::string name;
  TensorDtype dtype = TensorDtype::kUInt8;
  std::vector<int64_t> shape;
  uint64_t offset = 0;
  uint64_t bytes = 0;
  const uint8_t* data = nullptr;
};

// The table holding `records` in their order. Throws InvalidArgument naming the record when a
// name, shape, size or count breaks the rules above.
std::string encodeTensorTable(const std::vector<TensorRecord>& records);

// The entries of the table in data[0, size), in file order. Throws Error "<source>: <what is
// wrong>" for anything that breaks the rules above; never reads outside [data, data + size).
std::vector<TensorEntry> decodeTensorTable(const void* data, size_t size, std::string_view source);

// ---- the frame ----

constexpr size_t kFileHeaderBytes = 52;

struct FileHeader {
  uint32_t version = 0;
  uint64_t payloadBytes = 0;
  Digest sha256{};
};

// The 52-byte header for `payload`; magic must be 8 bytes.
std::string encodeFileHeader(std::string_view magic, uint32_t version, std::string_view payload);

// Decodes the first bytes of a file (size: how many there are; at most 52 are looked at). Throws
// Error "<what> <path>: not a chorus <what> (bad magic ...)" or "<what> <path>: truncated ...".
FileHeader decodeFileHeader(const void* data, size_t size, std::string_view magic, std::string_view what,
                            std::string_view path);

// Compares a file's size with what its header announces; throws Error "<source>: ..." naming
// both sizes. (source: "<what> <path>", as in the other messages.)
void checkFileSize(const FileHeader& header, uint64_t fileBytes, std::string_view source);

// Compares the payload's SHA-256 with the header's; throws Error "checksum mismatch".
void checkPayload(const FileHeader& header, const void* payload, size_t size, std::string_view source);

struct FramedFile {
  FileHeader header;
  std::string payload;
};

// Reads a framed file: refuses anything but a regular file (a folder, /dev/zero, a pipe) before
// reading from it; reads the header; calls checkVersion(version), which throws to refuse one;
// compares the file's size with the header's before reading the payload, so a file that is
// longer or shorter than it says is refused without being read in full; then reads the payload
// and verifies its SHA-256. Errors name `what` and the path: SystemError for the operating
// system's ("cannot load checkpoint /p: No such file ..."), Error otherwise ("checkpoint /p:
// ..."). Blocks on file I/O only.
FramedFile readFramedFile(const std::string& path, std::string_view magic, std::string_view what,
                          const std::function<void(uint32_t version)>& checkVersion);

// Writes header and payload atomically: a temporary "<path>.tmp.<pid>" in the same folder
// (created if missing), fsync, rename over path, fsync of the folder; a failure leaves the old
// file as it was and removes the temporary. Throws SystemError/Error "cannot save <what> <path>".
void writeFramedFile(const std::string& path, std::string_view magic, uint32_t version, std::string_view payload,
                     std::string_view what);

}  // namespace chorus
