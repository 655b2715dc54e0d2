// Barrier: no rank leaves before every rank has entered.
//
// Dissemination algorithm: in round k (k = 0 .. ceil(log2 P) - 1) rank r sends a one-byte
// token to r + 2^k and waits for the one from r - 2^k. After round k a rank has heard,
// directly or through others, from the 2^(k+1) - 1 ranks before it, so after the last round
// it has heard from all of them. Works for any P, with no root.
//
//   P = 5, round 0: r -> r+1   round 1: r -> r+2   round 2: r -> r+4   (mod 5)
//
// Cost: ceil(log2 P)·α.
#include <cstdint>

#include "chorus/common/error.h"
#include "chorus/comm/collectives/collectives.h"
#include "chorus/comm/collectives/comm.h"
#include "chorus/comm/collectives/detail.h"

namespace chorus::comm {

void barrier(Comm& comm) {
  const int P = comm.size(), r = comm.rank();
  uint16_t round = 0;
  for (int d = 1; d < P; d *= 2, ++round) {
    const uint8_t token = 1;
    uint8_t in = 0;
    auto recv = comm.irecv(detail::mod(r - d, P), round, &in, 1);
    auto send = comm.isend((r + d) % P, round, &token, 1);
    comm.waitAll({recv, send});
  }
}

}  // namespace chorus::comm
