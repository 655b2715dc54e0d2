// `chorus env`: the table of every CHORUS_* variable (common/env.cc) with its default, the
// value this process sees, and its meaning.
#pragma once

#include <string>
#include <vector>

namespace chorus::tools {

// The table as text, one variable per line, columns aligned.
std::string envTable();

int envCommand(const std::vector<std::string>& args);
std::string envHelp();

}  // namespace chorus::tools
