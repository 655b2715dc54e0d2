// Chrome trace (the JSON that Perfetto and chrome://tracing open): complete events ("ph":
// "X") with a process per rank and a thread per lane ("compute", "comm"), so the overlap of
// all-reduce with the backward pass can be seen. Torch-free.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace chorus::train {

class Tracer {
 public:
  using Clock = std::chrono::steady_clock;
  // Times are written relative to `origin` (make it the same instant on every rank, e.g.
  // right after a barrier) in microseconds.
  Tracer(int rank, Clock::time_point origin);
  bool enabled() const { return enabled_; }
  void setEnabled(bool on) { enabled_ = on; }
  // Thread-safe. lane: "compute" or "comm" (any name works; each gets its own track, its tid
  // the lane's index in order of first use). argsJson: the event's "args", either a JSON
  // object ("{...}") or its members without braces ("\"bytes\": 4096"); empty for none.
  // Does nothing while disabled.
  void span(const std::string& lane, const std::string& name, Clock::time_point start, Clock::time_point end,
            const std::string& argsJson = "");
  // The events as a JSON array body (comma-separated objects, no brackets), including the
  // process_name/thread_name metadata events, so ranks' bodies can be concatenated.
  std::string eventsJson() const;
  size_t size() const;  // the spans recorded so far (metadata events not counted)

 private:
  int rank_;
  Clock::time_point origin_;
  std::atomic<bool> enabled_{true};  // atomic: a rank may switch tracing while its comm thread records
  mutable std::mutex mu_;
  std::vector<std::string> lanes_;
  std::vector<std::string> events_;
};

// Writes {"traceEvents":[body0,body1,...],"displayTimeUnit":"ms"} to path atomically (a
// temporary file in the same folder, renamed over path), creating the folder; empty bodies
// are skipped. Throws chorus::Error naming the path.
void writeChromeTrace(const std::string& path, const std::vector<std::string>& bodies);

}  // namespace chorus::train
