// The rank-0 progress display: one line format (render), drawn in place on a terminal
// (throttled, so a fast loop does not spend its time writing to the tty) or printed as plain
// lines for logs.
#include "chorus/train/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "chorus/common/error.h"

namespace chorus::train {

namespace {

constexpr int kBarWidth = 20;
constexpr auto kMinRedraw = std::chrono::milliseconds(100);  // at most ~10 redraws a second
constexpr const char* kClearToEol = "\x1b[K";

int digits(int64_t v) {
  int n = 1;
  while (v >= 10) {
    v /= 10;
    ++n;
  }
  return n;
}

}  // namespace

ProgressMode progressModeFor(const std::string& setting, int fd) {
  if (setting == "auto") return isatty(fd) ? ProgressMode::kBar : ProgressMode::kLines;
  if (setting == "bar") return ProgressMode::kBar;
  if (setting == "lines") return ProgressMode::kLines;
  if (setting == "none") return ProgressMode::kNone;
  throw ConfigError(str("output.progress = \"", setting, "\" is not allowed; the choices are: auto, bar, lines, none"));
}

ProgressBar::ProgressBar(std::ostream& out, ProgressMode mode, int64_t epochs, int64_t stepsPerEpoch, int64_t every)
    : out_(out), mode_(mode), epochs_(epochs), stepsPerEpoch_(stepsPerEpoch), every_(every) {}

std::string ProgressBar::render(int64_t epoch, int64_t step, double loss, double samplesPerSec,
                                double etaSeconds) const {
  std::string line = str("epoch ", epoch + 1, "/", epochs_, " ");
  if (stepsPerEpoch_ > 0) {
    // The bar: '=' for the part done, '>' at its head, spaces for the rest.
    int64_t clamped = std::max<int64_t>(0, std::min(step, stepsPerEpoch_));
    int filled = static_cast<int>(clamped * kBarWidth / stepsPerEpoch_);
    std::string bar(static_cast<size_t>(filled), '=');
    if (filled < kBarWidth) {
      bar += '>';
      bar.append(static_cast<size_t>(kBarWidth - filled - 1), ' ');
    }
    // The step right-aligned to the total's width, so the line does not jitter.
    std::string stepText = std::to_string(step);
    int pad = digits(stepsPerEpoch_) - static_cast<int>(stepText.size());
    line += "[" + bar + "] " + std::string(static_cast<size_t>(std::max(0, pad)), ' ') + stepText + "/" +
            std::to_string(stepsPerEpoch_);
  } else {
    line += "step " + std::to_string(step);
  }
  char lossText[32];
  std::snprintf(lossText, sizeof(lossText), "%.4f", loss);
  line += str("  loss ", lossText, "  ", formatCount(samplesPerSec), " samples/s  ETA ", formatDuration(etaSeconds));
  return line;
}

void ProgressBar::update(int64_t epoch, int64_t step, double loss, double samplesPerSec, double etaSeconds) {
  bool last = stepsPerEpoch_ > 0 && step >= stepsPerEpoch_;
  switch (mode_) {
    case ProgressMode::kNone:
      return;
    case ProgressMode::kLines:
      if (last || (every_ > 0 && step % every_ == 0)) {
        out_ << render(epoch, step, loss, samplesPerSec, etaSeconds) << '\n';
        out_.flush();
      }
      return;
    case ProgressMode::kBar: {
      auto now = std::chrono::steady_clock::now();
      if (!last && drawn_ && now - lastDraw_ < kMinRedraw) return;
      out_ << '\r' << render(epoch, step, loss, samplesPerSec, etaSeconds) << kClearToEol;
      out_.flush();
      drawn_ = true;
      lastDraw_ = now;
      lineOpen_ = true;
      return;
    }
  }
}

void ProgressBar::endEpoch(const std::string& summary) {
  if (lineOpen_) {
    out_ << '\n';
    lineOpen_ = false;
  }
  // The next epoch's first step draws at once.
  drawn_ = false;
  if (!summary.empty()) out_ << summary << '\n';
  out_.flush();
}

std::string formatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  auto total = static_cast<int64_t>(std::llround(seconds));
  int64_t h = total / 3600, m = (total / 60) % 60, s = total % 60;
  char buf[48];
  if (h > 0) {
    std::snprintf(buf, sizeof(buf), "%lld:%02lld:%02lld", static_cast<long long>(h), static_cast<long long>(m),
                  static_cast<long long>(s));
  } else {
    std::snprintf(buf, sizeof(buf), "%lld:%02lld", static_cast<long long>(m), static_cast<long long>(s));
  }
  return buf;
}

std::string formatCount(double v) {
  if (!std::isfinite(v)) return "?";
  const char* sign = v < 0 ? "-" : "";
  double a = std::fabs(v);
  char buf[48];
  if (std::round(a) < 1000) {
    std::snprintf(buf, sizeof(buf), "%s%.0f", sign, a);
    return buf;
  }
  // The first unit whose value, rounded to one decimal, stays below 1000 (999.96k is 1.0M).
  static const char kUnits[] = {'k', 'M', 'G', 'T', 'P'};
  double scaled = a;
  for (size_t i = 0; i < sizeof(kUnits); ++i) {
    scaled /= 1000;
    if (std::round(scaled * 10) < 10000 || i + 1 == sizeof(kUnits)) {
      std::snprintf(buf, sizeof(buf), "%s%.1f%c", sign, scaled, kUnits[i]);
      return buf;
    }
  }
  return "?";
}

}  // namespace chorus::train
