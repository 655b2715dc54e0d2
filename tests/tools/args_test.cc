// The CLI's argument parser: sizes with suffixes, flag forms, errors that list the valid
// flags, positional handling.
#include "args.h"

#include <gtest/gtest.h>

namespace chorus::tools {
namespace {

TEST(ParseSize, Suffixes) {
  EXPECT_EQ(parseSize("0"), 0u);
  EXPECT_EQ(parseSize("4096"), 4096u);
  EXPECT_EQ(parseSize("4K"), 4096u);
  EXPECT_EQ(parseSize("4k"), 4096u);
  EXPECT_EQ(parseSize("4KB"), 4096u);
  EXPECT_EQ(parseSize("4KiB"), 4096u);
  EXPECT_EQ(parseSize("64M"), 64u << 20);
  EXPECT_EQ(parseSize("1G"), 1u << 30);
  EXPECT_EQ(parseSize("3g"), 3ull << 30);
  EXPECT_EQ(parseSize("17B"), 17u);
}

TEST(ParseSize, RejectsWithHint) {
  for (const char* bad : {"", "K", "-4K", "4X", "4KK", "4 K", "1.5M", "4Mi", "99999999999999999999"}) {
    try {
      parseSize(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
    }
  }
  try {
    parseSize("4X");
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("64M"), std::string::npos) << "the message shows an example: " << e.what();
  }
  EXPECT_THROW(parseSize("17179869184G"), InvalidArgument);  // overflows 64 bits
  // The largest 64-bit count still parses (the bench caps it with its own message); one more,
  // or a huge count with a suffix, is refused rather than wrapped.
  EXPECT_EQ(parseSize("18446744073709551615"), UINT64_MAX);
  EXPECT_THROW(parseSize("18446744073709551616"), InvalidArgument);
  EXPECT_THROW(parseSize("99999999999999999999G"), InvalidArgument);
  EXPECT_THROW(parseSize("18014398509481984K"), InvalidArgument);  // 2^54 K = 2^64
}

TEST(FormatSize, RoundTrips) {
  for (uint64_t b : {0ull, 1ull, 1000ull, 1024ull, 1536ull, 4096ull, 1ull << 20, 3ull << 30, 5ull << 40}) {
    EXPECT_EQ(parseSize(formatSize(b)), b) << formatSize(b);
  }
  EXPECT_EQ(formatSize(4096), "4K");
  EXPECT_EQ(formatSize(64u << 20), "64M");
  EXPECT_EQ(formatSize(1536), "1536");
}

TEST(ParseInt, Forms) {
  EXPECT_EQ(parseInt("12"), 12);
  EXPECT_EQ(parseInt("-3"), -3);
  EXPECT_THROW(parseInt(""), InvalidArgument);
  EXPECT_THROW(parseInt("12x"), InvalidArgument);
  EXPECT_THROW(parseInt(" 1"), InvalidArgument);
  EXPECT_THROW(parseInt("99999999999999999999"), InvalidArgument);
}

TEST(EditDistance, Basics) {
  EXPECT_EQ(editDistance("", ""), 0u);
  EXPECT_EQ(editDistance("--iters", "--iter"), 1u);
  EXPECT_EQ(editDistance("kitten", "sitting"), 3u);
}

ArgParser benchLike() {
  ArgParser p("chorus test", ArgParser::Positional::kReject);
  p.addValue("--iters", "K", "iterations", "10");
  p.addValue("--max-bytes", "SIZE", "largest", "64M");
  p.addValue("-n,--nproc", "N", "ranks");
  p.addSwitch("--json", "json output");
  return p;
}

TEST(ArgParser, ValuesSwitchesAndDefaults) {
  ArgParser p = benchLike();
  p.parse({"--iters", "3", "--max-bytes=1M", "--json"});
  EXPECT_TRUE(p.has("--iters"));
  EXPECT_EQ(p.getInt("--iters", 1, 100), 3);
  EXPECT_EQ(p.getSize("--max-bytes"), 1u << 20);
  EXPECT_TRUE(p.has("--json"));
  EXPECT_FALSE(p.has("--nproc"));
  EXPECT_EQ(p.get("--nproc"), "");
  std::vector<std::string> given = {"--iters", "3", "--max-bytes=1M", "--json"};
  EXPECT_EQ(p.given(), given);

  ArgParser q = benchLike();
  q.parse({});
  EXPECT_FALSE(q.has("--iters"));
  EXPECT_EQ(q.getInt("--iters", 1, 100), 10);
  EXPECT_EQ(q.getSize("--max-bytes"), 64u << 20);
}

TEST(ArgParser, AliasesShareOneValue) {
  ArgParser p = benchLike();
  p.parse({"-n", "4"});
  EXPECT_TRUE(p.has("--nproc"));
  EXPECT_EQ(p.getInt("--nproc", 1, 8), 4);
  ArgParser q = benchLike();
  EXPECT_THROW(q.parse({"-n", "4", "--nproc", "2"}), UsageError);
}

std::string usageErrorOf(const std::vector<std::string>& args) {
  ArgParser p = benchLike();
  try {
    p.parse(args);
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

TEST(ArgParser, UnknownFlagListsTheValidOnesAndSuggests) {
  std::string msg = usageErrorOf({"--iter", "3"});
  ASSERT_FALSE(msg.empty());
  EXPECT_NE(msg.find("unknown flag --iter"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean --iters?"), std::string::npos) << msg;
  for (const char* f : {"--iters", "--max-bytes", "-n/--nproc", "--json"}) {
    EXPECT_NE(msg.find(f), std::string::npos) << f << " missing from: " << msg;
  }
  std::string far = usageErrorOf({"--frobnicate"});
  EXPECT_EQ(far.find("did you mean"), std::string::npos) << far;
  EXPECT_NE(far.find("--max-bytes"), std::string::npos) << far;
}

TEST(ArgParser, OtherErrors) {
  EXPECT_NE(usageErrorOf({"--iters"}).find("needs a value"), std::string::npos);
  EXPECT_NE(usageErrorOf({"--json=1"}).find("takes no value"), std::string::npos);
  EXPECT_NE(usageErrorOf({"stray"}).find("unexpected argument 'stray'"), std::string::npos);
  EXPECT_NE(usageErrorOf({"--iters", "1", "--iters", "2"}).find("given twice"), std::string::npos);

  ArgParser p = benchLike();
  p.parse({"--iters", "0", "--max-bytes", "12Q"});
  try {
    p.getInt("--iters", 1, 100);
    ADD_FAILURE() << "0 accepted for a flag with minimum 1";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--iters must be between 1 and 100, got 0"), std::string::npos) << e.what();
  }
  try {
    p.getSize("--max-bytes");
    ADD_FAILURE() << "12Q accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--max-bytes"), std::string::npos) << e.what();
  }
  try {
    p.getChoice("--iters", {"a", "b"});
    ADD_FAILURE() << "choice accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("one of a, b"), std::string::npos) << e.what();
  }
}

TEST(ArgParser, StopsAtTheProgram) {
  ArgParser p("chorus launch", ArgParser::Positional::kStopThere);
  p.addValue("-n,--nproc", "N", "ranks");
  p.parse({"-n", "2", "./prog", "--its-own", "-n", "9"});
  EXPECT_EQ(p.getInt("--nproc", 1, 8), 2);
  std::vector<std::string> rest = {"./prog", "--its-own", "-n", "9"};
  EXPECT_EQ(p.rest(), rest);

  ArgParser q("chorus launch", ArgParser::Positional::kStopThere);
  q.addValue("-n,--nproc", "N", "ranks");
  q.parse({"--nproc=3", "--", "--weird-program-name", "x"});
  std::vector<std::string> rest2 = {"--weird-program-name", "x"};
  EXPECT_EQ(q.rest(), rest2);
  EXPECT_EQ(q.getInt("--nproc", 1, 8), 3);
}

TEST(ArgParser, FlagTableShowsDefaults) {
  std::string table = benchLike().flagTable();
  EXPECT_NE(table.find("--iters K"), std::string::npos) << table;
  EXPECT_NE(table.find("(default: 64M)"), std::string::npos) << table;
  EXPECT_NE(table.find("-n, --nproc N"), std::string::npos) << table;
}

}  // namespace
}  // namespace chorus::tools
