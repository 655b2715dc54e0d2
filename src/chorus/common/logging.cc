#include "chorus/common/logging.h"

#include <unistd.h>

#include <cstdio>
#include <mutex>

#include "chorus/common/env.h"

namespace chorus {

LogLevel logLevel() {
  static const LogLevel level = [] {
    std::string v = envString("CHORUS_LOG_LEVEL");
    if (v == "debug") return LogLevel::kDebug;
    if (v == "info") return LogLevel::kInfo;
    if (v == "error") return LogLevel::kError;
    return LogLevel::kWarn;
  }();
  return level;
}

void logLine(LogLevel level, const std::string& msg) {
  static const char* names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  std::fprintf(stderr, "chorus %s [pid %d] %s\n", names[static_cast<int>(level)], static_cast<int>(getpid()),
               msg.c_str());
  std::fflush(stderr);
}

}  // namespace chorus
