// Chrome trace events. Each rank records complete ("X") events into its own Tracer, from the
// compute thread and the communication thread at once; rank 0 gathers every rank's
// eventsJson() body and writes one file that Perfetto / chrome://tracing opens, with one
// process per rank ("rank K") and one thread per lane.
#include "chorus/train/trace.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "chorus/common/error.h"
#include "chorus/train/metrics.h"

namespace chorus::train {

namespace {

// Microseconds from nanoseconds, with up to 3 decimals and no trailing zeros: "12.5", "-3",
// "1000.001". Integer arithmetic, so large times keep their nanoseconds exactly.
std::string micros(int64_t ns) {
  bool negative = ns < 0;
  uint64_t a = negative ? 0 - static_cast<uint64_t>(ns) : static_cast<uint64_t>(ns);
  std::string out = (negative ? "-" : "") + std::to_string(a / 1000);
  uint64_t frac = a % 1000;
  if (frac != 0) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), ".%03u", static_cast<unsigned>(frac));
    std::string f = buf;
    while (f.back() == '0') f.pop_back();
    out += f;
  }
  return out;
}

std::string metadataEvent(const char* name, int pid, size_t tid, const std::string& argsJson) {
  return str("{\"name\":\"", name, "\",\"ph\":\"M\",\"pid\":", pid, ",\"tid\":", tid, ",\"args\":", argsJson, "}");
}

}  // namespace

Tracer::Tracer(int rank, Clock::time_point origin) : rank_(rank), origin_(origin) {}

void Tracer::span(const std::string& lane, const std::string& name, Clock::time_point start, Clock::time_point end,
                  const std::string& argsJson) {
  if (!enabled_) return;
  using std::chrono::duration_cast;
  using std::chrono::nanoseconds;
  int64_t tsNs = duration_cast<nanoseconds>(start - origin_).count();
  int64_t durNs = std::max<int64_t>(0, duration_cast<nanoseconds>(end - start).count());
  std::string args = argsJson.empty() ? "{}" : (argsJson.front() == '{' ? argsJson : "{" + argsJson + "}");

  std::lock_guard<std::mutex> lock(mu_);
  size_t tid = 0;
  while (tid < lanes_.size() && lanes_[tid] != lane) ++tid;
  if (tid == lanes_.size()) lanes_.push_back(lane);
  events_.push_back(str("{\"name\":\"", jsonEscape(name), "\",\"cat\":\"", jsonEscape(lane),
                        "\",\"ph\":\"X\",\"pid\":", rank_, ",\"tid\":", tid, ",\"ts\":", micros(tsNs),
                        ",\"dur\":", micros(durNs), ",\"args\":", args, "}"));
}

std::string Tracer::eventsJson() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out = metadataEvent("process_name", rank_, 0, str("{\"name\":\"rank ", rank_, "\"}"));
  out += ",";
  out += metadataEvent("process_sort_index", rank_, 0, str("{\"sort_index\":", rank_, "}"));
  for (size_t i = 0; i < lanes_.size(); ++i) {
    out += ",";
    out += metadataEvent("thread_name", rank_, i, "{\"name\":\"" + jsonEscape(lanes_[i]) + "\"}");
    out += ",";
    out += metadataEvent("thread_sort_index", rank_, i, str("{\"sort_index\":", i, "}"));
  }
  for (const std::string& e : events_) {
    out += ",";
    out += e;
  }
  return out;
}

size_t Tracer::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return events_.size();
}

void writeChromeTrace(const std::string& path, const std::vector<std::string>& bodies) {
  std::filesystem::path target(path);
  if (target.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(target.parent_path(), ec);
    if (ec) {
      throw Error(str("trace ", path, ": cannot create the folder ", target.parent_path().string(), ": ",
                      ec.message(), "; choose an output.dir you can write to"));
    }
  }
  std::string text = "{\"traceEvents\":[";
  bool first = true;
  for (const std::string& body : bodies) {
    if (body.empty()) continue;
    if (!first) text += ",\n";
    text += body;
    first = false;
  }
  text += "],\"displayTimeUnit\":\"ms\"}\n";

  // Written next to the target and renamed over it, so a reader never sees half a file.
  std::string tmp = str(path, ".tmp.", getpid());
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) {
    int err = errno;
    throw Error(str("trace ", path, ": cannot create ", tmp, ": ", std::strerror(err),
                    "; choose an output.dir you can write to"));
  }
  bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  ok = std::fflush(f) == 0 && ok;
  int err = errno;
  ok = std::fclose(f) == 0 && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    throw Error(str("trace ", path, ": write failed: ", std::strerror(err), "; is the disk full?"));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    err = errno;
    std::remove(tmp.c_str());
    throw Error(str("trace ", path, ": cannot rename ", tmp, " to it: ", std::strerror(err)));
  }
}

}  // namespace chorus::train
