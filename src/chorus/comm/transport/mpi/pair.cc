// The per-peer half of the mpi transport: header matching and payload receives.
//
// A send posts its header message and, for a large message, its payload chunks at once, so
// MPI moves the payload as soon as the receiver posts the chunk receives (eagerly below
// MPI's eager limit, by rendezvous or single-copy above it). A receive posts its chunk
// receives when its header is matched; with a reduce they land in scratch and are combined
// into the destination chunk by chunk, in order, while later chunks are still in flight.
//
// A header whose size or signature differs from the receive fails the receive with
// MismatchError and still receives the payload into discard space, so the sender completes
// and the destination is never written.
#include "chorus/comm/transport/mpi/pair.h"

#ifdef CHORUS_HAVE_MPI

#include <algorithm>
#include <cstring>

#include "chorus/common/error.h"
#include "chorus/common/reduce.h"

namespace chorus::comm::mpi {
namespace {

std::string hex(uint64_t v) { return str("0x", std::hex, v); }

size_t chunkCount(size_t bytes, size_t chunk) { return (bytes + chunk - 1) / chunk; }

}  // namespace

void checkMpi(int rc, int rank, int peer, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  std::string msg = str("rank ", rank, ": MPI ", what, peer >= 0 ? str(" with peer ", peer) : std::string(),
                        " failed: ", std::string(text, static_cast<size_t>(len)),
                        "; hint: look at the peer's log and at mpirun's output for the rank that failed first");
  if (peer >= 0) throw PeerError(msg, peer);
  throw Error(msg);
}

void MpiRequest::fail(std::exception_ptr err) {
  if (done) return;
  error = std::move(err);
  done = true;
}

bool MpiRequest::progress() {
  if (mpi.empty()) return done;
  if (kind == Kind::kRecv && reduce && !error) {
    size_t dsize = dtypeSize(reduce->dtype);
    auto* out = static_cast<uint8_t*>(data);
    while (nextChunk < mpi.size()) {
      int flag = 0;
      checkMpi(MPI_Test(&mpi[nextChunk], &flag, MPI_STATUS_IGNORE), rank, peer, "receive (reduce chunk)");
      if (!flag) return false;
      size_t off = nextChunk * chunkBytes;
      size_t len = std::min(chunkBytes, bytes - off);
      reduceInto(out + off, buffer.data() + off, len / dsize, reduce->dtype, reduce->op);
      ++nextChunk;
    }
  } else {
    int flag = 0;
    checkMpi(MPI_Testall(static_cast<int>(mpi.size()), mpi.data(), &flag, MPI_STATUSES_IGNORE), rank, peer,
             kind == Kind::kSend ? "send" : "receive");
    if (!flag) return false;
  }
  mpi.clear();
  if (kind == Kind::kRecv && reduce) {
    buffer.clear();
    buffer.shrink_to_fit();
  }
  done = true;
  return true;
}

Pair::Pair(int rank, int peer, MPI_Comm comm, int tagUpperBound)
    : rank_(rank), peer_(peer), comm_(comm), tagUpperBound_(tagUpperBound),
      headerBuf_(sizeof(WireHeader) + kInlineBytes) {
  postHeaderRecv();
}

int Pair::dataTag(uint32_t seq) const {
  return 1 + static_cast<int>(seq % static_cast<uint32_t>(tagUpperBound_));
}

void Pair::postHeaderRecv() {
  checkMpi(MPI_Irecv(headerBuf_.data(), static_cast<int>(headerBuf_.size()), MPI_BYTE, peer_, kHeaderTag, comm_,
                     &headerReq_),
           rank_, peer_, "post header receive");
}

void Pair::postSend(const MpiRequestPtr& req, const void* data) {
  if (peerClosed_) {
    req->fail(std::make_exception_ptr(
        PeerError(str("rank ", rank_, ": send of ", req->bytes, " bytes under tag ", hex(req->tag), " to peer ", peer_,
                      " failed: the peer has closed its mpi transport; hint: the peer stopped (an error or "
                      "shutdown) first, look at its log"),
                  peer_)));
    return;
  }
  WireHeader h{req->tag, req->sig, req->bytes, 0, 0, 0};
  bool inlined = req->bytes <= kInlineBytes;
  if (inlined) {
    h.flags = kFlagInline;
  } else {
    h.chunkBytes = kChunkBytes;
    h.seq = sendSeq_++;
  }
  req->buffer.resize(sizeof(h) + (inlined ? req->bytes : 0));
  std::memcpy(req->buffer.data(), &h, sizeof(h));
  if (inlined && req->bytes > 0) std::memcpy(req->buffer.data() + sizeof(h), data, req->bytes);

  size_t chunks = inlined ? 0 : chunkCount(req->bytes, kChunkBytes);
  req->mpi.reserve(1 + chunks);
  MPI_Request r;
  checkMpi(MPI_Isend(req->buffer.data(), static_cast<int>(req->buffer.size()), MPI_BYTE, peer_, kHeaderTag, comm_, &r),
           rank_, peer_, "send header");
  req->mpi.push_back(r);
  const auto* src = static_cast<const uint8_t*>(data);
  for (size_t k = 0; k < chunks; ++k) {
    size_t off = k * kChunkBytes;
    int len = static_cast<int>(std::min(kChunkBytes, req->bytes - off));
    checkMpi(MPI_Isend(src + off, len, MPI_BYTE, peer_, dataTag(h.seq), comm_, &r), rank_, peer_, "send payload");
    req->mpi.push_back(r);
  }
}

void Pair::postRecv(const MpiRequestPtr& req) {
  auto it = arrived_.find(req->tag);
  if (it != arrived_.end()) {
    Arrival a = std::move(it->second.front());
    it->second.pop_front();
    if (it->second.empty()) arrived_.erase(it);
    match(req, a.header, a.inlineBytes.data());
    return;
  }
  if (peerClosed_) {
    req->fail(std::make_exception_ptr(
        PeerError(str("rank ", rank_, ": receive of ", req->bytes, " bytes under tag ", hex(req->tag), " from peer ",
                      peer_, " failed: the peer has closed its mpi transport; hint: the peer stopped (an error or "
                      "shutdown) first, look at its log"),
                  peer_)));
    return;
  }
  waiting_[req->tag].push_back(req);
}

bool Pair::pollHeaders() {
  bool any = false;
  while (headerReq_ != MPI_REQUEST_NULL) {
    int flag = 0;
    MPI_Status st;
    checkMpi(MPI_Test(&headerReq_, &flag, &st), rank_, peer_, "header receive");
    if (!flag) break;
    any = true;
    int count = 0;
    MPI_Get_count(&st, MPI_BYTE, &count);
    WireHeader h;
    if (count < static_cast<int>(sizeof(h))) {
      throw PeerError(str("rank ", rank_, ": peer ", peer_, " sent a ", count,
                          "-byte message header (expected at least ", sizeof(h),
                          "); hint: every rank must run the same chorus build"),
                      peer_);
    }
    std::memcpy(&h, headerBuf_.data(), sizeof(h));
    if (h.flags & kFlagClose) {
      onPeerClosed();
      break;
    }
    bool inlined = (h.flags & kFlagInline) != 0;
    if (inlined ? static_cast<size_t>(count) != sizeof(h) + h.bytes : h.chunkBytes == 0) {
      throw PeerError(str("rank ", rank_, ": peer ", peer_, " sent a malformed header for tag ", hex(h.tag), " (",
                          count, " bytes announcing ", h.bytes, "); hint: every rank must run the same chorus build"),
                      peer_);
    }
    const uint8_t* inl = headerBuf_.data() + sizeof(h);
    auto w = waiting_.find(h.tag);
    if (w != waiting_.end()) {
      MpiRequestPtr req = std::move(w->second.front());
      w->second.pop_front();
      if (w->second.empty()) waiting_.erase(w);
      match(req, h, inl);
    } else {
      Arrival a{h, {}};
      if (inlined) a.inlineBytes.assign(inl, inl + h.bytes);
      arrived_[h.tag].push_back(std::move(a));
    }
    postHeaderRecv();
  }
  return any;
}

void Pair::match(const MpiRequestPtr& req, const WireHeader& h, const uint8_t* inl) {
  req->matched = true;
  bool inlined = (h.flags & kFlagInline) != 0;
  bool mismatch = h.bytes != req->bytes || h.sig != req->sig;
  bool badChunk = !inlined && req->reduce && h.chunkBytes % dtypeSize(req->reduce->dtype) != 0;
  if (mismatch || badChunk) {
    if (mismatch) {
      req->fail(std::make_exception_ptr(MismatchError(
          str("rank ", rank_, ": receive from peer ", peer_, " under tag ", hex(req->tag), " expected ", req->bytes,
              " bytes with signature ", hex(req->sig), " but the peer sent ", h.bytes, " bytes with signature ",
              hex(h.sig), "; hint: the ranks called different collectives, counts, dtypes or ops at this step"))));
    } else {
      req->fail(std::make_exception_ptr(PeerError(
          str("rank ", rank_, ": peer ", peer_, " cut a message under tag ", hex(h.tag), " into chunks of ",
              h.chunkBytes, " bytes, not a multiple of the element size; hint: every rank must run the same "
              "chorus build"),
          peer_)));
    }
    if (!inlined) {
      // Receive the payload into discard space so the sender's request completes.
      req->reduce.reset();
      req->buffer.assign(h.bytes, 0);
      size_t chunks = chunkCount(h.bytes, h.chunkBytes);
      req->mpi.reserve(chunks);
      for (size_t k = 0; k < chunks; ++k) {
        size_t off = k * h.chunkBytes;
        int len = static_cast<int>(std::min<uint64_t>(h.chunkBytes, h.bytes - off));
        MPI_Request r;
        checkMpi(MPI_Irecv(req->buffer.data() + off, len, MPI_BYTE, peer_, dataTag(h.seq), comm_, &r), rank_, peer_,
                 "receive (discard)");
        req->mpi.push_back(r);
      }
    }
    return;
  }
  if (inlined) {
    if (req->reduce) {
      reduceInto(req->data, inl, req->bytes / dtypeSize(req->reduce->dtype), req->reduce->dtype, req->reduce->op);
    } else if (req->bytes > 0) {
      std::memcpy(req->data, inl, req->bytes);
    }
    req->done = true;
    return;
  }
  size_t chunks = chunkCount(h.bytes, h.chunkBytes);
  uint8_t* target = static_cast<uint8_t*>(req->data);
  if (req->reduce) {
    req->buffer.resize(h.bytes);
    req->chunkBytes = h.chunkBytes;
    target = req->buffer.data();
  }
  req->mpi.reserve(chunks);
  for (size_t k = 0; k < chunks; ++k) {
    size_t off = k * h.chunkBytes;
    int len = static_cast<int>(std::min<uint64_t>(h.chunkBytes, h.bytes - off));
    MPI_Request r;
    checkMpi(MPI_Irecv(target + off, len, MPI_BYTE, peer_, dataTag(h.seq), comm_, &r), rank_, peer_,
             "receive payload");
    req->mpi.push_back(r);
  }
}

void Pair::onPeerClosed() {
  peerClosed_ = true;
  for (auto& [tag, reqs] : waiting_) {
    for (auto& req : reqs) {
      req->fail(std::make_exception_ptr(
          PeerError(str("rank ", rank_, ": receive of ", req->bytes, " bytes under tag ", hex(tag), " from peer ",
                        peer_, " failed: the peer closed its mpi transport first; hint: the peer stopped (an error "
                        "or shutdown), look at its log"),
                    peer_)));
    }
  }
  waiting_.clear();
}

void Pair::close(std::exception_ptr err, std::vector<std::unique_ptr<std::vector<uint8_t>>>* orphans) {
  if (closed_) return;
  closed_ = true;
  for (auto& [tag, reqs] : waiting_) {
    for (auto& req : reqs) req->fail(err);
  }
  waiting_.clear();
  arrived_.clear();
  if (headerReq_ != MPI_REQUEST_NULL) {
    MPI_Cancel(&headerReq_);
    MPI_Wait(&headerReq_, MPI_STATUS_IGNORE);
  }
  if (peerClosed_) return;
  // Tell the peer, so its receives from us fail now instead of at their deadline. Nobody
  // waits for this send; its buffer stays alive with the process.
  auto notice = std::make_unique<std::vector<uint8_t>>(sizeof(WireHeader), 0);
  WireHeader h{0, 0, 0, 0, 0, kFlagClose};
  std::memcpy(notice->data(), &h, sizeof(h));
  MPI_Request r;
  if (MPI_Isend(notice->data(), static_cast<int>(notice->size()), MPI_BYTE, peer_, kHeaderTag, comm_, &r) ==
      MPI_SUCCESS) {
    MPI_Request_free(&r);
    orphans->push_back(std::move(notice));
  }
}

}  // namespace chorus::comm::mpi

#endif  // CHORUS_HAVE_MPI
