#include "chorus/common/clock.h"

#include <climits>

namespace chorus {

int Deadline::remainingMs() const {
  if (at_ == Clock::time_point::max()) return INT_MAX;
  auto left = std::chrono::duration_cast<Millis>(at_ - Clock::now()).count();
  if (left <= 0) return 0;
  return left > INT_MAX ? INT_MAX : static_cast<int>(left);
}

int64_t Deadline::remainingNs() const {
  if (at_ == Clock::time_point::max()) return INT64_MAX;
  auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(at_ - Clock::now()).count();
  return left > 0 ? left : 0;
}

}  // namespace chorus
