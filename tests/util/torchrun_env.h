// The torchrun variables for a rank forked by a test: RANK and WORLD_SIZE, rank 0 hosting the
// store on MASTER_ADDR 127.0.0.1:MASTER_PORT, a job secret and the calls' timeout, so that
// ProcessGroup::fromEnvironment() joins the job. Header-only.
#pragma once

#include <cstdlib>
#include <string>

namespace chorus::test {

inline void setTorchrunEnvironment(int rank, int world, int port, const std::string& secret, int timeoutMs) {
  setenv("RANK", std::to_string(rank).c_str(), 1);
  setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
  setenv("CHORUS_JOB_SECRET", secret.c_str(), 1);
  setenv("CHORUS_TIMEOUT_MS", std::to_string(timeoutMs).c_str(), 1);
}

}  // namespace chorus::test
