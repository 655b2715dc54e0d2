// SHA-256 and HMAC-SHA256 (FIPS 180-4, RFC 2104), and random bytes, for the job-secret
// handshake (comm/net/auth.h). Not a general crypto library.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace chorus {

using Digest = std::array<uint8_t, 32>;

Digest sha256(const void* data, size_t n);
Digest hmacSha256(const void* key, size_t keyLen, const void* msg, size_t msgLen);
// Compares without early exit, so timing does not leak where two MACs differ.
bool constantTimeEqual(const void* a, const void* b, size_t n);
// Fills buf from getrandom(2); throws SystemError on failure.
void randomBytes(void* buf, size_t n);
std::string toHex(const void* data, size_t n);

}  // namespace chorus
