// The transport conformance suite: the rules every backend keeps (transport.h), written once
// as cases over a connected Transport, so the same code checks every backend:
// tests/comm/transport/conformance_test.cc runs them on ranks that are threads (loopback, shm,
// tcp, mixed) and on ranks that are forked processes (shm, tcp, mixed: the only way to kill a
// peer), and tests/programs/mpi_transport_check.cc runs them on MPI processes under mpirun.
//
// A case runs on every rank of one job at once: each rank calls run(t) with its own freshly
// connected transport of that job. A rank returns when the case is over for it, or throws
// Failure naming the rank, the transport and what broke (or lets through whatever the
// transport threw unexpectedly). A driver that sees a rank throw closes that rank's transport,
// so the others fail at once instead of at their deadline, and keeps every transport alive
// until every rank has returned. A case may close its own transport.
//
// The cases assert only what every backend promises: exact data, FIFO per (peer, tag), held
// messages, reduce-on-receive, MismatchError/TimeoutError/PeerError and what their messages
// name (a peer as "rank P" or "peer P", a tag in decimal or hex), waitAny/waitAnyUntil, close.
// What a single backend adds (shm's rings and single-copy path, tcp's chunks and large messages
// delivered after a close, mpi's nativeAllreduce) stays in that backend's own tests.
//
// No gtest here, so programs outside gtest can link it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "chorus/comm/transport/transport.h"
#include "chorus/common/dtype.h"

namespace chorus::testutil::conformance {

// A broken rule, as "rank R of N on NAME (transport_conformance.cc:LINE): what".
class Failure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Case {
  const char* name;    // snake_case, unique: "fifo_within_a_tag"
  const char* checks;  // what it checks, one line
  void (*run)(comm::Transport& t);
  int minRanks = 2;
  // Cheap with many ranks: drivers may run it on bigger jobs too.
  bool wide = false;
  // Ends one rank's process with SIGKILL: only for drivers whose ranks are processes that may
  // die (never under mpirun, where a dead rank ends the job).
  bool killsARank = false;
};

// Every case, in the order drivers run them.
const std::vector<Case>& cases();
// The case of that name; throws std::invalid_argument for another.
const Case& findCase(const std::string& name);

// The rank that the peer_dies case kills (its process dies by SIGKILL).
inline constexpr int kDyingRank = 1;

// Elements of any dtype, read and written as doubles; shared with mpi_transport_check's
// nativeAllreduce check.
void setElement(uint8_t* buf, DType t, size_t i, double v);
double getElement(const uint8_t* buf, DType t, size_t i);
// A small integer, exact in every dtype (negative where the dtype has a sign); products of
// up to 30 of them for kProd stay exact.
double smallValue(int rank, size_t i, ReduceOp op, DType t);
// a op b as reduceInto computes it (kAvg accumulates like kSum).
double combine(double a, double b, ReduceOp op);
// Equal up to the precision of the dtype.
bool closeEnough(double got, double want, DType t);

}  // namespace chorus::testutil::conformance
