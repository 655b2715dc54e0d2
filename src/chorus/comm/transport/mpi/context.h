// The mpi transport: chorus messages over MPI point-to-point (MPI_Isend/MPI_Irecv) on a
// private communicator, for jobs started by mpirun/mpiexec; and MPI_Allreduce as the
// transport's native all-reduce (`--algo mpi`), the baseline every chorus algorithm is
// measured against.
//
// MPI is initialized on first use (MPI_Init_thread asking for MPI_THREAD_MULTIPLE, working
// with MPI_THREAD_SERIALIZED) unless the program did it already, and finalized when the
// process exits normally, only if chorus initialized it. chorus serializes its own MPI calls
// with one process-wide lock, so transports may live on different threads.
//
// Built without MPI (CHORUS_HAVE_MPI undefined), every function here except mpiLaunched()
// throws Error("chorus was built without MPI ...").
#pragma once

#include <memory>

#include "chorus/common/clock.h"
#include "chorus/comm/rendezvous/bootstrap.h"
#include "chorus/comm/rendezvous/store.h"
#include "chorus/comm/transport/factory.h"
#include "chorus/comm/transport/transport.h"

#ifdef CHORUS_HAVE_MPI
// The C API only: OpenMPI's C++ bindings would need libmpi_cxx at link time.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <atomic>
#include <span>
#include <string>
#include <vector>
#endif

namespace chorus::comm {

// True when mpirun/mpiexec started this process (OMPI_COMM_WORLD_SIZE or PMI_SIZE is set).
// Never initializes MPI; works in builds without MPI.
bool mpiLaunched();

// Under mpirun with no store address in the environment (info.needsStoreFromMpi): rank 0
// hosts a TcpStoreServer — on 127.0.0.1 when every rank runs on its host, else on its first
// non-loopback IPv4 address — and sends its address, port, a fresh secret and the job id to
// every rank with MPI_Bcast. On return info.storeAddr, storePort, secret and jobId are set
// on every rank, needsStoreFromMpi is false, and hostStore is false: the server already runs.
// Rank 0's server is returned through *server (which must not be null on rank 0) and must
// outlive the store clients; other ranks get nullptr.
// Collective over every MPI rank: blocks until all of them call it, or throws TimeoutError
// after CHORUS_TIMEOUT_MS. Initializes MPI. Throws ConfigError when info.rank is not the MPI
// rank, and Error on every rank when rank 0 cannot host the store.
void mpiExchangeStoreAddress(BootstrapInfo& info, std::unique_ptr<TcpStoreServer>* server);

#ifdef CHORUS_HAVE_MPI

namespace mpi {
class Pair;
class MpiRequest;

// The Transport over MPI. Construction is collective over every MPI rank and throws
// TimeoutError if some rank does not join within opts.timeout. opts.size must be the MPI world
// size and the ranks' opts.rank a permutation of 0..size-1 (ConfigError otherwise, on every
// rank); the context's private communicator orders ranks by opts.rank. opts.store is not used.
//
// A dead peer ends the whole job under mpirun (MPI's own policy); a peer that closes its
// transport makes our pending and later requests to it fail with PeerError.
// Thread-safety: as Transport; every call takes the process-wide MPI lock.
class Context final : public Transport {
 public:
  explicit Context(const TransportOptions& opts);
  ~Context() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* name() const override { return "mpi"; }

  RequestPtr isend(int peer, uint64_t tag, uint64_t sig, const void* data, size_t bytes) override;
  RequestPtr irecv(int peer, uint64_t tag, uint64_t sig, void* data, size_t bytes,
                   const RecvReduce* reduce = nullptr) override;
  bool test(const RequestPtr& req) override;
  std::string progressOf(const Request& r) const override;
  void close() override;

  // MPI_Allreduce in place over every rank. float16/bfloat16 use a user-defined MPI_Op that
  // reduces through float32 with chorus's kernels; kAvg sums, then divides. Blocks until
  // every rank has joined; it has no deadline of its own (MPI's collectives have none), and
  // holds the MPI lock meanwhile. Always returns true.
  bool nativeAllreduce(void* data, size_t count, DType dtype, ReduceOp op) override;

 private:
  // One pass over every peer and pending request, under the MPI lock. True if anything
  // completed or arrived.
  bool progressLocked();
  size_t wait(std::span<const RequestPtr> reqs, const Deadline& deadline, WaitMode mode) override;
  void failSendsToClosedPeers();
  void checkOpen(const char* op) const;
  void checkPeer(int peer, const char* op) const;

  int rank_;
  int size_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int64_t spinNs_;
  std::vector<std::unique_ptr<Pair>> pairs_;  // by peer rank; null for ourselves
  std::vector<std::shared_ptr<MpiRequest>> active_;
  std::atomic<bool> closed_{false};
};

}  // namespace mpi

#endif  // CHORUS_HAVE_MPI

}  // namespace chorus::comm
