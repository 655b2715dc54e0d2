// The compression hook's per-rank state in data-parallel checkpoints (ddp_strategy.h): each
// rank's per-bucket codec state (error-feedback residuals, DGC's momentum and velocity,
// PowerSGD's residuals and Q, the dense warm-up's call count, the RNG) as bytes, and the rule
// that carries the states a world of W ranks saved to a world of W' ranks, so that a
// checkpoint resumes at another worker count (docs/train.md, "Resuming at another world size"),
// and an elastic job that re-forms in process carries its survivors' states to the new world
// (docs/fault-tolerance.md).
//
// Why the merge keeps sums: DDP applies the average over the ranks of what they send, so what
// a rank holds back in a residual (or in DGC's velocity) reaches the weights later divided by
// the world size: the part of the update still owed is (1/W) * the sum over the ranks of their
// buffers. Likewise DGC's per-rank momentum u enters the update as the global momentum
// (1/W) * sum u. Giving new rank r' the old ranks r with r mod W' == r', scaled by W'/W, keeps
// both exactly: (1/W') * sum' == (1/W) * sum. When W' divides W this is the plain average of the
// W/W' ranks each new rank takes over; when W' > W the ranks the old world lacked start at
// zero. A rank whose state is lost (a failed worker) adds nothing: (1/W') * sum' is then
// (1/W) * the sum over the ranks that survived, and the lost rank's share, (1/W) * its buffers,
// is gone.
//
// Thread-safety: plain functions over values; no shared state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "chorus/compress/codec.h"

namespace chorus::train {

using CodecStates = std::map<size_t, compress::CodecState>;  // bucket index -> that bucket's state

// One rank's states in the tensor-table format (checkpoint.h, encodeTensors), the bytes of its
// "tensors/codec.rank<r>" entry. Entries: b<bucket>_t_<name> (CodecState::buffers, flat
// float32), b<bucket>_s_<name> (a float64 [1]), b<bucket>_rng (an int64 [1]). `segments` is
// not saved: the hook sets it before every encode.
std::string encodeCodecStates(const CodecStates& states);

// The inverse. `source` names the checkpoint and entry in errors: a chorus::Error
// "<source>: ..." for bytes that do not decode or an entry chorus does not write. Older
// checkpoints that hold PowerSGD's buffers as matrices read as flat buffers.
CodecStates decodeCodecStates(const std::string& blob, const std::string& source);

// Rank `rank`'s states in a world of `world` ranks, made from `saved`, the states the ranks of
// the world that wrote the checkpoint saved (saved[r]: old rank r's; W = saved.size()). An
// empty saved[r] is a rank whose state is lost (a worker that died before an elastic job
// re-formed in process, elastic.h): it counts as zeros in the sums below and is never the
// reference, so only the gradient that rank held back is lost.
// The same world: saved[rank], unchanged (a resume at the same world stays bit-exact), unless
// it is empty: then the rule below (zeros, the warm-up count of the others, a fresh RNG).
// Another world, per bucket:
//   - buffers named "q.<i>" (PowerSGD's Q, equal on every rank after each step): old rank 0's
//     (here and for the scalars: the lowest old rank that has the bucket);
//   - every other buffer (the residuals "residual" and "residual.<i>", DGC's "velocity" and
//     "momentum"): merged, (W'/W) * the sum of old ranks r with r mod W' == rank (zeros when
//     there are none); the sum is taken in double, then rounded to float32 once;
//   - scalars (the warm-up's "calls", equal on every rank): old rank 0's;
//   - the RNG: old rank `rank`'s when the old world had that rank, else
//     parallel::codecRngSeed(seed, bucket, rank), as a fresh hook would seed it.
// Throws InvalidArgument for an empty `saved` or a rank outside [0, world); Error naming
// `source` when old ranks hold one buffer at different sizes (a corrupt checkpoint).
CodecStates carryCodecStates(const std::vector<CodecStates>& saved, int rank, int world, uint64_t seed,
                             const std::string& source);

}  // namespace chorus::train
