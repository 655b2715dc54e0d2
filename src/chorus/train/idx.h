// Fashion-MNIST's IDX files, read through zlib (gzip or plain) into bytes. Torch-free, so the
// parser that runs on downloaded files can be fuzzed on its own (fuzz/idx_fuzz.cc);
// datasets.cc turns the bytes into tensors.
//
// An IDX file is a big-endian uint32 magic (2051 for images, 2049 for labels), one big-endian
// uint32 per dimension (images: N, 28, 28; labels: N), then N*28*28 (or N) unsigned bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

struct gzFile_s;  // zlib's file handle (gzFile), kept out of this header

namespace chorus::train {

// A gzip or plain file read through zlib (gzread passes a plain file through unchanged).
// Errors are chorus::Error naming the file and ending with `hint` (what to do about it), which
// must outlive the object. Not thread-safe.
class GzFile {
 public:
  // Opens `path`.
  GzFile(const std::string& path, const char* hint);
  // Reads from `fd`, which the object then owns and closes; `name` stands for it in messages.
  GzFile(int fd, const std::string& name, const char* hint);
  ~GzFile();
  GzFile(const GzFile&) = delete;
  GzFile& operator=(const GzFile&) = delete;

  const std::string& path() const { return path_; }
  const char* hint() const { return hint_; }

  // Reads up to n bytes; fewer only at the end of the data (or of a cut gzip stream, where
  // zlib may not count the last bytes it decoded). Corrupt compressed data throws.
  size_t read(void* dst, size_t n);
  // Reads exactly n bytes of `what`; a short read is a truncated file.
  void readAll(void* dst, size_t n, const std::string& what);
  uint32_t readBigEndian32(const std::string& what);

 private:
  std::string path_;
  const char* hint_;
  gzFile_s* f_;
};

inline constexpr int64_t kMnistSide = 28;
inline constexpr uint32_t kIdxImagesMagic = 2051;
inline constexpr uint32_t kIdxLabelsMagic = 2049;
inline constexpr int64_t kIdxClasses = 10;

// One split of Fashion-MNIST as bytes.
struct IdxSplit {
  int64_t count = 0;
  std::vector<uint8_t> pixels;  // count images of 28 x 28 pixels, row-major
  std::vector<uint8_t> labels;  // count labels, each < kIdxClasses
};

// Reads a split from its images file and its labels file: checks both headers (magic, 28 x 28,
// the same N), reads the first `limit` samples (all N when limit is 0), and checks every
// label. Reading a whole split also reads both files to their end, which makes zlib check the
// gzip CRC and finds a file longer than its header says. Memory grows with the data read, not
// with the counts the headers claim. Throws chorus::Error naming the file (InvalidArgument for
// a negative limit).
IdxSplit readIdxSplit(GzFile& images, GzFile& labels, int64_t limit);

}  // namespace chorus::train
