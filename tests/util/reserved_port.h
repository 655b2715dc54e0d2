// A TCP port on 127.0.0.1 that no one else is handed while this object lives, for tests whose
// server must listen on a port chosen before it starts (a store hosted by a forked rank, a
// server that starts late) or that need a port nobody listens on.
//
// Binding port 0 and closing the socket to "find a free port" races every other test: the
// kernel may hand that port to the next bind(0) or connect() before our server binds it. The
// socket here stays bound (with SO_REUSEADDR, never listening) instead. Linux then leaves the
// port out when it picks ephemeral ports for others, while a listener that sets SO_REUSEADDR
// too (net::listenTcp, hence every chorus server) may still bind it, because no socket listens
// there yet; until one does, a connect() to it is refused, as to a closed port.
//
// Header-only, so any test can use it whatever library it links. Not copyable.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "chorus/common/error.h"

namespace chorus::test {

class ReservedPort {
 public:
  ReservedPort() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) throw SystemError("ReservedPort: socket", errno);
    int one = 1;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      const int err = errno;
      ::close(fd_);
      throw SystemError("ReservedPort: bind 127.0.0.1:0", err);
    }
    port_ = ntohs(a.sin_port);
  }
  ~ReservedPort() { ::close(fd_); }
  ReservedPort(const ReservedPort&) = delete;
  ReservedPort& operator=(const ReservedPort&) = delete;

  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

}  // namespace chorus::test
