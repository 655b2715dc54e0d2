// `chorus bench collectives`: an nccl-tests style sweep of one collective over message sizes.
//
// Started outside a job it launches --ranks copies of itself through launchLocal() (only
// rank 0 prints); started inside one (CHORUS_RANK from `chorus launch`, OMPI_COMM_WORLD_RANK
// under mpirun, RANK/WORLD_SIZE from torchrun-style launchers) it joins that job through
// ProcessGroup::fromEnvironment().
//
// Each row: bytes count dtype algo time_us algbw_GBps busbw_GBps wrong, where time_us is the
// mean time of one call over the timed iterations, the slowest rank's; algbw = bytes / time;
// busbw = algbw x the collective's bus factor (nccl-tests' definition, so numbers compare):
//   allreduce 2(n-1)/n, reduce_scatter (n-1)/n, allgather (n-1)/n, broadcast 1, alltoall (n-1)/n.
// `bytes` is the size of the larger buffer (nccl-tests' convention): the whole all-reduce
// buffer, the reduce-scatter input, the all-gather output, the all-to-all buffer.
// `wrong` counts the elements, summed over ranks, that differ from the exactly known result
// of a small-integer input pattern.
#pragma once

#include <string>
#include <vector>

namespace chorus::tools {

// Runs the command with its arguments (after "collectives"). Returns the exit status.
int benchCollectivesCommand(const std::vector<std::string>& args);
std::string benchCollectivesHelp();

// True when this process was started as one rank of a job (chorus launch, mpirun, torchrun).
bool insideJob();

}  // namespace chorus::tools
