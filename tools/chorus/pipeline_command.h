// `chorus pipeline show --schedule 1f1b --stages 4 --micro-batches 8 [--chunks 2]`: prints a
// pipeline schedule (parallel/pipeline/schedule.h) as a text grid of ranks x time, after the
// checker has proved it sound, with each rank's bubble and peak stored activations, so a user
// can see a schedule before running it. No processes, no model.
#pragma once

#include <string>
#include <vector>

namespace chorus::tools {

int pipelineCommand(const std::vector<std::string>& args);
std::string pipelineHelp();

}  // namespace chorus::tools
