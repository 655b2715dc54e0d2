#include "chorus/comm/transport/shm/ring.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <utility>

#include "chorus/common/error.h"

namespace chorus::comm::shm {

namespace {

constexpr size_t kPage = 4096;

constexpr size_t alignUp(size_t x, size_t a) { return (x + a - 1) / a * a; }

constexpr size_t headerBytes() { return alignUp(sizeof(SegmentHeader), 64); }
size_t controlsEnd(int size) { return headerBytes() + static_cast<size_t>(size) * sizeof(RingControl); }
size_t dataStart(int size) { return alignUp(controlsEnd(size), kPage); }

int openRetrying(const std::string& name, int flags, mode_t mode) {
  int fd;
  do {
    fd = shm_open(name.c_str(), flags, mode);
  } while (fd < 0 && errno == EINTR);
  return fd;
}

void closeFd(int fd) {
  // close() is not retried on EINTR: on Linux the descriptor is released either way.
  ::close(fd);
}

}  // namespace

size_t segmentBytes(int size, uint64_t ringBytes) {
  const size_t rings = size > 1 ? static_cast<size_t>(size - 1) : 0;
  return dataStart(size) + rings * static_cast<size_t>(ringBytes);
}

RingControl* ringControl(void* segment, int sender) {
  return reinterpret_cast<RingControl*>(static_cast<uint8_t*>(segment) + headerBytes()) + sender;
}

uint8_t* ringData(void* segment, int owner, int size, int sender, uint64_t ringBytes) {
  const size_t slot = static_cast<size_t>(sender < owner ? sender : sender - 1);
  return static_cast<uint8_t*>(segment) + dataStart(size) + slot * static_cast<size_t>(ringBytes);
}

SharedSegment::~SharedSegment() { release(); }

SharedSegment::SharedSegment(SharedSegment&& other) noexcept
    : base_(std::exchange(other.base_, nullptr)), bytes_(std::exchange(other.bytes_, 0)),
      name_(std::move(other.name_)), linked_(std::exchange(other.linked_, false)) {}

SharedSegment& SharedSegment::operator=(SharedSegment&& other) noexcept {
  if (this != &other) {
    release();
    base_ = std::exchange(other.base_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    name_ = std::move(other.name_);
    linked_ = std::exchange(other.linked_, false);
  }
  return *this;
}

void SharedSegment::release() {
  unlink();
  if (base_ != nullptr) munmap(base_, bytes_);
  base_ = nullptr;
  bytes_ = 0;
}

void SharedSegment::unlink() {
  if (linked_) {
    shm_unlink(name_.c_str());
    linked_ = false;
  }
}

SharedSegment SharedSegment::create(const std::string& name, size_t bytes, const std::string& who) {
  int fd = openRetrying(name, O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) {
    const int err = errno;
    throw SystemError(str(who, ": cannot create shared-memory segment /dev/shm", name,
                          err == EEXIST ? " (it already exists: a name collision, retry)" : ""),
                      err);
  }
  SharedSegment seg;
  seg.name_ = name;
  seg.linked_ = true;
  int rc;
  do {
    rc = posix_fallocate(fd, 0, static_cast<off_t>(bytes));
  } while (rc == EINTR);
  if (rc != 0) {
    closeFd(fd);
    throw SystemError(str(who, ": cannot reserve ", bytes, " bytes of shared memory for /dev/shm", name,
                          "; enlarge /dev/shm (docker: --shm-size) or lower CHORUS_SHM_RING_BYTES"),
                      rc);
  }
  void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int err = errno;
  closeFd(fd);
  if (base == MAP_FAILED) throw SystemError(str(who, ": cannot map /dev/shm", name), err);
  seg.base_ = base;
  seg.bytes_ = bytes;
  return seg;
}

SharedSegment SharedSegment::open(const std::string& name, const std::string& who) {
  int fd = openRetrying(name, O_RDWR, 0);
  if (fd < 0) {
    throw SystemError(str(who, ": cannot open shared-memory segment /dev/shm", name,
                          "; the peer must run on this host (use the tcp transport across hosts)"),
                      errno);
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    closeFd(fd);
    throw SystemError(str(who, ": cannot stat /dev/shm", name), err);
  }
  const size_t bytes = static_cast<size_t>(st.st_size);
  if (bytes < sizeof(SegmentHeader)) {
    closeFd(fd);
    throw Error(str(who, ": shared-memory segment /dev/shm", name, " is only ", bytes,
                    " bytes; it was not created by a chorus shm transport"));
  }
  void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int err = errno;
  closeFd(fd);
  if (base == MAP_FAILED) throw SystemError(str(who, ": cannot map /dev/shm", name), err);
  SharedSegment seg;
  seg.name_ = name;
  seg.base_ = base;
  seg.bytes_ = bytes;
  return seg;
}

}  // namespace chorus::comm::shm
