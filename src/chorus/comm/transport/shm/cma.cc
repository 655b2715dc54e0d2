#include "chorus/comm/transport/shm/cma.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace chorus::comm::shm {

namespace {

// Reads a small /proc file; returns bytes read or -1.
ssize_t readSmallFile(const char* path, char* buf, size_t cap) {
  int fd;
  do {
    fd = ::open(path, O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return -1;
  ssize_t n;
  do {
    n = ::read(fd, buf, cap - 1);
  } while (n < 0 && errno == EINTR);
  ::close(fd);
  if (n >= 0) buf[n] = '\0';
  return n;
}

// State letter and start time from /proc/PID/stat. False if unreadable.
bool readStat(int pid, char* state, uint64_t* startTime) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
  char buf[1024];
  if (readSmallFile(path, buf, sizeof buf) <= 0) return false;
  // "pid (comm) S ppid ...": comm may hold spaces and ')', so parse after the last ')'.
  const char* p = std::strrchr(buf, ')');
  if (p == nullptr || p[1] == '\0') return false;
  p += 2;
  *state = *p;
  // The state is field 3; the start time is field 22, 19 fields further.
  for (int field = 3; field < 22; ++field) {
    p = std::strchr(p, ' ');
    if (p == nullptr) return false;
    ++p;
  }
  *startTime = std::strtoull(p, nullptr, 10);
  return true;
}

uint64_t pidNamespaceOf(const char* path) {
  struct stat st;
  if (::stat(path, &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_ino);
}

}  // namespace

ProcessIdentity selfIdentity() {
  ProcessIdentity id;
  id.pid = static_cast<int>(getpid());
  char state = 0;
  if (!readStat(id.pid, &state, &id.startTime)) id.startTime = 0;
  id.pidNamespace = pidNamespaceOf("/proc/self/ns/pid");
  return id;
}

bool processGone(const ProcessIdentity& id) {
  if (id.pid <= 0) return false;
  if (::kill(id.pid, 0) != 0 && errno == ESRCH) return true;
  char state = 0;
  uint64_t startTime = 0;
  if (!readStat(id.pid, &state, &startTime)) {
    // /proc may be missing (some sandboxes); kill() said the pid exists.
    return false;
  }
  if (state == 'Z' || state == 'X') return true;
  return id.startTime != 0 && startTime != id.startTime;
}

int cmaRead(int pid, void* local, uint64_t remote, size_t n) {
  auto* dst = static_cast<uint8_t*>(local);
  size_t done = 0;
  while (done < n) {
    struct iovec l{dst + done, n - done};
    struct iovec r{reinterpret_cast<void*>(static_cast<uintptr_t>(remote + done)), n - done};
    const ssize_t got = process_vm_readv(static_cast<pid_t>(pid), &l, 1, &r, 1, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (got == 0) return EFAULT;
    done += static_cast<size_t>(got);
  }
  return 0;
}

void allowCmaFromPeers() {
  char buf[16];
  if (readSmallFile("/proc/sys/kernel/yama/ptrace_scope", buf, sizeof buf) <= 0) return;
  if (buf[0] != '1') return;
  prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
}

}  // namespace chorus::comm::shm
