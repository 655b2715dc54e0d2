// Proving the job secret on a fresh connection, without sending it: each side sends a random
// 32-byte nonce, then HMAC-SHA256(secret, role || own nonce || peer nonce); each side checks
// the other's MAC in constant time. A side that fails gets AuthError and the connection is
// closed by the caller (which logs the refusal with the peer's address).
#pragma once

#include <string>

#include "chorus/common/clock.h"

namespace chorus::comm::net {

// Runs the handshake on a connected socket. `isServer` picks the role byte so a reflected
// MAC never verifies. Throws AuthError when the peer's proof is wrong, TimeoutError/Error on
// I/O failure.
void authenticate(int fd, const std::string& secret, bool isServer, const Deadline& deadline);

}  // namespace chorus::comm::net
