// libFuzzer target for the Fashion-MNIST IDX reader (src/chorus/train/idx.cc), which runs on
// downloaded files, plain or gzip-compressed, through zlib.
//
// The input: a byte whose low 2 bits pick the sample limit (0 = the whole split, else 1..3),
// two bytes (little-endian) for the length of the images file, then the images file and the
// labels file. Both go into memory files (memfd) that zlib reads like files on disk, so gzip
// streams, plain files and everything between take the same path as in training.
// readIdxSplit must either return a split that holds what it says (count images of 28 x 28
// bytes, count labels below 10, at most the count the headers declare) or throw chorus::Error:
// no other exception, no out-of-bounds access (ASan), no undefined behaviour (UBSan), and no
// allocation beyond what the input can fill (the 2 GB malloc limit of fuzz/run.sh).
//
// fuzz-sources: src/chorus/train/idx.cc src/chorus/common/error.cc
// fuzz-libs: -lz
// fuzz-max-len: 8192
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/train/idx.h"
#include "seeds.h"

using namespace chorus::train;

namespace {

const char* kHint = "(fuzz input)";

[[noreturn]] void fail(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "idx_fuzz: %s%s%s\n", what, detail.empty() ? "" : ": ", detail.c_str());
  std::abort();
}

// A memory file holding `bytes`, positioned at its start.
int memoryFile(const char* name, const uint8_t* bytes, size_t n) {
  const int fd = memfd_create(name, MFD_CLOEXEC);
  if (fd < 0) fail("memfd_create failed");
  size_t done = 0;
  while (done < n) {
    const ssize_t w = ::write(fd, bytes + done, n - done);
    if (w <= 0) fail("cannot write a memory file");
    done += static_cast<size_t>(w);
  }
  if (::lseek(fd, 0, SEEK_SET) != 0) fail("lseek failed");
  return fd;
}

std::vector<uint8_t> bigEndian(std::initializer_list<uint32_t> words) {
  std::vector<uint8_t> out;
  for (uint32_t w : words)
    for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<uint8_t>(w >> s));
  return out;
}

std::vector<uint8_t> gzip(const std::vector<uint8_t>& plain) {
  z_stream z{};
  if (deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) fail("deflateInit2");
  std::vector<uint8_t> out(deflateBound(&z, plain.size()));
  z.next_in = const_cast<uint8_t*>(plain.data());
  z.avail_in = static_cast<uInt>(plain.size());
  z.next_out = out.data();
  z.avail_out = static_cast<uInt>(out.size());
  if (deflate(&z, Z_FINISH) != Z_STREAM_END) fail("deflate");
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

std::vector<uint8_t> input(uint8_t limitBits, const std::vector<uint8_t>& images, const std::vector<uint8_t>& labels) {
  std::vector<uint8_t> out{limitBits, static_cast<uint8_t>(images.size()), static_cast<uint8_t>(images.size() >> 8)};
  out.insert(out.end(), images.begin(), images.end());
  out.insert(out.end(), labels.begin(), labels.end());
  return out;
}

void writeSeeds(const char* folder) {
  using chorus::fuzz::writeSeed;
  // Two images (a gradient and its inverse) with labels 3 and 9.
  std::vector<uint8_t> images = bigEndian({kIdxImagesMagic, 2, 28, 28});
  for (int i = 0; i < 2 * 28 * 28; ++i) images.push_back(static_cast<uint8_t>(i < 784 ? i % 256 : 255 - i % 256));
  std::vector<uint8_t> labels = bigEndian({kIdxLabelsMagic, 2});
  labels.push_back(3);
  labels.push_back(9);
  writeSeed(folder, "plain", input(0, images, labels));
  writeSeed(folder, "plain_limit1", input(1, images, labels));
  writeSeed(folder, "gzip", input(0, gzip(images), gzip(labels)));
  writeSeed(folder, "gzip_images_plain_labels", input(2, gzip(images), labels));
  writeSeed(folder, "empty_split", input(0, bigEndian({kIdxImagesMagic, 0, 28, 28}), bigEndian({kIdxLabelsMagic, 0})));
}

}  // namespace

CHORUS_FUZZ_SEEDS(writeSeeds)

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  const int64_t limit = data[0] & 3;
  const size_t imagesLen = std::min<size_t>(data[1] | size_t{data[2]} << 8, size - 3);
  const uint8_t* imagesAt = data + 3;
  GzFile images(memoryFile("images", imagesAt, imagesLen), "images", kHint);
  GzFile labels(memoryFile("labels", imagesAt + imagesLen, size - 3 - imagesLen), "labels", kHint);
  IdxSplit split;
  try {
    split = readIdxSplit(images, labels, limit);
  } catch (const chorus::Error&) {
    return 0;
  } catch (const std::exception& e) {
    fail("not a chorus::Error", e.what());
  }
  if (split.count < 0 || (limit > 0 && split.count > limit)) fail("the split holds more samples than the limit");
  if (split.pixels.size() != static_cast<size_t>(split.count) * 28 * 28) fail("pixels do not match the count");
  if (split.labels.size() != static_cast<size_t>(split.count)) fail("labels do not match the count");
  for (uint8_t l : split.labels)
    if (l >= kIdxClasses) fail("a label out of range was accepted");
  return 0;
}
