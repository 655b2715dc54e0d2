// Minimal leveled logging to stderr, one line per call, thread-safe.
#pragma once

#include <string>

#include "chorus/common/error.h"

namespace chorus {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// Current level, read once from CHORUS_LOG_LEVEL.
LogLevel logLevel();
void logLine(LogLevel level, const std::string& msg);

}  // namespace chorus

#define CHORUS_LOG(level, ...)                                                  \
  do {                                                                          \
    if (::chorus::LogLevel::level >= ::chorus::logLevel())                      \
      ::chorus::logLine(::chorus::LogLevel::level, ::chorus::str(__VA_ARGS__)); \
  } while (0)
#define CHORUS_DEBUG(...) CHORUS_LOG(kDebug, __VA_ARGS__)
#define CHORUS_INFO(...) CHORUS_LOG(kInfo, __VA_ARGS__)
#define CHORUS_WARN(...) CHORUS_LOG(kWarn, __VA_ARGS__)
#define CHORUS_ERROR(...) CHORUS_LOG(kError, __VA_ARGS__)
