// JsonObject encoding (escaping, numbers that read back exactly, non-finite as null) and
// MetricsLog (folders created, one flushed line per write, truncate vs append, errors that
// name the path).
#include "chorus/train/metrics.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "chorus/common/error.h"

namespace chorus::train {
namespace {

namespace fs = std::filesystem;

// A fresh folder under the system temp dir, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() / ("chorus-metrics-test-" + std::to_string(getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  fs::path path_;
};

std::vector<std::string> readLines(const fs::path& p) {
  std::ifstream in(p);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// The encoded value of the single field in {"k": VALUE}.
std::string valueOf(const JsonObject& o) {
  std::string s = o.str();
  const std::string prefix = "{\"k\": ";
  EXPECT_EQ(s.rfind(prefix, 0), 0u) << s;
  EXPECT_EQ(s.back(), '}') << s;
  return s.substr(prefix.size(), s.size() - prefix.size() - 1);
}

TEST(JsonEscape, QuotesBackslashesAndControlCharacters) {
  EXPECT_EQ(jsonEscape("plain"), "plain");
  EXPECT_EQ(jsonEscape("a\"b"), "a\\\"b");
  EXPECT_EQ(jsonEscape("a\\b"), "a\\\\b");
  EXPECT_EQ(jsonEscape("line\nnext\ttab\rret"), "line\\nnext\\ttab\\rret");
  EXPECT_EQ(jsonEscape(std::string("\b\f", 2)), "\\b\\f");
  EXPECT_EQ(jsonEscape(std::string("\x01\x1f", 2)), "\\u0001\\u001f");
  EXPECT_EQ(jsonEscape(std::string("nul\0x", 5)), "nul\\u0000x");
  EXPECT_EQ(jsonEscape("caf\xc3\xa9"), "caf\xc3\xa9");  // UTF-8 passes through
}

TEST(JsonObject, FieldsInInsertionOrderWithEveryType) {
  JsonObject o;
  o.add("event", "step").add("step", 12).add("big", int64_t{1} << 53).add("neg", int64_t{-7});
  o.add("ok", true).add("bad", false).add("loss", 0.5).add("name\"q", std::string("a\nb"));
  EXPECT_EQ(o.str(),
            "{\"event\": \"step\", \"step\": 12, \"big\": 9007199254740992, \"neg\": -7, \"ok\": true, "
            "\"bad\": false, \"loss\": 0.5, \"name\\\"q\": \"a\\nb\"}");
  EXPECT_EQ(JsonObject().str(), "{}");
}

TEST(JsonObject, IntegersAreExact) {
  EXPECT_EQ(valueOf(JsonObject().add("k", std::numeric_limits<int64_t>::max())), "9223372036854775807");
  EXPECT_EQ(valueOf(JsonObject().add("k", std::numeric_limits<int64_t>::min())), "-9223372036854775808");
  EXPECT_EQ(valueOf(JsonObject().add("k", uint64_t{123456789012345})), "123456789012345");
  EXPECT_EQ(valueOf(JsonObject().add("k", 0)), "0");
}

TEST(JsonObject, DoublesRoundTripInShortForm) {
  // Short where a short form reads back exactly.
  EXPECT_EQ(valueOf(JsonObject().add("k", 0.1)), "0.1");
  EXPECT_EQ(valueOf(JsonObject().add("k", 2.0)), "2");
  EXPECT_EQ(valueOf(JsonObject().add("k", -0.25)), "-0.25");

  std::vector<double> values = {0.1,   1.0 / 3.0, 2.0 / 3.0, 1e-300, 5e-324, 1.7976931348623157e308, -123.456,
                                1e21,  6.02214076e23, 0.30000000000000004, 12345.678901234567, -0.0};
  // Plus a deterministic spread of awkward values.
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (int i = 0; i < 2000; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    double d;
    static_assert(sizeof(d) == sizeof(x));
    std::memcpy(&d, &x, sizeof(d));
    if (std::isfinite(d)) values.push_back(d);
  }
  for (double v : values) {
    std::string text = valueOf(JsonObject().add("k", v));
    char* end = nullptr;
    double back = std::strtod(text.c_str(), &end);
    ASSERT_EQ(*end, '\0') << text;
    EXPECT_EQ(std::memcmp(&back, &v, sizeof(v)), 0) << "wrote " << text << " for " << v;
    EXPECT_LE(text.size(), 24u) << text;  // never a padded %.17g-style tail
    // JSON numbers: an optional '-', digits, then an optional fraction and exponent; no
    // "inf"/"nan", no leading '+' or '.'.
    EXPECT_NE(std::string("-0123456789").find(text[0]), std::string::npos) << text;
    EXPECT_EQ(text.find_first_not_of("-+.0123456789e"), std::string::npos) << text;
  }
}

TEST(JsonObject, NonFiniteIsNull) {
  EXPECT_EQ(valueOf(JsonObject().add("k", std::numeric_limits<double>::quiet_NaN())), "null");
  EXPECT_EQ(valueOf(JsonObject().add("k", std::numeric_limits<double>::infinity())), "null");
  EXPECT_EQ(valueOf(JsonObject().add("k", -std::numeric_limits<double>::infinity())), "null");
}

TEST(MetricsLog, CreatesFoldersAndWritesOneFlushedLinePerObject) {
  TempDir dir;
  fs::path path = dir.path_ / "a" / "b" / "metrics.jsonl";
  MetricsLog log(path.string());
  EXPECT_TRUE(log.isOpen());
  EXPECT_EQ(log.path(), path.string());
  log.write(JsonObject().add("step", 1).add("loss", 2.5));
  // Flushed: readable while the log is still open.
  EXPECT_EQ(readLines(path), (std::vector<std::string>{"{\"step\": 1, \"loss\": 2.5}"}));
  log.write(JsonObject().add("step", 2));
  EXPECT_EQ(readLines(path), (std::vector<std::string>{"{\"step\": 1, \"loss\": 2.5}", "{\"step\": 2}"}));
}

TEST(MetricsLog, TruncatesOrAppends) {
  TempDir dir;
  fs::path path = dir.path_ / "metrics.jsonl";
  { MetricsLog(path.string()).write(JsonObject().add("run", 1)); }
  { MetricsLog(path.string(), /*append=*/true).write(JsonObject().add("run", 2)); }
  EXPECT_EQ(readLines(path), (std::vector<std::string>{"{\"run\": 1}", "{\"run\": 2}"}));
  { MetricsLog(path.string(), /*append=*/false).write(JsonObject().add("run", 3)); }
  EXPECT_EQ(readLines(path), (std::vector<std::string>{"{\"run\": 3}"}));
}

TEST(MetricsLog, ClosedLogIgnoresWrites) {
  MetricsLog log;
  EXPECT_FALSE(log.isOpen());
  EXPECT_NO_THROW(log.write(JsonObject().add("x", 1)));
}

TEST(MetricsLog, ErrorsNameThePath) {
  TempDir dir;
  // A file where a folder must be.
  fs::path blocker = dir.path_ / "file";
  std::ofstream(blocker) << "x";
  std::string underFile = (blocker / "sub" / "metrics.jsonl").string();
  try {
    MetricsLog log(underFile);
    FAIL() << "expected chorus::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(underFile), std::string::npos) << e.what();
  }
  // A folder where the file must be.
  fs::path isDir = dir.path_ / "adir";
  fs::create_directories(isDir);
  try {
    MetricsLog log(isDir.string(), true);
    FAIL() << "expected chorus::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(isDir.string()), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace chorus::train
