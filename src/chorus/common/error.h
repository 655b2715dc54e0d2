// chorus error hierarchy. Every recoverable failure throws a subclass of chorus::Error whose
// message names the rank, the peer, the operation and a hint of what to do. Invariants use
// CHORUS_CHECK, which adds file:line. Library code never exits the process.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <sstream>

namespace chorus {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// A blocking call ran past its deadline.
class TimeoutError : public Error {
 public:
  using Error::Error;
};

// A peer died, closed its connection, or sent something it must not have.
class PeerError : public Error {
 public:
  PeerError(const std::string& msg, int peer) : Error(msg), peer_(peer) {}
  int peer() const { return peer_; }

 private:
  int peer_;
};

// A caller passed something impossible (bad count, unknown dtype, rank out of range).
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

// Ranks disagree about a collective: different op, count or dtype for the same tag.
class MismatchError : public Error {
 public:
  using Error::Error;
};

// A connection did not prove it holds the job's secret.
class AuthError : public Error {
 public:
  using Error::Error;
};

// A configuration value or environment variable is wrong.
class ConfigError : public Error {
 public:
  using Error::Error;
};

// Training diverged: the loss or the gradient the optimizer would apply became inf or NaN.
// Every rank of the job throws it at the same step; the message names the step, the ranks,
// the last good checkpoint and what to change. rank() is the first rank whose loss was not
// finite, or -1 when only the averaged gradient was.
class DivergenceError : public Error {
 public:
  DivergenceError(const std::string& msg, int64_t step, int rank) : Error(msg), step_(step), rank_(rank) {}
  int64_t step() const { return step_; }
  int rank() const { return rank_; }

 private:
  int64_t step_;
  int rank_;
};

// A process ran out of memory: an allocation failed (often under a limit set with ulimit -v,
// prlimit --as or a cgroup). The message names the rank, its peak resident memory, the model's
// bytes per rank and what to change.
class OutOfMemoryError : public Error {
 public:
  using Error::Error;
};

// A system call failed with errno.
class SystemError : public Error {
 public:
  SystemError(const std::string& what, int err);
  int code() const { return code_; }

 private:
  int code_;
};

// Call inside a catch block: rethrows the exception being handled with `context` in front of
// its message, keeping its chorus type (and a PeerError's peer, a SystemError's code). Other
// std::exceptions become an Error with the context; std::bad_alloc and anything not derived
// from std::exception pass through unchanged.
[[noreturn]] void rethrowWithContext(const std::string& context);

namespace detail {
[[noreturn]] void throwCheck(const char* file, int line, const char* cond, const std::string& msg);

inline void streamInto(std::ostringstream&) {}
template <typename T, typename... Rest>
void streamInto(std::ostringstream& os, const T& v, const Rest&... rest) {
  os << v;
  streamInto(os, rest...);
}
}  // namespace detail

// Concatenates its arguments with operator<<.
template <typename... Args>
std::string str(const Args&... args) {
  std::ostringstream os;
  detail::streamInto(os, args...);
  return os.str();
}

}  // namespace chorus

// CHORUS_CHECK(cond, parts...) throws chorus::Error("file:line: check 'cond' failed: parts").
#define CHORUS_CHECK(cond, ...)                                                          \
  do {                                                                                   \
    if (!(cond)) ::chorus::detail::throwCheck(__FILE__, __LINE__, #cond,                 \
                                              ::chorus::str("" __VA_OPT__(, ) __VA_ARGS__)); \
  } while (0)
