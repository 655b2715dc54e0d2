// `chorus checkpoint`: tools for checkpoint files.
//   upgrade OLD NEW    converts a version-1 checkpoint (a TorchScript archive, written by chorus
//                      before the data-only format) into the current data-only format.
//   convert CKPT OUT   joins a checkpoint (tensor-parallel shards or plain) into one file that a
//                      plain LibTorch program loads (torch::pickle_load, or torch.load in Python).
#pragma once

#include <string>
#include <vector>

namespace chorus::tools {

int checkpointCommand(const std::vector<std::string>& args);
std::string checkpointHelp();

}  // namespace chorus::tools
