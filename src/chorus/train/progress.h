// The progress display on rank 0: a bar redrawn in place on a terminal
//   epoch 2/5 [=========>          ] 230/469  loss 0.4123  14.2k samples/s  ETA 0:41
// or, when the output is not a terminal, a plain line every `every` steps and at the end
// of each epoch. Torch-free.
#pragma once

#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>

namespace chorus::train {

enum class ProgressMode { kBar, kLines, kNone };

// "auto" picks kBar when fd is a terminal (isatty), else kLines; "bar", "lines", "none".
ProgressMode progressModeFor(const std::string& setting, int fd);

// Not thread-safe: one thread (rank 0's training loop) calls it.
class ProgressBar {
 public:
  ProgressBar(std::ostream& out, ProgressMode mode, int64_t epochs, int64_t stepsPerEpoch, int64_t every);
  // One step done: epoch (0-based), step within the epoch (1-based, after the step), the
  // step's loss, the recent throughput, and the seconds left in the whole run.
  // kBar redraws the line in place ('\r', then clears the rest of the line) at most 10 times
  // a second and always on the epoch's last step; kLines prints a line when step is a
  // multiple of `every` (every <= 0: never) and on the epoch's last step; kNone prints nothing.
  void update(int64_t epoch, int64_t step, double loss, double samplesPerSec, double etaSeconds);
  // Ends the epoch's bar line (a newline on a terminal) and prints `summary` on its own line
  // (in every mode, kNone included; an empty summary prints nothing).
  void endEpoch(const std::string& summary);
  // The bar line itself, without control characters (tests).
  std::string render(int64_t epoch, int64_t step, double loss, double samplesPerSec, double etaSeconds) const;

 private:
  std::ostream& out_;
  ProgressMode mode_;
  int64_t epochs_, stepsPerEpoch_, every_;
  bool lineOpen_ = false;
  bool drawn_ = false;                               // kBar: drawn at least once
  std::chrono::steady_clock::time_point lastDraw_;   // kBar: when it was last drawn
};

// "0:41", "1:02:03" (rounded to the second); "?" for a negative or non-finite value.
std::string formatDuration(double seconds);
// "950", "14.2k", "1.3M", "2.0G": whole numbers below 1000, else one decimal of the largest
// unit that keeps it below 1000; "?" for a non-finite value.
std::string formatCount(double v);

}  // namespace chorus::train
