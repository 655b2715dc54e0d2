// The Chrome trace writer: exact event fields and microsecond formatting, spans recorded from
// two threads at once, ranks' bodies merged into one file that Python's json module reads
// back (and checks: every X event's pid, tid and lane name agree with the metadata), the
// atomic write, and errors that name the path.
#include "chorus/train/trace.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "chorus/common/error.h"

namespace chorus::train {
namespace {

namespace fs = std::filesystem;
using Clock = Tracer::Clock;
using std::chrono::microseconds;
using std::chrono::nanoseconds;

const char* kPython = "/usr/bin/python3";

class TraceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("chorus-trace-test-" + std::to_string(getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  // Runs `script` with /usr/bin/python3 on `trace`; its exit status (0: all checks passed).
  int runPython(const std::string& script, const fs::path& trace, bool quiet = false) {
    fs::path py = dir_ / "check.py";
    std::ofstream(py) << script;
    std::string cmd = std::string(kPython) + " " + py.string() + " " + trace.string() + (quiet ? " 2>/dev/null" : "");
    return std::system(cmd.c_str());
  }
  fs::path dir_;
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST_F(TraceTest, EventFieldsAndMicroseconds) {
  Clock::time_point origin = Clock::now();
  Tracer t(3, origin);
  t.span("compute", "forward", origin + nanoseconds(1500), origin + nanoseconds(4000));
  t.span("comm", "allreduce \"b0\"", origin + microseconds(2), origin + nanoseconds(2001), "\"bytes\": 4096");
  t.span("compute", "backward", origin + nanoseconds(7'000'123'456), origin + nanoseconds(7'000'123'457),
         "{\"step\": 1}");
  EXPECT_EQ(t.size(), 3u);
  std::string body = t.eventsJson();
  EXPECT_NE(body.find("{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":3,\"tid\":0,\"args\":{\"name\":\"rank 3\"}}"),
            std::string::npos)
      << body;
  EXPECT_NE(body.find("{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":3,\"tid\":0,\"args\":{\"name\":\"compute\"}}"),
            std::string::npos)
      << body;
  EXPECT_NE(body.find("{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":3,\"tid\":1,\"args\":{\"name\":\"comm\"}}"),
            std::string::npos)
      << body;
  EXPECT_NE(body.find("{\"name\":\"forward\",\"cat\":\"compute\",\"ph\":\"X\",\"pid\":3,\"tid\":0,\"ts\":1.5,"
                      "\"dur\":2.5,\"args\":{}}"),
            std::string::npos)
      << body;
  EXPECT_NE(body.find("{\"name\":\"allreduce \\\"b0\\\"\",\"cat\":\"comm\",\"ph\":\"X\",\"pid\":3,\"tid\":1,"
                      "\"ts\":2,\"dur\":0.001,\"args\":{\"bytes\": 4096}}"),
            std::string::npos)
      << body;
  EXPECT_NE(body.find("\"ts\":7000123.456,\"dur\":0.001,\"args\":{\"step\": 1}}"), std::string::npos) << body;
}

TEST_F(TraceTest, DisabledRecordsNothing) {
  Clock::time_point origin = Clock::now();
  Tracer t(0, origin);
  t.setEnabled(false);
  EXPECT_FALSE(t.enabled());
  t.span("compute", "forward", origin, origin + microseconds(5));
  EXPECT_EQ(t.size(), 0u);
  EXPECT_EQ(t.eventsJson().find("\"ph\":\"X\""), std::string::npos);
  t.setEnabled(true);
  t.span("compute", "forward", origin, origin + microseconds(5));
  EXPECT_EQ(t.size(), 1u);
}

// Two ranks, each with a compute thread and a comm thread recording at the same time; the
// merged file must be JSON whose events agree with their metadata.
TEST_F(TraceTest, SpansFromTwoThreadsMergeIntoValidChromeTrace) {
  if (access(kPython, X_OK) != 0) GTEST_SKIP() << kPython << " is not here to check the JSON";
  constexpr int kSpans = 500;
  Clock::time_point origin = Clock::now();
  std::vector<std::string> bodies;
  for (int rank = 0; rank < 2; ++rank) {
    Tracer t(rank, origin);
    auto record = [&](const std::string& lane) {
      for (int i = 0; i < kSpans; ++i) {
        Clock::time_point start = Clock::now();
        t.span(lane, lane == "comm" ? "allreduce" : "step", start, start + nanoseconds(1000 + i),
               "\"i\": " + std::to_string(i));
      }
    };
    std::thread comm(record, "comm");
    record("compute");
    comm.join();
    EXPECT_EQ(t.size(), 2u * kSpans);
    bodies.push_back(t.eventsJson());
  }
  bodies.push_back("");  // an empty body is skipped, not a stray comma
  fs::path path = dir_ / "out" / "trace.json";
  writeChromeTrace(path.string(), bodies);

  const std::string script = R"PY(
import json, sys
doc = json.load(open(sys.argv[1]))
assert doc["displayTimeUnit"] == "ms", doc.keys()
ev = doc["traceEvents"]
procs = {e["pid"]: e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "process_name"}
assert procs == {0: "rank 0", 1: "rank 1"}, procs
lanes = {(e["pid"], e["tid"]): e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "thread_name"}
assert sorted(lanes.values()) == ["comm", "comm", "compute", "compute"], lanes
xs = [e for e in ev if e["ph"] == "X"]
assert len(xs) == 2 * 2 * N, len(xs)
seen = {}
for e in xs:
    assert set(e) == {"name", "cat", "ph", "pid", "tid", "ts", "dur", "args"}, e
    assert lanes[(e["pid"], e["tid"])] == e["cat"], e
    assert e["name"] == ("allreduce" if e["cat"] == "comm" else "step"), e
    assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0, e
    assert abs(e["dur"] - (1 + e["args"]["i"] / 1000.0)) < 1e-9, e
    seen.setdefault((e["pid"], e["cat"]), []).append(e["args"]["i"])
for key, idx in seen.items():
    assert idx == list(range(N)), key  # each thread's spans in its own order
assert len(seen) == 4, seen.keys()
)PY";
  EXPECT_EQ(runPython("N = " + std::to_string(kSpans) + "\n" + script, path), 0) << slurp(path).substr(0, 2000);
  // Only the trace is left in its folder: the temporary file was renamed.
  int files = 0;
  for (const auto& entry : fs::directory_iterator(path.parent_path())) {
    (void)entry;
    ++files;
  }
  EXPECT_EQ(files, 1);
}

TEST_F(TraceTest, WriteReplacesAnExistingFileAndTheParserRejectsGarbage) {
  if (access(kPython, X_OK) != 0) GTEST_SKIP() << kPython << " is not here to check the JSON";
  fs::path path = dir_ / "trace.json";
  std::ofstream(path) << "not json at all";
  const std::string check = "import json, sys\njson.load(open(sys.argv[1]))\n";
  EXPECT_NE(runPython(check, path, /*quiet=*/true), 0);  // the checker can fail
  writeChromeTrace(path.string(), {});
  EXPECT_EQ(slurp(path), "{\"traceEvents\":[],\"displayTimeUnit\":\"ms\"}\n");
  EXPECT_EQ(runPython(check, path), 0);
}

TEST_F(TraceTest, ErrorsNameThePath) {
  fs::path blocker = dir_ / "file";
  std::ofstream(blocker) << "x";
  std::string bad = (blocker / "trace.json").string();
  try {
    writeChromeTrace(bad, {"{}"});
    FAIL() << "expected chorus::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace chorus::train
