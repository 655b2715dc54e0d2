// What the shm transport needs to know about peer processes: who they are (pid, start time,
// pid namespace), whether they are still alive, and reading their memory directly with
// cross-memory attach (process_vm_readv, "CMA"), the single copy behind large shm messages.
#pragma once

#include <cstddef>
#include <cstdint>

namespace chorus::comm::shm {

struct ProcessIdentity {
  int pid = 0;
  uint64_t startTime = 0;     // clock ticks since boot (/proc/PID/stat field 22); 0 = unknown
  uint64_t pidNamespace = 0;  // inode of /proc/PID/ns/pid; 0 = unknown
};

// This process. Reads /proc once per call.
ProcessIdentity selfIdentity();

// True when `id` has exited: no such pid, a zombie not yet reaped, or the pid now belongs to a
// process with another start time. Only meaningful within one pid namespace. Non-blocking
// (a kill(pid, 0) and a read of /proc/PID/stat).
bool processGone(const ProcessIdentity& id);

// Copies n bytes from address `remote` of process `pid` into `local`, finishing partial
// transfers and retrying EINTR. Returns 0, or the errno of the failure (EPERM/ENOSYS: CMA not
// allowed here; ESRCH: the process is gone; EFAULT: the range is not mapped there).
int cmaRead(int pid, void* local, uint64_t remote, size_t n);

// Under Yama ptrace_scope=1 only a process's ancestors may read it, so sibling ranks could not
// use CMA; like Open MPI's CMA support, this lets any process of the same user attach
// (PR_SET_PTRACER_ANY). Does nothing where Yama is absent or in another mode.
void allowCmaFromPeers();

}  // namespace chorus::comm::shm
