// Comm: what an algorithm sees of a ProcessGroup for the length of one collective call —
// its rank and size in the group, point-to-point to group ranks, a tag space private to the
// call, and the call's deadline. Algorithms address peers by group rank; Comm maps them to
// the transport's global ranks.
//
// Tags: [16 bits group id][32 bits call sequence][16 bits step], so messages of different
// calls and groups never match each other. The signature word travels with every message and
// lets the receiver tell a count/dtype/op mismatch apart from a slow peer.
#pragma once
#include <atomic>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "chorus/common/clock.h"
#include "chorus/comm/transport/transport.h"

namespace chorus::comm {

// Packs (op code, dtype, count) into the 64-bit signature word; describeSignature() turns it
// back into words for error messages.
enum class CollectiveKind : uint8_t {
  kAllreduce = 1, kReduceScatter, kAllgather, kBroadcast, kReduce, kGather, kScatter, kAlltoall,
  kBarrier, kSendRecv, kSplit
};
const char* collectiveName(CollectiveKind k);
uint64_t makeSignature(CollectiveKind kind, DType dtype, uint64_t count, uint8_t extra = 0);
std::string describeSignature(uint64_t sig);

class Comm {
 public:
  // bytesSent, when given, counts the payload bytes this call posts to the transport.
  Comm(Transport* transport, const std::vector<int>* globalRanks, int rank, uint16_t groupId, uint32_t seq,
       uint64_t sig, Deadline deadline, std::atomic<uint64_t>* bytesSent = nullptr)
      : transport_(transport), globalRanks_(globalRanks), rank_(rank), groupId_(groupId), seq_(seq), sig_(sig),
        deadline_(deadline), bytesSent_(bytesSent) {}

  int rank() const { return rank_; }
  int size() const { return static_cast<int>(globalRanks_->size()); }
  Transport& transport() { return *transport_; }
  const Deadline& deadline() const { return deadline_; }
  uint64_t signature() const { return sig_; }
  uint32_t seq() const { return seq_; }
  int globalRank(int groupRank) const { return (*globalRanks_)[groupRank]; }
  // The host of group rank r (Transport::hostOf) and whether this rank reaches it through
  // shared memory: the link properties algorithm choice reads.
  int hostOf(int groupRank) const { return transport_->hostOf(globalRank(groupRank)); }
  bool sharedMemoryTo(int groupRank) const { return transport_->sharedMemoryTo(globalRank(groupRank)); }

  uint64_t tag(uint16_t step) const {
    return (static_cast<uint64_t>(groupId_) << 48) | (static_cast<uint64_t>(seq_) << 16) |
           static_cast<uint16_t>(stepBase_ + step);
  }

  // The same call seen by a subset of its ranks, for algorithms made of phases on subsets
  // (the hierarchical ones): `globalRanks` are the subset's global ranks (it must outlive the
  // view), this rank is `rank` in it, and its steps start at `stepBase` (plus this view's), so
  // its messages never match another phase's. Algorithms use steps below 16.
  Comm subset(const std::vector<int>* globalRanks, int rank, uint16_t stepBase) const {
    Comm c(transport_, globalRanks, rank, groupId_, seq_, sig_, deadline_, bytesSent_);
    c.stepBase_ = static_cast<uint16_t>(stepBase_ + stepBase);
    return c;
  }

  RequestPtr isend(int peer, uint16_t step, const void* data, size_t bytes) {
    if (bytesSent_ != nullptr) bytesSent_->fetch_add(bytes, std::memory_order_relaxed);
    return transport_->isend(globalRank(peer), tag(step), sig_, data, bytes);
  }
  RequestPtr irecv(int peer, uint16_t step, void* data, size_t bytes, const RecvReduce* reduce = nullptr) {
    return transport_->irecv(globalRank(peer), tag(step), sig_, data, bytes, reduce);
  }
  void waitAll(std::initializer_list<RequestPtr> reqs) {
    std::vector<RequestPtr> v(reqs);
    transport_->waitAll(v, deadline_);
  }
  void waitAll(const std::vector<RequestPtr>& reqs) { transport_->waitAll(reqs, deadline_); }

  void send(int peer, uint16_t step, const void* data, size_t bytes) { waitAll({isend(peer, step, data, bytes)}); }
  void recv(int peer, uint16_t step, void* data, size_t bytes, const RecvReduce* reduce = nullptr) {
    waitAll({irecv(peer, step, data, bytes, reduce)});
  }

 private:
  Transport* transport_;
  const std::vector<int>* globalRanks_;
  int rank_;
  uint16_t groupId_;
  uint32_t seq_;
  uint64_t sig_;
  Deadline deadline_;
  std::atomic<uint64_t>* bytesSent_;
  uint16_t stepBase_ = 0;
};

}  // namespace chorus::comm
