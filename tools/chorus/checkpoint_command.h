// `chorus checkpoint upgrade OLD NEW`: converts a version-1 checkpoint (a TorchScript archive,
// written by chorus before the data-only format) into the current data-only format.
#pragma once

#include <string>
#include <vector>

namespace chorus::tools {

int checkpointCommand(const std::vector<std::string>& args);
std::string checkpointHelp();

}  // namespace chorus::tools
