#include "checkpoint_command.h"

#include <iostream>

#include "args.h"
#include "chorus/common/error.h"
#include "chorus/train/checkpoint.h"
#include "chorus/train/sharded_checkpoint.h"

namespace chorus::tools {

std::string checkpointHelp() {
  return "usage: chorus checkpoint upgrade OLD NEW\n"
         "       chorus checkpoint convert CKPT OUT [--with-optimizer]\n"
         "\n"
         "upgrade: converts OLD, a version-1 checkpoint (written by chorus before checkpoints became data\n"
         "only), into NEW in the current format, every tensor bit for bit: the model, the\n"
         "optimizer's state, the loop's position and the compression state. Reading OLD runs\n"
         "TorchScript code stored in it, which is why `chorus train` no longer loads such files:\n"
         "upgrade only a file you trust (one your own runs wrote). NEW must not exist, unless it\n"
         "is OLD itself (converted in place, atomically). Resume from NEW with --resume-from, or\n"
         "give it its old name in output.dir/checkpoints for --resume.\n"
         "\n"
         "convert: joins the checkpoint CKPT (the main file ckpt-<step>.pt of a tensor-parallel run,\n"
         "whose shard files ckpt-<step>.pt.tp<r>-of-<k> lie next to it, or a plain checkpoint) into\n"
         "OUT, one file that a LibTorch program loads without chorus: a dictionary of tensors by\n"
         "parameter name, full size (vocabulary padding dropped), written with torch::pickle_save.\n"
         "Load it with torch::pickle_load(bytes).toGenericDict() in C++ or torch.load(OUT) in Python.\n"
         "--with-optimizer adds the optimizer's state as \"optim/<name>/<field>\" (exp_avg, ...).\n"
         "No config is needed: the layout is in the files. OUT must not exist.\n";
}

namespace {

int convertCommand(const std::vector<std::string>& args) {
  std::vector<std::string> files;
  bool withOptimizer = false;
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "-h" || args[i] == "--help") {
      std::cout << checkpointHelp();
      return 0;
    }
    if (args[i] == "--with-optimizer") {
      withOptimizer = true;
      continue;
    }
    if (!args[i].empty() && args[i][0] == '-' && args[i] != "-")
      throw UsageError(str("chorus checkpoint convert: unknown flag '", args[i],
                           "'; it takes CKPT OUT and the flag --with-optimizer"));
    files.push_back(args[i]);
  }
  if (files.size() != 2)
    throw UsageError(str("chorus checkpoint convert: it takes two files, CKPT OUT (got ", files.size(),
                         "). Run `chorus help checkpoint`."));
  train::ConvertReport r = train::convertCheckpoint(files[0], files[1], withOptimizer);
  std::cout << "converted " << files[0] << " (" << r.layout.describe() << "; global step " << r.layout.globalStep
            << ") to " << files[1] << ": " << r.tensors << " tensors: " << r.parameters << " parameters ("
            << r.parameterElements << " elements), " << r.buffers << " buffers";
  if (withOptimizer) std::cout << ", " << r.optimizerTensors << " " << r.optimizer << " state tensors";
  std::cout << "\n";
  return 0;
}

}  // namespace

int checkpointCommand(const std::vector<std::string>& args) {
  if (args.empty()) {
    std::cerr << "chorus checkpoint: which subcommand? `chorus checkpoint upgrade OLD NEW` or "
                 "`chorus checkpoint convert CKPT OUT`.\n\n"
              << checkpointHelp();
    return 2;
  }
  if (args[0] == "-h" || args[0] == "--help") {
    std::cout << checkpointHelp();
    return 0;
  }
  if (args[0] == "convert") return convertCommand(args);
  if (args[0] != "upgrade")
    throw UsageError(str("chorus checkpoint: unknown subcommand '", args[0],
                         "'; there are: upgrade, convert. Run `chorus help checkpoint`."));
  std::vector<std::string> files;
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "-h" || args[i] == "--help") {
      std::cout << checkpointHelp();
      return 0;
    }
    if (!args[i].empty() && args[i][0] == '-' && args[i] != "-")
      throw UsageError(str("chorus checkpoint upgrade: unknown flag '", args[i], "'; it takes two files, OLD NEW"));
    files.push_back(args[i]);
  }
  if (files.size() != 2)
    throw UsageError(str("chorus checkpoint upgrade: it takes two files, OLD NEW (got ", files.size(),
                         "). Run `chorus help checkpoint`."));
  train::UpgradeReport r = train::upgradeCheckpoint(files[0], files[1]);
  std::cout << "upgraded " << files[0] << " (version 1) to " << files[1] << " (version 2, data only): " << r.params
            << " parameters, " << r.buffers << " buffers, " << r.optimizer << " state for " << r.optimizerStates
            << " parameters, global step " << r.globalStep << "\n";
  return 0;
}

}  // namespace chorus::tools
