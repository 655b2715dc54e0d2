// `chorus generate CHECKPOINT --prompt TEXT --tokens N`: samples text from a trained GPT.
// It builds the run's GPT unsplit (tp 1) in this process from the run's config (the
// config.toml that `chorus train` writes in output.dir, the parent of the checkpoint's folder,
// or --config), loads the checkpoint whatever tp wrote it (the shards are joined on load), and
// prints the prompt followed by the sampled bytes (train::generate) to stdout.
#pragma once

#include <string>
#include <vector>

namespace chorus::tools {

int generateCommand(const std::vector<std::string>& args);
std::string generateHelp();

// The config `chorus generate` reads for `checkpoint`: `given` when not empty (it must exist),
// else <parent of the checkpoint's folder>/config.toml. Throws InvalidArgument naming both
// places when there is none.
std::string generateConfigPath(const std::string& checkpoint, const std::string& given);

}  // namespace chorus::tools
