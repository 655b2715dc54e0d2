// `chorus train [CONFIG.toml] [--set key=value ...] [--nproc N] [--resume] [--trace FILE]`:
// the training job. With --nproc it validates the config for N workers and then launches N
// copies of itself on this host; under `chorus launch`, torchrun variables, mpirun or srun it
// joins the job and trains as one rank.
#pragma once

#include <string>
#include <vector>

namespace chorus::tools {

int trainCommand(const std::vector<std::string>& args);
extern const char* kTrainHelp;

}  // namespace chorus::tools
