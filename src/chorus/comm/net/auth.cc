// The job-secret handshake: mutual proof of a shared secret without sending it.
//
//   client                                        server
//     | -- "CHORUSA1" || nonce_c (32 B) ------------> |
//     | <------------ "CHORUSA1" || nonce_s (32 B) -- |
//     | -- mac_c = HMAC(secret, 'C' || nonce_c || nonce_s) --> |
//     | <-- mac_s = HMAC(secret, 'S' || nonce_s || nonce_c) -- |
//   each side recomputes the other's MAC and compares in constant time.
//
// Both sides write before they read, so neither waits on the other to speak first, and both
// send their MAC before checking the peer's, so a wrong secret fails on both ends (each side
// reports AuthError, not a confusing "connection closed"). The role byte means a MAC
// reflected back at its sender (or replayed on a second connection) never verifies; fresh
// nonces on both sides make a recorded exchange useless. Cost: two round trips, 72 bytes each
// way, and four SHA-256 compressions per MAC.
//
// ServerHandshake is the server's half for poll loops: it waits for the client's whole
// greeting before it writes anything, then writes its greeting and MAC back to back (the same
// bytes in the same order as authenticate(), which also sends its MAC before reading the
// peer's), then waits for the client's MAC. A client cannot tell the two servers apart.
#include "chorus/comm/net/auth.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>

#include "chorus/common/error.h"
#include "chorus/common/hmac.h"
#include "chorus/comm/net/socket.h"

namespace chorus::comm::net {

namespace {

constexpr char kMagic[8] = {'C', 'H', 'O', 'R', 'U', 'S', 'A', '1'};
constexpr size_t kNonceBytes = 32;
constexpr uint8_t kClientRole = 'C';
constexpr uint8_t kServerRole = 'S';

Digest proof(const std::string& secret, uint8_t role, const uint8_t* ownNonce, const uint8_t* peerNonce) {
  uint8_t msg[1 + 2 * kNonceBytes];
  msg[0] = role;
  std::memcpy(msg + 1, ownNonce, kNonceBytes);
  std::memcpy(msg + 1 + kNonceBytes, peerNonce, kNonceBytes);
  return hmacSha256(secret.data(), secret.size(), msg, sizeof msg);
}

constexpr const char* kForeignGreeting =
    "the peer does not speak the chorus handshake (bad greeting); is something other than a chorus process "
    "connecting to this port?";
constexpr const char* kReflected = "the peer echoed our own nonce; refusing a reflected handshake";
constexpr const char* kWrongProof =
    "the peer could not prove it holds the job secret; check that every process of the job got the same "
    "CHORUS_JOB_SECRET";

std::string handshakeContext(const char* role, int fd, const std::string& what) {
  return str("job-secret handshake (as ", role, ") with ", peerAddress(fd), ": ", what);
}

}  // namespace

void authenticate(int fd, const std::string& secret, bool isServer, const Deadline& deadline) {
  const char* role = isServer ? "server" : "client";
  std::string peer = peerAddress(fd);
  auto context = [&](const char* what) {
    return str("job-secret handshake (as ", role, ") with ", peer, ": ", what);
  };

  uint8_t hello[sizeof kMagic + kNonceBytes];
  std::memcpy(hello, kMagic, sizeof kMagic);
  randomBytes(hello + sizeof kMagic, kNonceBytes);
  const uint8_t* ownNonce = hello + sizeof kMagic;
  uint8_t peerHello[sizeof kMagic + kNonceBytes];
  const uint8_t* peerNonce = peerHello + sizeof kMagic;

  try {
    writeFull(fd, hello, sizeof hello, deadline);
    readFull(fd, peerHello, sizeof peerHello, deadline);
    if (std::memcmp(peerHello, kMagic, sizeof kMagic) != 0) {
      throw AuthError(context(kForeignGreeting));
    }
    if (constantTimeEqual(ownNonce, peerNonce, kNonceBytes)) {
      throw AuthError(context(kReflected));
    }
    uint8_t ownRole = isServer ? kServerRole : kClientRole;
    uint8_t peerRole = isServer ? kClientRole : kServerRole;
    Digest mine = proof(secret, ownRole, ownNonce, peerNonce);
    writeFull(fd, mine.data(), mine.size(), deadline);
    Digest theirs;
    readFull(fd, theirs.data(), theirs.size(), deadline);
    Digest expected = proof(secret, peerRole, peerNonce, ownNonce);
    if (!constantTimeEqual(theirs.data(), expected.data(), expected.size())) {
      throw AuthError(context(kWrongProof));
    }
  } catch (const AuthError&) {
    throw;
  } catch (const TimeoutError& e) {
    throw TimeoutError(context(str(e.what(), "; the peer did not complete the handshake in time").c_str()));
  } catch (const Error& e) {
    throw Error(context(str(e.what(), "; a peer that closes during the handshake usually holds a "
                                      "different job secret")
                            .c_str()));
  }
}

ServerHandshake::ServerHandshake(std::string secret) : secret_(std::move(secret)) {
  std::memcpy(hello_, kMagic, sizeof kMagic);
  randomBytes(hello_ + sizeof kMagic, kNonceBytes);
}

bool ServerHandshake::advance(int fd) {
  while (step_ != Step::kDone) {
    uint8_t* into = step_ == Step::kGreeting ? peerHello_ : proof_;
    const size_t want = step_ == Step::kGreeting ? kGreetingBytes : kProofBytes;
    ssize_t r = ::recv(fd, into + got_, want - got_, MSG_DONTWAIT);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
    if (r == 0) {
      throw Error(handshakeContext("server", fd,
                                   str("connection closed while waiting for ", waitingFor(),
                                       "; a peer that closes during the handshake usually holds a different "
                                       "job secret")));
    }
    if (r < 0) throw SystemError(handshakeContext("server", fd, "receive"), errno);
    const size_t before = got_;
    got_ += static_cast<size_t>(r);
    if (step_ == Step::kGreeting) {
      // Refuse foreign bytes as soon as they differ from the magic, not only at byte 40.
      const size_t magicSeen = std::min(got_, sizeof kMagic);
      if (before < magicSeen && std::memcmp(peerHello_ + before, kMagic + before, magicSeen - before) != 0) {
        throw AuthError(handshakeContext("server", fd, kForeignGreeting));
      }
      if (got_ < kGreetingBytes) continue;
      const uint8_t* ownNonce = hello_ + sizeof kMagic;
      const uint8_t* peerNonce = peerHello_ + sizeof kMagic;
      if (constantTimeEqual(ownNonce, peerNonce, kNonceBytes)) {
        throw AuthError(handshakeContext("server", fd, kReflected));
      }
      uint8_t out[kGreetingBytes + kProofBytes];
      std::memcpy(out, hello_, kGreetingBytes);
      Digest mine = proof(secret_, kServerRole, ownNonce, peerNonce);
      std::memcpy(out + kGreetingBytes, mine.data(), mine.size());
      // 72 bytes into a fresh socket's empty send buffer: they go at once or the peer is broken.
      size_t sent = 0;
      while (sent < sizeof out) {
        ssize_t w = ::send(fd, out + sent, sizeof out - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0) {
          sent += static_cast<size_t>(w);
        } else if (w < 0 && errno == EINTR) {
          continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
          throw Error(handshakeContext("server", fd,
                                       "our greeting does not fit the socket's send buffer; the peer is not "
                                       "reading"));
        } else {
          throw Error(handshakeContext("server", fd,
                                       str("connection closed while sending our greeting (",
                                           std::strerror(w < 0 ? errno : EPIPE), ")")));
        }
      }
      step_ = Step::kProof;
      got_ = 0;
    } else if (got_ == kProofBytes) {
      Digest expected = proof(secret_, kClientRole, peerHello_ + sizeof kMagic, hello_ + sizeof kMagic);
      if (!constantTimeEqual(proof_, expected.data(), expected.size())) {
        throw AuthError(handshakeContext("server", fd, kWrongProof));
      }
      step_ = Step::kDone;
    }
  }
  return true;
}

std::string ServerHandshake::waitingFor() const {
  switch (step_) {
    case Step::kGreeting: return str("its greeting (", got_, " of ", kGreetingBytes, " bytes)");
    case Step::kProof: return str("its proof of the secret (", got_, " of ", kProofBytes, " bytes)");
    case Step::kDone: break;
  }
  return "nothing (the handshake is complete)";
}

}  // namespace chorus::comm::net
