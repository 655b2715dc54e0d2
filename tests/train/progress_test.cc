// The progress display: the line format, how many lines each mode prints for N steps, the
// bar's throttled in-place redraws, and formatDuration / formatCount.
#include "chorus/train/progress.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <sstream>
#include <string>

#include "chorus/common/error.h"

namespace chorus::train {
namespace {

size_t countOf(const std::string& s, char c) { return static_cast<size_t>(std::count(s.begin(), s.end(), c)); }

TEST(Progress, RenderMatchesTheDocumentedFormat) {
  std::ostringstream out;
  ProgressBar bar(out, ProgressMode::kBar, 5, 469, 20);
  EXPECT_EQ(bar.render(1, 230, 0.41234, 14234.0, 41.2),
            "epoch 2/5 [=========>          ] 230/469  loss 0.4123  14.2k samples/s  ETA 0:41");
  // The step is padded to the total's width; a full bar has no head.
  EXPECT_EQ(bar.render(0, 5, 2.3, 950, 3723),
            "epoch 1/5 [>                   ]   5/469  loss 2.3000  950 samples/s  ETA 1:02:03");
  EXPECT_EQ(bar.render(4, 469, 0.25, 1.3e6, 0),
            "epoch 5/5 [====================] 469/469  loss 0.2500  1.3M samples/s  ETA 0:00");
  std::string line = bar.render(2, 100, std::numeric_limits<double>::quiet_NaN(), 1, -1);
  for (char c : line) EXPECT_GE(static_cast<unsigned char>(c), 0x20) << line;
  EXPECT_EQ(out.str(), "");  // render draws nothing
}

TEST(Progress, RenderWithoutKnownStepCount) {
  std::ostringstream out;
  ProgressBar bar(out, ProgressMode::kLines, 2, 0, 10);
  EXPECT_EQ(bar.render(0, 7, 1.0, 100, 5), "epoch 1/2 step 7  loss 1.0000  100 samples/s  ETA 0:05");
}

TEST(Progress, LinesModePrintsEveryNStepsAndTheLast) {
  struct Case {
    int64_t steps, every, lines;
  };
  for (Case c : {Case{100, 10, 10}, Case{101, 10, 11}, Case{7, 3, 3}, Case{5, 1, 5}, Case{5, 50, 1}, Case{5, 0, 1}}) {
    std::ostringstream out;
    ProgressBar bar(out, ProgressMode::kLines, 2, c.steps, c.every);
    for (int64_t epoch = 0; epoch < 2; ++epoch) {
      for (int64_t s = 1; s <= c.steps; ++s) bar.update(epoch, s, 0.5, 1000, 10);
      bar.endEpoch("epoch done");
    }
    std::string text = out.str();
    EXPECT_EQ(countOf(text, '\n'), static_cast<size_t>(2 * (c.lines + 1)))
        << "steps " << c.steps << " every " << c.every << ":\n" << text;
    EXPECT_EQ(countOf(text, '\r'), 0u);
    EXPECT_EQ(text.find('\x1b'), std::string::npos);
    // The epoch's last step is always there, and the summary follows it.
    std::string last = bar.render(1, c.steps, 0.5, 1000, 10) + "\nepoch done\n";
    EXPECT_EQ(text.substr(text.size() - last.size()), last);
  }
}

TEST(Progress, NoneModePrintsOnlySummaries) {
  std::ostringstream out;
  ProgressBar bar(out, ProgressMode::kNone, 1, 50, 1);
  for (int64_t s = 1; s <= 50; ++s) bar.update(0, s, 0.5, 1000, 10);
  EXPECT_EQ(out.str(), "");
  bar.endEpoch("epoch 1: test_acc 0.9");
  EXPECT_EQ(out.str(), "epoch 1: test_acc 0.9\n");
  bar.endEpoch("");
  EXPECT_EQ(out.str(), "epoch 1: test_acc 0.9\n");
}

TEST(Progress, BarRedrawsInPlaceThrottledAndAlwaysOnTheLastStep) {
  std::ostringstream out;
  const int64_t steps = 2000;
  ProgressBar bar(out, ProgressMode::kBar, 1, steps, 10);
  for (int64_t s = 1; s <= steps; ++s) bar.update(0, s, 0.5, 1000, 10);
  std::string text = out.str();
  // 2000 updates in a few milliseconds: the first and the last draw, not every one.
  size_t draws = countOf(text, '\r');
  EXPECT_GE(draws, 2u);
  EXPECT_LT(draws, 20u) << "the bar was not throttled";
  EXPECT_EQ(countOf(text, '\n'), 0u);  // the line stays open until endEpoch
  std::string lastDraw = "\r" + bar.render(0, steps, 0.5, 1000, 10) + "\x1b[K";
  ASSERT_GE(text.size(), lastDraw.size());
  EXPECT_EQ(text.substr(text.size() - lastDraw.size()), lastDraw);
  EXPECT_EQ(text.rfind("\r" + bar.render(0, 1, 0.5, 1000, 10) + "\x1b[K", 0), 0u);
  bar.endEpoch("summary");
  EXPECT_EQ(out.str(), text + "\nsummary\n");
}

TEST(Progress, ModeForSetting) {
  EXPECT_EQ(progressModeFor("bar", -1), ProgressMode::kBar);
  EXPECT_EQ(progressModeFor("lines", 1), ProgressMode::kLines);
  EXPECT_EQ(progressModeFor("none", 1), ProgressMode::kNone);
  // A pipe is not a terminal.
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  EXPECT_EQ(progressModeFor("auto", fds[1]), ProgressMode::kLines);
  close(fds[0]);
  close(fds[1]);
  try {
    progressModeFor("fancy", 1);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("fancy"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("auto, bar, lines, none"), std::string::npos) << e.what();
  }
}

TEST(FormatDuration, Cases) {
  EXPECT_EQ(formatDuration(0), "0:00");
  EXPECT_EQ(formatDuration(0.4), "0:00");
  EXPECT_EQ(formatDuration(41), "0:41");
  EXPECT_EQ(formatDuration(59.6), "1:00");
  EXPECT_EQ(formatDuration(62), "1:02");
  EXPECT_EQ(formatDuration(3599), "59:59");
  EXPECT_EQ(formatDuration(3600), "1:00:00");
  EXPECT_EQ(formatDuration(3723), "1:02:03");
  EXPECT_EQ(formatDuration(100 * 3600 + 5), "100:00:05");
  EXPECT_EQ(formatDuration(-1), "?");
  EXPECT_EQ(formatDuration(std::numeric_limits<double>::infinity()), "?");
  EXPECT_EQ(formatDuration(std::numeric_limits<double>::quiet_NaN()), "?");
}

TEST(FormatCount, Cases) {
  EXPECT_EQ(formatCount(0), "0");
  EXPECT_EQ(formatCount(950), "950");
  EXPECT_EQ(formatCount(999.4), "999");
  EXPECT_EQ(formatCount(999.6), "1.0k");
  EXPECT_EQ(formatCount(1000), "1.0k");
  EXPECT_EQ(formatCount(14234), "14.2k");
  EXPECT_EQ(formatCount(142345), "142.3k");
  EXPECT_EQ(formatCount(999949), "999.9k");
  EXPECT_EQ(formatCount(999960), "1.0M");
  EXPECT_EQ(formatCount(1.3e6), "1.3M");
  EXPECT_EQ(formatCount(2e9), "2.0G");
  EXPECT_EQ(formatCount(-14234), "-14.2k");
  EXPECT_EQ(formatCount(std::numeric_limits<double>::quiet_NaN()), "?");
}

}  // namespace
}  // namespace chorus::train
