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
// nonces on both sides make a recorded exchange useless. Cost: two round trips, 80 bytes each
// way, and four SHA-256 compressions per MAC.
#include "chorus/comm/net/auth.h"

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
      throw AuthError(context("the peer does not speak the chorus handshake (bad greeting); "
                              "is something other than a chorus process connecting to this port?"));
    }
    if (constantTimeEqual(ownNonce, peerNonce, kNonceBytes)) {
      throw AuthError(context("the peer echoed our own nonce; refusing a reflected handshake"));
    }
    uint8_t ownRole = isServer ? kServerRole : kClientRole;
    uint8_t peerRole = isServer ? kClientRole : kServerRole;
    Digest mine = proof(secret, ownRole, ownNonce, peerNonce);
    writeFull(fd, mine.data(), mine.size(), deadline);
    Digest theirs;
    readFull(fd, theirs.data(), theirs.size(), deadline);
    Digest expected = proof(secret, peerRole, peerNonce, ownNonce);
    if (!constantTimeEqual(theirs.data(), expected.data(), expected.size())) {
      throw AuthError(context("the peer could not prove it holds the job secret; check that every "
                              "process of the job got the same CHORUS_JOB_SECRET"));
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

}  // namespace chorus::comm::net
