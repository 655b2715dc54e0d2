// Proving the job secret on a fresh connection, without sending it: each side sends a random
// 32-byte nonce, then HMAC-SHA256(secret, role || own nonce || peer nonce); each side checks
// the other's MAC in constant time. A side that fails gets AuthError and the connection is
// closed by the caller (which logs the refusal with the peer's address).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "chorus/common/clock.h"

namespace chorus::comm::net {

// Runs the handshake on a connected socket. `isServer` picks the role byte so a reflected
// MAC never verifies. Throws AuthError when the peer's proof is wrong, TimeoutError/Error on
// I/O failure.
void authenticate(int fd, const std::string& secret, bool isServer, const Deadline& deadline);

// The server's side of the same handshake, one step at a time, for a poll() loop that serves
// many connections on one thread (the store server, the tcp transport's acceptors). It sends
// nothing until the client's whole greeting has arrived, then its own greeting and proof in
// one write (the bytes authenticate() sends, in the same order), then waits for the client's
// proof. A peer that connects and sends a few bytes, or nothing, or stalls after its greeting,
// costs its caller a slot in the poll set and no thread. The caller bounds the whole exchange
// with its own deadline (waitingFor() names what was missing).
//
// Not thread-safe: one per connection, driven by one thread.
class ServerHandshake {
 public:
  static constexpr size_t kGreetingBytes = 40;  // magic (8) and nonce (32), from each side
  static constexpr size_t kProofBytes = 32;     // the HMAC

  explicit ServerHandshake(std::string secret);

  // Call when fd polls readable (or hung up). Reads, without blocking, at most the bytes the
  // current step still needs, so whatever the client sends after its proof stays in the
  // socket for the caller. Returns true once the client has proved the secret (then the
  // connection is the caller's to use). Throws AuthError for a foreign greeting, a reflected
  // nonce or a wrong proof; Error when the peer closed or the socket failed, or when our 72
  // bytes do not fit a fresh socket's send buffer (a peer that does not read).
  bool advance(int fd);
  bool done() const { return step_ == Step::kDone; }
  // What the handshake waits for, for a timeout message: "its greeting (1 of 40 bytes)".
  std::string waitingFor() const;

 private:
  enum class Step : uint8_t { kGreeting, kProof, kDone };

  std::string secret_;
  Step step_ = Step::kGreeting;
  uint8_t hello_[kGreetingBytes];      // ours: magic and nonce
  uint8_t peerHello_[kGreetingBytes];  // the client's
  uint8_t proof_[kProofBytes];         // the client's MAC
  size_t got_ = 0;                     // bytes of the current step received
};

}  // namespace chorus::comm::net
