// Fashion-MNIST's IDX files through zlib (layout in idx.h). Headers first, so that a mismatch
// between the two files is found before any pixel is read.
#include "chorus/train/idx.h"

#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "chorus/common/error.h"

namespace chorus::train {

GzFile::GzFile(const std::string& path, const char* hint) : path_(path), hint_(hint) {
  f_ = gzopen(path.c_str(), "rb");
  if (!f_) throw Error(str("cannot open ", path, ": ", std::strerror(errno ? errno : ENOMEM), "; ", hint_));
  gzbuffer(f_, 1 << 18);
}

GzFile::GzFile(int fd, const std::string& name, const char* hint) : path_(name), hint_(hint) {
  f_ = gzdopen(fd, "rb");
  if (!f_) {
    ::close(fd);
    throw Error(str("cannot read ", name, ": ", std::strerror(errno ? errno : ENOMEM), "; ", hint_));
  }
}

GzFile::~GzFile() { gzclose(f_); }

size_t GzFile::read(void* dst, size_t n) {
  size_t got = 0;
  while (got < n) {
    unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - got, 1u << 30));
    int r = gzread(f_, static_cast<char*>(dst) + got, chunk);
    if (r < 0) {
      int code = 0;
      const char* msg = gzerror(f_, &code);
      throw Error(str(path_, " is corrupt (zlib: ", msg, "); ", hint_));
    }
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  return got;
}

void GzFile::readAll(void* dst, size_t n, const std::string& what) {
  size_t got = read(dst, n);
  if (got != n)
    throw Error(str(path_, " is truncated: it ends before the ", n, " bytes of ", what,
                    " that its header declares; ", hint_));
}

uint32_t GzFile::readBigEndian32(const std::string& what) {
  unsigned char b[4];
  readAll(b, 4, what);
  return (uint32_t(b[0]) << 24) | (uint32_t(b[1]) << 16) | (uint32_t(b[2]) << 8) | uint32_t(b[3]);
}

namespace {

void checkMagic(GzFile& f, uint32_t expected, const char* kind) {
  uint32_t magic = f.readBigEndian32("header");
  if (magic != expected)
    throw Error(str(f.path(), " is not an IDX ", kind, " file: its magic number is ", magic, ", expected ", expected,
                    " (the file is corrupt or not Fashion-MNIST); ", f.hint()));
}

// Reads the n bytes of `what` that a header declares into `out`, which grows only as the data
// arrives: a header may claim up to 2^32 x 784 bytes, and a corrupt or hostile file must not
// make the reader allocate what the file does not hold.
void readDeclared(GzFile& f, std::vector<uint8_t>& out, uint64_t n, const char* what) {
  constexpr uint64_t kStep = 1 << 20;
  out.clear();
  out.reserve(static_cast<size_t>(std::min<uint64_t>(n, 64 * kStep)));  // a whole Fashion-MNIST split
  while (out.size() < n) {
    const size_t at = out.size();
    const auto chunk = static_cast<size_t>(std::min<uint64_t>(kStep, n - at));
    out.resize(at + chunk);
    if (f.read(out.data() + at, chunk) != chunk)
      throw Error(str(f.path(), " is truncated: it ends before the ", n, " bytes of ", what,
                      " that its header declares; ", f.hint()));
  }
}

}  // namespace

IdxSplit readIdxSplit(GzFile& images, GzFile& labels, int64_t limit) {
  if (limit < 0) throw InvalidArgument(str("dataset limit must be >= 0 (0: everything), got ", limit));
  checkMagic(images, kIdxImagesMagic, "images");
  int64_t n = images.readBigEndian32("header");
  int64_t rows = images.readBigEndian32("header");
  int64_t cols = images.readBigEndian32("header");
  if (rows != kMnistSide || cols != kMnistSide)
    throw Error(str(images.path(), " holds ", rows, "x", cols, " images, expected ", kMnistSide, "x", kMnistSide,
                    " (is it Fashion-MNIST?); ", images.hint()));
  checkMagic(labels, kIdxLabelsMagic, "labels");
  int64_t nLabels = labels.readBigEndian32("header");
  if (nLabels != n)
    throw Error(str(labels.path(), " holds ", nLabels, " labels but ", images.path(), " holds ", n,
                    " images; the two files must come from the same split; ", labels.hint()));

  IdxSplit s;
  s.count = limit > 0 ? std::min(limit, n) : n;
  readDeclared(images, s.pixels, static_cast<uint64_t>(s.count * kMnistSide * kMnistSide), "images");
  readDeclared(labels, s.labels, static_cast<uint64_t>(s.count), "labels");
  // A whole split is read to its end: that makes zlib check the gzip CRC, and finds files
  // longer than their headers say.
  if (s.count == n) {
    for (GzFile* f : {&images, &labels}) {
      unsigned char extra;
      if (f->read(&extra, 1) != 0)
        throw Error(str(f->path(), " holds more bytes than its header declares (", n,
                        " items); the file is corrupt; ", f->hint()));
    }
  }
  for (int64_t i = 0; i < s.count; ++i)
    if (s.labels[static_cast<size_t>(i)] >= kIdxClasses)
      throw Error(str(labels.path(), ": label ", int(s.labels[static_cast<size_t>(i)]), " at index ", i,
                      " is not a class 0..", kIdxClasses - 1, "; the file is corrupt; ", labels.hint()));
  return s;
}

}  // namespace chorus::train
