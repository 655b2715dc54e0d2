// The shared segment of one rank and the single-producer/single-consumer byte rings in it.
//
// Every rank creates one segment (shm_open + mmap) that its peers map as well:
//
//   ┌──────────────────────────┐ 0
//   │ SegmentHeader            │ identity (rank, pid, ...), doorbell, closed flag
//   ├──────────────────────────┤
//   │ RingControl[size]        │ one per sender s: head, tail, cma acks  (entry `rank` unused)
//   ├──────────────────────────┤ page aligned
//   │ ring data, sender 0      │ ringBytes each, one per peer, in rank order
//   │ ring data, sender 1 ...  │
//   └──────────────────────────┘
//
// Ring s of rank r carries s's frames to r: s is the only producer (it advances head), r the
// only consumer (it advances tail). head and tail count bytes since the start and only grow;
// both always stay multiples of 8, so an 8-aligned element never straddles the wrap point.
// Producer and consumer each keep a private copy of the index they own and a cached copy of the
// other's, so the shared cache lines move only when a ring actually fills up or drains.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "chorus/comm/transport/shm/futex.h"

namespace chorus::comm::shm {

inline constexpr uint64_t kSegmentMagic = 0x31726f6863726f63ull;  // "corchor1", little-endian
inline constexpr uint32_t kSegmentVersion = 1;
// Outstanding single-copy (CMA) sends per ordered pair; one more falls back to the ring.
inline constexpr int kAckSlots = 128;
inline constexpr uint64_t kMinRingBytes = 256;

struct SegmentHeader {
  std::atomic<uint64_t> magic;  // written last by the creator (release)
  uint32_t version;
  int32_t rank;
  int32_t size;
  int32_t pid;
  uint64_t pidStartTime;  // /proc/PID/stat field 22, tells a reused pid apart
  uint64_t pidNamespace;  // inode of /proc/self/ns/pid; pids only compare within one
  uint64_t ringBytes;
  uint64_t probeAddr;     // address, in the owner's memory, of a word that peers read by CMA
  uint64_t probeValue;    // the value they must find there
  alignas(64) Doorbell doorbell;
  alignas(64) std::atomic<uint32_t> closed;  // set once by close(); peers fail their requests
};

// Acknowledgement word of a CMA send: (seq + 1) << 2 | status.
enum AckStatus : uint64_t { kAckOk = 0, kAckMismatch = 1, kAckFailed = 2 };

struct RingControl {
  alignas(64) std::atomic<uint64_t> head;  // producer (sender) only
  alignas(64) std::atomic<uint64_t> tail;  // consumer (owner) only
  std::atomic<uint32_t> producerWaiting;   // the producer found the ring full: ring it on space
  alignas(64) std::atomic<uint32_t> cmaReadable;  // the owner can process_vm_readv the sender
  std::atomic<uint64_t> acks[kAckSlots];          // written by the owner, read by the sender
};
static_assert(std::atomic<uint64_t>::is_always_lock_free);

// Offsets inside the segment of rank `owner` in a job of `size` ranks.
size_t segmentBytes(int size, uint64_t ringBytes);
RingControl* ringControl(void* segment, int sender);
uint8_t* ringData(void* segment, int owner, int size, int sender, uint64_t ringBytes);

// A mapped POSIX shared-memory object. Move-only; unmaps on destruction and unlinks the name
// if this process created it and has not unlinked it yet.
class SharedSegment {
 public:
  SharedSegment() = default;
  ~SharedSegment();
  SharedSegment(SharedSegment&& other) noexcept;
  SharedSegment& operator=(SharedSegment&& other) noexcept;
  SharedSegment(const SharedSegment&) = delete;
  SharedSegment& operator=(const SharedSegment&) = delete;

  // Creates `name` exclusively (mode 0600), reserves `bytes` of memory for it (so a full
  // /dev/shm fails here with a clear message rather than SIGBUS later) and maps it. Throws
  // SystemError / Error naming `who`.
  static SharedSegment create(const std::string& name, size_t bytes, const std::string& who);
  // Maps an existing object at its current size.
  static SharedSegment open(const std::string& name, const std::string& who);

  void unlink();  // idempotent; only the creator unlinks
  void* base() const { return base_; }
  size_t bytes() const { return bytes_; }
  const std::string& name() const { return name_; }

 private:
  void release();
  void* base_ = nullptr;
  size_t bytes_ = 0;
  std::string name_;
  bool linked_ = false;  // created here and not yet unlinked
};

// The sender's side of one ring.
class RingWriter {
 public:
  RingWriter() = default;
  RingWriter(RingControl* ctl, uint8_t* data, uint64_t capacity)
      : ctl_(ctl), data_(data), cap_(capacity), head_(ctl->head.load(std::memory_order_relaxed)),
        published_(head_), tailCache_(ctl->tail.load(std::memory_order_acquire)) {}

  // Bytes that can be written now; rereads the consumer's tail only when the cached value
  // leaves fewer than `want` bytes.
  uint64_t writable(uint64_t want) {
    uint64_t free = cap_ - (head_ - tailCache_);
    if (free < want) {
      tailCache_ = ctl_->tail.load(std::memory_order_seq_cst);
      free = cap_ - (head_ - tailCache_);
    }
    return free;
  }
  // Bytes written but not yet published.
  uint64_t unpublished() const { return head_ - published_; }
  // Copies n <= writable(n) bytes at the private head, wrapping.
  void write(const void* src, size_t n) {
    const uint64_t at = head_ % cap_;
    const uint64_t first = n < cap_ - at ? n : cap_ - at;
    std::memcpy(data_ + at, src, first);
    if (first < n) std::memcpy(data_, static_cast<const uint8_t*>(src) + first, n - first);
    head_ += n;
  }
  // Skips n <= writable(n) bytes (padding).
  void skip(size_t n) { head_ += n; }
  // Makes everything written visible to the consumer; true if there was anything.
  bool publish() {
    if (head_ == published_) return false;
    ctl_->head.store(head_, std::memory_order_seq_cst);
    published_ = head_;
    return true;
  }
  // Asks the consumer to ring our doorbell when it frees space; then rereads the tail (the
  // Dekker pair of RingReader::publish) and returns the bytes writable now.
  uint64_t askForSpace() {
    ctl_->producerWaiting.store(1, std::memory_order_seq_cst);
    tailCache_ = ctl_->tail.load(std::memory_order_seq_cst);
    return cap_ - (head_ - tailCache_);
  }

 private:
  RingControl* ctl_ = nullptr;
  uint8_t* data_ = nullptr;
  uint64_t cap_ = 0;
  uint64_t head_ = 0;
  uint64_t published_ = 0;
  uint64_t tailCache_ = 0;
};

// The receiver's side of one ring.
class RingReader {
 public:
  RingReader() = default;
  RingReader(RingControl* ctl, const uint8_t* data, uint64_t capacity)
      : ctl_(ctl), data_(data), cap_(capacity), tail_(ctl->tail.load(std::memory_order_relaxed)),
        published_(tail_), headCache_(ctl->head.load(std::memory_order_acquire)) {}

  // Bytes readable now; rereads the producer's head only when the cached value leaves fewer
  // than `want` bytes.
  uint64_t readable(uint64_t want) {
    uint64_t avail = headCache_ - tail_;
    if (avail < want) {
      headCache_ = ctl_->head.load(std::memory_order_acquire);
      avail = headCache_ - tail_;
    }
    return avail;
  }
  // Rereads the producer's head (used once more before declaring a closed peer's ring empty).
  uint64_t refresh() {
    headCache_ = ctl_->head.load(std::memory_order_seq_cst);
    return headCache_ - tail_;
  }
  // Copies n <= readable(n) bytes at the private tail without consuming them.
  void copyOut(void* dst, size_t n) const {
    const uint64_t at = tail_ % cap_;
    const uint64_t first = n < cap_ - at ? n : cap_ - at;
    std::memcpy(dst, data_ + at, first);
    if (first < n) std::memcpy(static_cast<uint8_t*>(dst) + first, data_, n - first);
  }
  // Calls f(ptr, len) for the (one or two) contiguous pieces of the next n <= readable(n) bytes.
  template <typename F>
  void forEachPiece(size_t n, F&& f) const {
    const uint64_t at = tail_ % cap_;
    const uint64_t first = n < cap_ - at ? n : cap_ - at;
    if (first > 0) f(data_ + at, static_cast<size_t>(first));
    if (first < n) f(data_, static_cast<size_t>(n - first));
  }
  void consume(size_t n) { tail_ += n; }
  // Hands consumed space back to the producer. Returns true when the producer asked to be
  // told (the caller then rings the producer's doorbell).
  bool publish() {
    if (tail_ == published_) return false;
    ctl_->tail.store(tail_, std::memory_order_seq_cst);
    published_ = tail_;
    return ctl_->producerWaiting.load(std::memory_order_seq_cst) != 0 &&
           ctl_->producerWaiting.exchange(0, std::memory_order_seq_cst) != 0;
  }

 private:
  RingControl* ctl_ = nullptr;
  const uint8_t* data_ = nullptr;
  uint64_t cap_ = 0;
  uint64_t tail_ = 0;
  uint64_t published_ = 0;
  uint64_t headCache_ = 0;
};

}  // namespace chorus::comm::shm
