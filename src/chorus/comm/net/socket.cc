// POSIX socket helpers. Reads and writes use MSG_DONTWAIT and poll(), so they honour the
// deadline whether the socket is in blocking or non-blocking mode, and MSG_NOSIGNAL, so a
// peer that vanished turns into an error instead of SIGPIPE. Every call retries on EINTR.
#include "chorus/comm/net/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "chorus/common/error.h"

namespace chorus::comm::net {

Fd::~Fd() { reset(); }

Fd& Fd::operator=(Fd&& o) noexcept {
  if (this != &o) reset(o.release());
  return *this;
}

void Fd::reset(int fd) {
  if (fd_ >= 0 && fd_ != fd) {
    // close() must not be retried on EINTR on Linux: the descriptor is already released.
    ::close(fd_);
  }
  fd_ = fd;
}

std::string Endpoint::str() const {
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

namespace {

struct AddrInfoList {
  addrinfo* head = nullptr;
  ~AddrInfoList() {
    if (head != nullptr) freeaddrinfo(head);
  }
};

// Resolves host:port; returns the getaddrinfo status (0 on success).
int resolve(const char* host, int port, int flags, AddrInfoList* out) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = flags | AI_NUMERICSERV;
  std::string service = std::to_string(port);
  return getaddrinfo(host, service.c_str(), &hints, &out->head);
}

std::string numericHost(const sockaddr* sa, socklen_t len, int* port = nullptr) {
  char host[NI_MAXHOST];
  char serv[NI_MAXSERV];
  if (getnameinfo(sa, len, host, sizeof host, serv, sizeof serv, NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "unknown";
  }
  if (port != nullptr) *port = std::atoi(serv);
  std::string h = host;
  // An IPv4 peer seen through an IPv6 socket: report the plain IPv4 address.
  if (h.rfind("::ffff:", 0) == 0 && h.find('.') != std::string::npos) h = h.substr(7);
  return h;
}

bool isRetryableConnectError(int err) {
  return err == ECONNREFUSED || err == ENETUNREACH || err == EHOSTUNREACH || err == ETIMEDOUT ||
         err == ECONNRESET || err == ECONNABORTED || err == EAGAIN || err == EADDRNOTAVAIL;
}

// One non-blocking connect attempt to one address, bounded by the deadline. Returns the
// connected fd (in blocking mode) or an invalid Fd with *err set.
Fd connectOnce(const addrinfo* ai, const Deadline& deadline, int* err) {
  Fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol));
  if (!fd) {
    *err = errno;
    return Fd();
  }
  int rc;
  do {
    rc = ::connect(fd.get(), ai->ai_addr, ai->ai_addrlen);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0 && errno != EINPROGRESS) {
    *err = errno;
    return Fd();
  }
  if (rc != 0) {
    if (!pollFd(fd.get(), POLLOUT, deadline)) {
      *err = ETIMEDOUT;
      return Fd();
    }
    int soErr = 0;
    socklen_t len = sizeof soErr;
    if (getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &soErr, &len) != 0) soErr = errno;
    if (soErr != 0) {
      *err = soErr;
      return Fd();
    }
  }
  setNonBlocking(fd.get(), false);
  return fd;
}

}  // namespace

Fd listenTcp(const std::string& host, int port, int* boundPort, int backlog) {
  Endpoint ep{host.empty() ? "0.0.0.0" : host, port};
  AddrInfoList addrs;
  int rc = resolve(ep.host.c_str(), port, AI_PASSIVE, &addrs);
  if (rc != 0) {
    throw Error(str("listen on ", ep.str(), ": cannot resolve '", ep.host, "': ", gai_strerror(rc),
                    "; pass a numeric address or a name this host can resolve"));
  }
  int lastErr = 0;
  for (addrinfo* ai = addrs.head; ai != nullptr; ai = ai->ai_next) {
    Fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol));
    if (!fd) {
      lastErr = errno;
      continue;
    }
    int one = 1;
    setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd.get(), backlog) != 0) {
      lastErr = errno;
      continue;
    }
    if (boundPort != nullptr) {
      sockaddr_storage ss{};
      socklen_t len = sizeof ss;
      if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
        throw SystemError(str("listen on ", ep.str(), ": getsockname"), errno);
      }
      numericHost(reinterpret_cast<sockaddr*>(&ss), len, boundPort);
    }
    return fd;
  }
  throw SystemError(str("listen on ", ep.str(), " (is the port in use, or the address not one of this host's?)"),
                    lastErr != 0 ? lastErr : EADDRNOTAVAIL);
}

Fd acceptTcp(int listenFd, const Deadline& deadline, std::string* peerAddr) {
  for (;;) {
    if (!pollFd(listenFd, POLLIN, deadline)) return Fd();
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    int fd = ::accept4(listenFd, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_CLOEXEC);
    if (fd >= 0) {
      if (peerAddr != nullptr) *peerAddr = numericHost(reinterpret_cast<sockaddr*>(&ss), len);
      return Fd(fd);
    }
    // A connection that was reset before we took it, or a spurious wake-up: wait again.
    if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED || errno == EPROTO) {
      continue;
    }
    throw SystemError("accept on listening socket", errno);
  }
}

Fd connectTcp(const Endpoint& ep, const Deadline& deadline, bool retry) {
  // Back off from 10 ms to 500 ms between attempts: quick when the peer is about to listen,
  // gentle when it is slow to start.
  auto backoff = Millis(10);
  std::string lastWhat;
  for (;;) {
    AddrInfoList addrs;
    int rc = resolve(ep.host.c_str(), ep.port, 0, &addrs);
    if (rc == 0) {
      for (addrinfo* ai = addrs.head; ai != nullptr; ai = ai->ai_next) {
        int err = 0;
        Fd fd = connectOnce(ai, deadline, &err);
        if (fd) return fd;
        lastWhat = std::strerror(err);
        if (err == ETIMEDOUT && !retry && deadline.expired()) {
          throw TimeoutError(str("connect to ", ep.str(), " got no answer in time"));
        }
        if (!isRetryableConnectError(err) || (!retry && ai->ai_next == nullptr)) {
          throw SystemError(str("connect to ", ep.str()), err);
        }
      }
    } else if (!retry) {
      throw Error(str("connect to ", ep.str(), ": cannot resolve '", ep.host, "': ", gai_strerror(rc)));
    } else if (rc == EAI_AGAIN || rc == EAI_NONAME || rc == EAI_FAIL) {
      // The name may not be in DNS yet (a node that is still booting); retry like a refusal.
      lastWhat = str("cannot resolve '", ep.host, "': ", gai_strerror(rc));
    } else {
      throw Error(str("connect to ", ep.str(), ": cannot resolve '", ep.host, "': ", gai_strerror(rc)));
    }
    if (deadline.expired()) break;
    auto sleepFor = std::min<Millis>(backoff, Millis(deadline.remainingMs()));
    std::this_thread::sleep_for(sleepFor);
    backoff = std::min<Millis>(backoff * 2, Millis(500));
    if (deadline.expired()) break;
  }
  throw TimeoutError(str("connect to ", ep.str(), " timed out (last error: ",
                         lastWhat.empty() ? "none" : lastWhat,
                         "); is the peer running, listening on that address and reachable from this host?"));
}

void setNonBlocking(int fd, bool on) {
  int flags = fcntl(fd, F_GETFL, 0);
  if (flags < 0) throw SystemError("fcntl(F_GETFL)", errno);
  int want = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (want != flags && fcntl(fd, F_SETFL, want) != 0) throw SystemError("fcntl(F_SETFL)", errno);
}

void setNoDelay(int fd) {
  int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
    throw SystemError("setsockopt(TCP_NODELAY)", errno);
  }
}

void setBufferSizes(int fd, int bytes) {
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes) != 0) {
    throw SystemError(str("setsockopt(SO_SNDBUF, ", bytes, ")"), errno);
  }
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes) != 0) {
    throw SystemError(str("setsockopt(SO_RCVBUF, ", bytes, ")"), errno);
  }
}

std::string localAddress(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) throw SystemError("getsockname", errno);
  return numericHost(reinterpret_cast<sockaddr*>(&ss), len);
}

std::string peerAddress(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "unknown peer";
  return numericHost(reinterpret_cast<sockaddr*>(&ss), len);
}

void writeFull(int fd, const void* data, size_t n, const Deadline& deadline) {
  const auto* p = static_cast<const uint8_t*>(data);
  size_t done = 0;
  while (done < n) {
    ssize_t w = ::send(fd, p + done, n - done, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w > 0) {
      done += static_cast<size_t>(w);
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!pollFd(fd, POLLOUT, deadline)) {
        throw TimeoutError(str("send to ", peerAddress(fd), " timed out after ", done, " of ", n,
                               " bytes; the peer stopped reading (stuck or overloaded)"));
      }
      continue;
    }
    int err = w < 0 ? errno : EPIPE;
    if (err == EPIPE || err == ECONNRESET) {
      throw Error(str("connection closed by ", peerAddress(fd), " while sending (", done, " of ", n,
                      " bytes sent); the peer exited or dropped the connection"));
    }
    throw SystemError(str("send to ", peerAddress(fd)), err);
  }
}

void readFull(int fd, void* data, size_t n, const Deadline& deadline) {
  auto* p = static_cast<uint8_t*>(data);
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::recv(fd, p + done, n - done, MSG_DONTWAIT);
    if (r > 0) {
      done += static_cast<size_t>(r);
      continue;
    }
    if (r == 0) {
      throw Error(str("connection closed by ", peerAddress(fd), " (received ", done, " of ", n,
                      " bytes); the peer exited or dropped the connection"));
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!pollFd(fd, POLLIN, deadline)) {
        throw TimeoutError(str("receive from ", peerAddress(fd), " timed out after ", done, " of ", n,
                               " bytes; the peer is silent (stuck, or not speaking this protocol)"));
      }
      continue;
    }
    if (errno == ECONNRESET) {
      throw Error(str("connection closed by ", peerAddress(fd), " (reset after ", done, " of ", n,
                      " bytes); the peer exited or dropped the connection"));
    }
    throw SystemError(str("receive from ", peerAddress(fd)), errno);
  }
}

bool pollFd(int fd, short events, const Deadline& deadline) {
  for (;;) {
    pollfd pfd{fd, events, 0};
    int rc = ::poll(&pfd, 1, deadline.remainingMs());
    if (rc > 0) return true;  // ready, or POLLERR/POLLHUP: the next call reports which
    if (rc == 0) {
      if (deadline.expired()) return false;
      continue;  // poll rounds to milliseconds; wait out the remainder
    }
    if (errno == EINTR) continue;
    throw SystemError("poll", errno);
  }
}

}  // namespace chorus::comm::net
