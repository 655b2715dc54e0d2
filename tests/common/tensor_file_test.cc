// Tensor files (common/tensor_file.h): tables round-trip every dtype, shape and size; the
// encoding is canonical; every kind of damage to a table or a frame is refused with the source
// and what is wrong; readFramedFile refuses folders, devices and files of the wrong size before
// reading them, and writeFramedFile is atomic.
#include "chorus/common/tensor_file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "chorus/common/error.h"

namespace chorus {
namespace {

namespace fs = std::filesystem;

template <typename F>
std::string errorOf(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

#define EXPECT_ERROR_HAS(call, ...)                                                                  \
  do {                                                                                               \
    const std::string msg_ = errorOf([&] { call; });                                                 \
    for (const std::string& part_ : std::initializer_list<std::string>{__VA_ARGS__}) EXPECT_NE(msg_.find(part_), std::string::npos) << "'" << part_ << "' not in: " << msg_; \
  } while (0)

void putLe(std::string& s, size_t at, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) s[at + i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

struct Sample {
  std::vector<float> f = {1.5f, -2.0f, 0.0f, 3.25f, 1e-30f, -0.0f};
  std::vector<int64_t> step = {1234567890123};
  std::vector<uint8_t> flags = {0, 1, 1};
  std::string text = "sgd";

  std::vector<TensorRecord> records() const {
    return {{"params/0.weight", TensorDtype::kFloat32, {2, 3}, f.data(), f.size() * 4},
            {"state/global_step", TensorDtype::kInt64, {}, step.data(), 8},
            {"empty", TensorDtype::kBFloat16, {0, 5}, nullptr, 0},
            {"flags", TensorDtype::kBool, {3}, flags.data(), 3},
            {"optim/kind", TensorDtype::kUInt8, {3}, text.data(), 3}};
  }
};

// Where entry i's u64 fields sit in the encoded table of Sample (for targeted damage).
size_t entryStart(const std::string& table, size_t index) {
  size_t at = 8;
  for (size_t i = 0; i < index; ++i) {
    size_t nameLen = static_cast<uint8_t>(table[at]) | (static_cast<uint8_t>(table[at + 1]) << 8);
    size_t rank = static_cast<uint8_t>(table[at + 2 + nameLen + 1]);
    at += 2 + nameLen + 2 + 8 * rank + 16;
  }
  return at;
}

TEST(TensorFile, RoundTripsEveryEntryAndIsCanonical) {
  Sample s;
  std::string table = encodeTensorTable(s.records());
  auto entries = decodeTensorTable(table.data(), table.size(), "test");
  ASSERT_EQ(entries.size(), 5u);
  EXPECT_EQ(entries[0].name, "params/0.weight");
  EXPECT_EQ(entries[0].dtype, TensorDtype::kFloat32);
  EXPECT_EQ(entries[0].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(entries[0].bytes, 24u);
  EXPECT_EQ(std::memcmp(entries[0].data, s.f.data(), 24), 0);
  EXPECT_EQ(entries[1].shape, std::vector<int64_t>{});
  int64_t step;
  std::memcpy(&step, entries[1].data, 8);
  EXPECT_EQ(step, 1234567890123);
  EXPECT_EQ(entries[2].bytes, 0u);
  EXPECT_EQ(entries[2].shape, (std::vector<int64_t>{0, 5}));
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(entries[4].data), 3), "sgd");
  // Packed in order: the data area starts after the list and ends at the table's end.
  EXPECT_EQ(entries[1].offset, entries[0].offset + 24);
  EXPECT_EQ(entries[4].offset + entries[4].bytes, table.size());

  // Re-encoding what was decoded gives the same bytes.
  std::vector<TensorRecord> again;
  for (const auto& e : entries) again.push_back({e.name, e.dtype, e.shape, e.data, e.bytes});
  EXPECT_EQ(encodeTensorTable(again), table);

  std::string none = encodeTensorTable({});
  EXPECT_EQ(none.size(), 8u);
  EXPECT_TRUE(decodeTensorTable(none.data(), none.size(), "test").empty());
}

TEST(TensorFile, DtypeSizesAndNames) {
  EXPECT_EQ(tensorDtypeSize(TensorDtype::kFloat64), 8u);
  EXPECT_EQ(tensorDtypeSize(TensorDtype::kBFloat16), 2u);
  EXPECT_EQ(tensorDtypeSize(TensorDtype::kBool), 1u);
  EXPECT_STREQ(tensorDtypeName(TensorDtype::kInt16), "int16");
  EXPECT_THROW(tensorDtypeSize(static_cast<TensorDtype>(11)), InvalidArgument);
}

TEST(TensorFile, EncodeRefusesBadRecords) {
  float x = 1;
  auto one = [&](TensorRecord r) { return errorOf([&] { encodeTensorTable({r}); }); };
  EXPECT_NE(one({"", TensorDtype::kFloat32, {}, &x, 4}).find("must be 1 to 1024 printable"), std::string::npos);
  EXPECT_NE(one({"a\nb", TensorDtype::kFloat32, {}, &x, 4}).find("printable"), std::string::npos);
  EXPECT_NE(one({std::string(1025, 'a'), TensorDtype::kFloat32, {}, &x, 4}).find("printable"), std::string::npos);
  EXPECT_NE(one({"a", TensorDtype::kFloat32, {2}, &x, 4}).find("'a' holds 4 bytes, but a float32 tensor of shape [2] needs 8"),
            std::string::npos);
  EXPECT_NE(one({"a", TensorDtype::kFloat32, {-1}, &x, 4}).find("negative dimension"), std::string::npos);
  EXPECT_NE(one({"a", TensorDtype::kFloat32, {1LL << 62, 8}, &x, 4}).find("more than 2^64"), std::string::npos);
  EXPECT_NE(one({"a", static_cast<TensorDtype>(0), {}, &x, 4}).find("unknown dtype code 0"), std::string::npos);
  EXPECT_NE(one({"a", TensorDtype::kFloat32, std::vector<int64_t>(17, 1), &x, 4}).find("17 dimensions"), std::string::npos);
  EXPECT_NE(errorOf([&] {
              encodeTensorTable({{"a", TensorDtype::kFloat32, {}, &x, 4}, {"a", TensorDtype::kFloat32, {}, &x, 4}});
            }).find("'a' appears twice"),
            std::string::npos);
}

// Every rule of the decoder, each broken once in an otherwise valid table.
TEST(TensorFile, DecodeRefusesDamageNamingSourceAndProblem) {
  Sample s;
  const std::string good = encodeTensorTable(s.records());
  const size_t e0 = entryStart(good, 0);
  const size_t e0Name = e0 + 2, e0Dtype = e0 + 2 + 15, e0Rank = e0Dtype + 1, e0Dims = e0Rank + 1;
  const size_t e0Offset = e0Dims + 16, e0Length = e0Offset + 8;
  auto damaged = [&](auto edit) {
    std::string t = good;
    edit(t);
    return errorOf([&] { decodeTensorTable(t.data(), t.size(), "checkpoint /x/c.pt"); });
  };
  auto expectHas = [](const std::string& msg, const std::string& part) {
    EXPECT_NE(msg.find("checkpoint /x/c.pt: "), std::string::npos) << msg;
    EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in: " << msg;
  };
  expectHas(damaged([](std::string& t) { t.resize(5); }), "shorter than its 8-byte header");
  expectHas(damaged([](std::string& t) { putLe(t, 0, (1u << 20) + 1, 4); }), "claims 1048577 entries");
  expectHas(damaged([&](std::string& t) { putLe(t, 4, t.size(), 4); }), "the entry list claims");
  expectHas(damaged([&](std::string& t) { putLe(t, 0, 6, 4); }), "is cut off");
  expectHas(damaged([&](std::string& t) { putLe(t, 0, 4, 4); }), "but its 4 entries take");
  expectHas(damaged([&](std::string& t) { putLe(t, e0, 0, 2); }), "entry 0 has a name of 0 bytes");
  expectHas(damaged([&](std::string& t) { putLe(t, e0, 2000, 2); }), "entry 0 has a name of 2000 bytes");
  expectHas(damaged([&](std::string& t) { t[e0Name] = '\x01'; }), "outside printable ASCII");
  expectHas(damaged([&](std::string& t) { putLe(t, e0Dtype, 11, 1); }), "unknown dtype code 11");
  expectHas(damaged([&](std::string& t) { putLe(t, e0Dtype, 2, 1); }),
            "'params/0.weight' is 24 bytes, but a float64 tensor of shape [2, 3] is 48");
  expectHas(damaged([&](std::string& t) { putLe(t, e0Rank, 17, 1); }), "17 dimensions");
  expectHas(damaged([&](std::string& t) { putLe(t, e0Dims, 3, 8); }), "is 24 bytes, but a float32 tensor of shape [3, 3] is 36");
  expectHas(damaged([&](std::string& t) { putLe(t, e0Dims, 1ULL << 63, 8); }), "beyond 2^63");
  expectHas(damaged([&](std::string& t) {
              putLe(t, e0Dims, 1ULL << 62, 8);
              putLe(t, e0Dims + 8, 1ULL << 62, 8);
            }),
            "overflows 64 bits");
  expectHas(damaged([&](std::string& t) { putLe(t, e0Offset, good.size() - 24 + 1, 8); }), "may neither overlap nor leave gaps");
  expectHas(damaged([&](std::string& t) {
              uint64_t off = 0;
              for (int i = 0; i < 8; ++i) off |= static_cast<uint64_t>(static_cast<uint8_t>(t[e0Offset + i])) << (8 * i);
              putLe(t, e0Offset, off - 1, 8);
            }),
            "may neither overlap nor leave gaps");
  expectHas(damaged([&](std::string& t) {
              putLe(t, e0Dims, 1000, 8);
              putLe(t, e0Length, 12000, 8);
            }),
            "past the end of the table");
  expectHas(damaged([](std::string& t) { t += "xy"; }), "2 bytes follow the last entry's data");
  expectHas(damaged([](std::string& t) { t.pop_back(); }), "past the end of the table");
  // The bool entry's first byte (flags is entry 3: its data sits before optim/kind's 3 bytes).
  expectHas(damaged([](std::string& t) { t[t.size() - 6] = 2; }), "bool entry 'flags' holds the byte 2 at element 0");
  // A second entry with the first's name.
  std::vector<TensorRecord> twice = s.records();
  twice[1].name = "params/0.weight_";
  std::string dup = encodeTensorTable(twice);
  dup[entryStart(dup, 1) + 2 + 15] = '\0';  // not printable: checked before the duplicate
  EXPECT_NE(errorOf([&] { decodeTensorTable(dup.data(), dup.size(), "s"); }).find("printable"), std::string::npos);
  std::vector<TensorRecord> same = s.records();
  same[1].name = "params/0.weighu";
  std::string dup2 = encodeTensorTable(same);
  dup2[entryStart(dup2, 1) + 2 + 14] = 't';
  EXPECT_NE(errorOf([&] { decodeTensorTable(dup2.data(), dup2.size(), "s"); }).find("'params/0.weight' appears twice"),
            std::string::npos);

  // Every truncation of a valid table is refused, never read past.
  for (size_t n = 0; n < good.size(); ++n) {
    std::string cut = good.substr(0, n);
    EXPECT_THROW(decodeTensorTable(cut.data(), cut.size(), "s"), Error) << n;
  }
}

class TensorFileIo : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / str("chorus_tensor_file_", ::getpid(), "_", info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  static std::string readAll(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  static void writeAll(const std::string& p, const std::string& data) { std::ofstream(p, std::ios::binary) << data; }
  static FramedFile read(const std::string& p) {
    return readFramedFile(p, "CHORUSCK", "checkpoint", [](uint32_t v) {
      if (v != 2) throw Error(str("version ", v));
    });
  }
  fs::path dir_;
};

TEST_F(TensorFileIo, WritesAtomicallyAndReadsBack) {
  const std::string p = path("sub/f.pt");
  writeFramedFile(p, "CHORUSCK", 2, "payload bytes", "checkpoint");
  std::string bytes = readAll(p);
  ASSERT_EQ(bytes.size(), 52u + 13);
  EXPECT_EQ(bytes.substr(0, 8), "CHORUSCK");
  EXPECT_EQ(bytes.substr(52), "payload bytes");
  FramedFile f = read(p);
  EXPECT_EQ(f.header.version, 2u);
  EXPECT_EQ(f.payload, "payload bytes");
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir_ / "sub")) names.push_back(e.path().filename());
  EXPECT_EQ(names, std::vector<std::string>{"f.pt"});  // no temporary left
  EXPECT_EQ(encodeFileHeader("CHORUSCK", 2, "payload bytes"), bytes.substr(0, 52));
}

TEST_F(TensorFileIo, RefusesWhatIsNotAFileOfTheRightSizeBeforeReadingIt) {
  // /dev/zero would read forever: it is refused from fstat.
  EXPECT_ERROR_HAS(read("/dev/zero"), "checkpoint /dev/zero: this is a character device, not a checkpoint file");
  EXPECT_ERROR_HAS(read(dir_.string()), str("checkpoint ", dir_.string(), ": this is a folder"));
  const std::string fifo = path("pipe");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_ERROR_HAS(read(fifo), str("checkpoint ", fifo, ": this is a pipe"));  // and does not wait for a writer
  EXPECT_ERROR_HAS(read(path("missing")), str("cannot load checkpoint ", path("missing")), "No such file");

  const std::string p = path("f.pt");
  writeFramedFile(p, "CHORUSCK", 2, std::string(1000, 'x'), "checkpoint");
  const std::string good = readAll(p);
  writeAll(p, good + "extra");
  EXPECT_ERROR_HAS(read(p), p, "length mismatch: expected 1000 payload bytes, found 1005");
  writeAll(p, good.substr(0, good.size() - 1));
  EXPECT_ERROR_HAS(read(p), p, "truncated: expected 1000 payload bytes, found 999");
  writeAll(p, good.substr(0, 51));
  EXPECT_ERROR_HAS(read(p), p, "truncated: expected a 52-byte header, found 51 bytes");
  writeAll(p, "CHORUS");
  EXPECT_ERROR_HAS(read(p), p, "not a chorus checkpoint (bad magic");
  std::string flipped = good;
  flipped[600] ^= 1;
  writeAll(p, flipped);
  EXPECT_ERROR_HAS(read(p), p, "checksum mismatch");
  std::string v3 = good;
  v3[8] = 3;
  writeAll(p, v3);
  EXPECT_ERROR_HAS(read(p), "version 3");  // the caller's check runs before the size check
  writeAll(p, v3 + "extra");
  EXPECT_ERROR_HAS(read(p), "version 3");

  // A header that claims an enormous payload: refused from the size, nothing allocated.
  std::string huge = good.substr(0, 52);
  putLe(huge, 12, 1ULL << 60, 8);
  writeAll(p, huge);
  EXPECT_ERROR_HAS(read(p), p, "truncated: expected 1152921504606846976 payload bytes, found 0");
}

TEST_F(TensorFileIo, FailedWriteKeepsTheOldFileAndRemovesTheTemporary) {
  const std::string p = path("f.pt");
  writeFramedFile(p, "CHORUSCK", 2, "old", "checkpoint");
  fs::create_directory(str(p, ".tmp.", ::getpid()));  // the temporary cannot be opened
  EXPECT_ERROR_HAS(writeFramedFile(p, "CHORUSCK", 2, "new", "checkpoint"), str("cannot save checkpoint ", p),
                   "Is a directory");
  EXPECT_EQ(read(p).payload, "old");
  writeAll(path("file"), "x");
  EXPECT_ERROR_HAS(writeFramedFile(path("file/sub/f.pt"), "CHORUSCK", 2, "new", "checkpoint"), "Not a directory");
}

}  // namespace
}  // namespace chorus
