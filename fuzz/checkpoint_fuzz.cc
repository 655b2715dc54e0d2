// libFuzzer target for the checkpoint loader's parser (src/chorus/common/tensor_file.cc): the
// frame and the tensor table of a checkpoint file, which a user may have from anywhere.
//
// 1. The input as a whole file: the header (magic, version, length), the length against the
//    input's size, the SHA-256, then the table. Each step either passes or throws chorus::Error;
//    no other exception, no read outside the input (ASan), no undefined behaviour (UBSan).
// 2. The input as a bare table, and the input past a 52-byte header as a table (so mutations of
//    whole-file seeds reach the table's checks although they break the checksum). What decodes
//    holds: every entry lies inside the input, names are unique, lengths equal shape x dtype
//    size, entries are packed in order up to the end, and re-encoding the entries gives exactly
//    the input's bytes (one table, one encoding).
//
// fuzz-sources: src/chorus/common/tensor_file.cc src/chorus/common/hmac.cc src/chorus/common/error.cc
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/common/tensor_file.h"
#include "seeds.h"

using namespace chorus;

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "checkpoint_fuzz: %s\n", what);
  std::abort();
}

void checkTable(const uint8_t* data, size_t size) {
  std::vector<TensorEntry> entries;
  try {
    entries = decodeTensorTable(data, size, "fuzz");
  } catch (const Error&) {
    return;
  }
  std::set<std::string> names;
  uint64_t next = 0;
  std::vector<TensorRecord> records;
  for (const auto& e : entries) {
    if (!names.insert(e.name).second) fail("a decoded table has a name twice");
    if (e.data != data + e.offset || e.offset > size || e.bytes > size - e.offset) fail("an entry lies outside the input");
    if (next != 0 && e.offset != next) fail("decoded entries are not packed in order");
    uint64_t n = tensorDtypeSize(e.dtype);
    for (int64_t d : e.shape) {
      if (d < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) fail("a decoded shape overflows");
    }
    if (n != e.bytes) fail("a decoded length differs from shape x dtype size");
    next = e.offset + e.bytes;
    records.push_back({e.name, e.dtype, e.shape, e.data, static_cast<size_t>(e.bytes)});
  }
  if (!entries.empty() && next != size) fail("bytes follow the last decoded entry");
  const std::string again = encodeTensorTable(records);
  if (again.size() != size || std::memcmp(again.data(), data, size) != 0) fail("a decoded table re-encodes to other bytes");
}

void checkFile(const uint8_t* data, size_t size) {
  try {
    FileHeader h = decodeFileHeader(data, size, "CHORUSCK", "checkpoint", "fuzz");
    checkFileSize(h, size, "fuzz");
    checkPayload(h, data + kFileHeaderBytes, size - kFileHeaderBytes, "fuzz");
    decodeTensorTable(data + kFileHeaderBytes, size - kFileHeaderBytes, "fuzz");
  } catch (const Error&) {
  }
}

// ---- seeds (fuzz/make_seeds.sh) ----

struct Blob {
  std::vector<uint8_t> bytes;
  TensorRecord record(const std::string& name, TensorDtype dtype, std::vector<int64_t> shape) const {
    return {name, dtype, std::move(shape), bytes.data(), bytes.size()};
  }
};

Blob fill(size_t n, uint8_t start) {
  Blob b;
  for (size_t i = 0; i < n; ++i) b.bytes.push_back(static_cast<uint8_t>(start + 7 * i));
  return b;
}

template <typename T>
Blob value(T v) {
  Blob b;
  b.bytes.resize(sizeof v);
  std::memcpy(b.bytes.data(), &v, sizeof v);
  return b;
}

std::vector<uint8_t> bytesOf(const std::string& s) { return {s.begin(), s.end()}; }

void writeSeeds(const char* folder) {
  using fuzz::writeSeed;
  // A checkpoint as the trainer writes one, for a tiny model with Adam and a codec blob.
  const Blob w = fill(24, 1), b = fill(8, 50), nbt = value<int64_t>(3), zero = value<int64_t>(0),
             step = value<int64_t>(14), scale = value<double>(65536.0), lr = value<double>(0.0123),
             groups = value<int64_t>(1), params = value<int64_t>(2), adamStep = value<int64_t>(14),
             m = fill(24, 9), v = fill(24, 200), mb = fill(8, 3), vb = fill(8, 90);
  Blob kind;
  kind.bytes = bytesOf("adam");
  const Blob residual = fill(20, 5), rng = value<int64_t>(0x1234567890ab), sstep = value<double>(3.0);
  Blob codec;
  codec.bytes = bytesOf(encodeTensorTable({residual.record("b0_t_residual", TensorDtype::kFloat32, {5}),
                                           sstep.record("b0_s_step", TensorDtype::kFloat64, {1}),
                                           rng.record("b0_rng", TensorDtype::kInt64, {1})}));
  const std::string table = encodeTensorTable({
      w.record("params/0.weight", TensorDtype::kFloat32, {2, 3}),
      b.record("params/0.bias", TensorDtype::kFloat32, {2}),
      nbt.record("buffers/1.num_batches_tracked", TensorDtype::kInt64, {}),
      zero.record("state/epoch", TensorDtype::kInt64, {}),
      zero.record("state/step_in_epoch", TensorDtype::kInt64, {}),
      step.record("state/global_step", TensorDtype::kInt64, {}),
      scale.record("scalars/amp.scale", TensorDtype::kFloat64, {}),
      codec.record("tensors/codec.rank0", TensorDtype::kUInt8, {static_cast<int64_t>(codec.bytes.size())}),
      kind.record("optim/kind", TensorDtype::kUInt8, {4}),
      groups.record("optim/groups", TensorDtype::kInt64, {}),
      lr.record("optim/0/lr", TensorDtype::kFloat64, {}),
      params.record("optim/0/params", TensorDtype::kInt64, {}),
      adamStep.record("optim/0/0/step", TensorDtype::kInt64, {}),
      m.record("optim/0/0/exp_avg", TensorDtype::kFloat32, {2, 3}),
      v.record("optim/0/0/exp_avg_sq", TensorDtype::kFloat32, {2, 3}),
      mb.record("optim/0/1/exp_avg", TensorDtype::kFloat32, {2}),
      vb.record("optim/0/1/exp_avg_sq", TensorDtype::kFloat32, {2}),
  });
  writeSeed(folder, "table_checkpoint", bytesOf(table));
  writeSeed(folder, "file_checkpoint", bytesOf(encodeFileHeader("CHORUSCK", 2, table) + table));
  writeSeed(folder, "table_codec", codec.bytes);

  // Every dtype, empty and multi-dimensional shapes.
  const Blob bools = [] {
    Blob x;
    x.bytes = {0, 1, 1, 0};
    return x;
  }();
  const Blob eight = fill(16, 11), none;
  const std::string dtypes = encodeTensorTable({
      eight.record("f32", TensorDtype::kFloat32, {2, 2}), eight.record("f64", TensorDtype::kFloat64, {2}),
      eight.record("f16", TensorDtype::kFloat16, {8}), eight.record("bf16", TensorDtype::kBFloat16, {2, 1, 4}),
      eight.record("i64", TensorDtype::kInt64, {1, 2}), eight.record("i32", TensorDtype::kInt32, {4}),
      eight.record("i16", TensorDtype::kInt16, {8}), eight.record("i8", TensorDtype::kInt8, {16}),
      eight.record("u8", TensorDtype::kUInt8, {4, 4}), bools.record("bool", TensorDtype::kBool, {4}),
      none.record("empty", TensorDtype::kFloat32, {0}), none.record("empty3", TensorDtype::kInt64, {3, 0, 5}),
  });
  writeSeed(folder, "table_dtypes", bytesOf(dtypes));
  writeSeed(folder, "table_empty", bytesOf(encodeTensorTable({})));
  writeSeed(folder, "file_empty_table", bytesOf(encodeFileHeader("CHORUSCK", 2, encodeTensorTable({})) +
                                                encodeTensorTable({})));
  // A version-1 header over a zip-like payload: what the loader refuses by its version.
  const std::string legacy = "PK\x03\x04 version-1 payload";
  writeSeed(folder, "file_version1", bytesOf(encodeFileHeader("CHORUSCK", 1, legacy) + legacy));
}

}  // namespace

CHORUS_FUZZ_SEEDS(writeSeeds)

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    checkFile(data, size);
    checkTable(data, size);
    if (size >= kFileHeaderBytes) checkTable(data + kFileHeaderBytes, size - kFileHeaderBytes);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "checkpoint_fuzz: unexpected exception: %s\n", e.what());
    std::abort();
  }
  return 0;
}
