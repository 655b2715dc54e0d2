// Small POSIX socket helpers shared by the store and the tcp transport. Every call that can
// block takes a Deadline; every system call retries on EINTR; errors throw chorus errors
// (SystemError, TimeoutError) that name the address and the operation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "chorus/common/clock.h"

namespace chorus::comm::net {

// Owns a file descriptor; closes it on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd();
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() { int f = fd_; fd_ = -1; return f; }
  explicit operator bool() const { return fd_ >= 0; }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

struct Endpoint {
  std::string host;  // numeric IPv4/IPv6 or a name to resolve
  int port = 0;
  std::string str() const;  // "host:port" ("[v6]:port")
};

// Listens on host:port (port 0: ephemeral). host "" or "0.0.0.0" binds every interface; the
// caller decides (the store only does so when asked). Returns the fd; *boundPort gets the port.
Fd listenTcp(const std::string& host, int port, int* boundPort, int backlog = 128);
// Accepts one connection, waiting until the deadline. Returns an invalid Fd on timeout.
Fd acceptTcp(int listenFd, const Deadline& deadline, std::string* peerAddr = nullptr);
// Connects, retrying refused/unreachable until the deadline (the peer may not listen yet).
// With retry = false, one attempt per address (a restarted rank must not wait on a dead
// one, whose port refuses at once): SystemError with the last error if none connects,
// TimeoutError if the deadline passes first.
Fd connectTcp(const Endpoint& ep, const Deadline& deadline, bool retry = true);

void setNonBlocking(int fd, bool on);
void setNoDelay(int fd);
void setBufferSizes(int fd, int bytes);
// Local / remote numeric address of a connected socket ("127.0.0.1").
std::string localAddress(int fd);
std::string peerAddress(int fd);

// Blocking-style full reads/writes on a socket of either mode, bounded by the deadline.
// readFull throws PeerError-free SystemError/TimeoutError; a closed connection throws
// Error("connection closed by <peer>").
void writeFull(int fd, const void* data, size_t n, const Deadline& deadline);
void readFull(int fd, void* data, size_t n, const Deadline& deadline);

// Waits for fd to become readable (events=POLLIN) or writable (POLLOUT). False on timeout.
bool pollFd(int fd, short events, const Deadline& deadline);

}  // namespace chorus::comm::net
