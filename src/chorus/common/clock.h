// Monotonic time and deadlines. Every blocking wait in chorus takes a Deadline.
#pragma once

#include <chrono>
#include <cstdint>

namespace chorus {

using Clock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;

class Deadline {
 public:
  // A deadline `timeout` from now. A negative or zero timeout has already expired.
  explicit Deadline(Millis timeout) : at_(Clock::now() + timeout) {}
  static Deadline never() { return Deadline(Clock::time_point::max()); }

  bool expired() const { return Clock::now() >= at_; }
  // Milliseconds left, clamped to [0, INT32_MAX] so it fits poll().
  int remainingMs() const;
  // Nanoseconds left, clamped at 0.
  int64_t remainingNs() const;
  Clock::time_point at() const { return at_; }
  // The earlier of this deadline and `d` from now.
  Deadline within(Clock::duration d) const {
    const auto now = Clock::now();
    return Deadline(at_ - now < d ? at_ : now + d);
  }

 private:
  explicit Deadline(Clock::time_point at) : at_(at) {}
  Clock::time_point at_;
};

inline int64_t nowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

}  // namespace chorus
