#include "checkpoint_command.h"

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <map>

#include "args.h"
#include "chorus/common/error.h"
#include "chorus/common/tensor_file.h"
#include "chorus/train/checkpoint.h"
#include "chorus/train/sharded_checkpoint.h"

namespace chorus::tools {

std::string checkpointHelp() {
  return "usage: chorus checkpoint upgrade OLD NEW\n"
         "       chorus checkpoint convert CKPT OUT [--with-optimizer]\n"
         "       chorus checkpoint diff A B [--atol X] [--rtol Y]\n"
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
         "No config is needed: the layout is in the files. OUT must not exist.\n"
         "\n"
         "diff: compares two plain checkpoints entry by entry (parameters, buffers, optimizer state,\n"
         "the loop's position): prints the largest difference of each entry that differs and of all,\n"
         "and exits 0 when every entry of one is in the other with the same shape and every element\n"
         "is within atol + rtol x |B's| (default 0: bit for bit), else 1.\n";
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

int diffCommand(const std::vector<std::string>& args) {
  std::vector<std::string> files;
  double atol = 0, rtol = 0;
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "-h" || args[i] == "--help") {
      std::cout << checkpointHelp();
      return 0;
    }
    if (args[i] == "--atol" || args[i] == "--rtol") {
      if (i + 1 >= args.size()) throw UsageError(str("chorus checkpoint diff: ", args[i], " needs a value"));
      char* end = nullptr;
      const double v = std::strtod(args[i + 1].c_str(), &end);
      if (args[i + 1].empty() || *end != '\0')
        throw UsageError(str("chorus checkpoint diff: ", args[i], " takes a number, not '", args[i + 1], "'"));
      if (!(v >= 0)) throw UsageError(str("chorus checkpoint diff: ", args[i], " must be >= 0, not ", args[i + 1]));
      (args[i] == "--atol" ? atol : rtol) = v;
      ++i;
      continue;
    }
    if (!args[i].empty() && args[i][0] == '-')
      throw UsageError(str("chorus checkpoint diff: unknown flag '", args[i], "'; it takes A B, --atol and --rtol"));
    files.push_back(args[i]);
  }
  if (files.size() != 2)
    throw UsageError(str("chorus checkpoint diff: it takes two files, A B (got ", files.size(), ")"));
  auto entries = [](const std::string& path) {
    const FramedFile f = train::readCheckpointFile(path);
    std::map<std::string, torch::Tensor> out;
    for (auto& [name, t] : train::decodeTensors(f.payload.data(), f.payload.size(), str("checkpoint ", path)))
      out[name] = t;
    return out;
  };
  const auto a = entries(files[0]), b = entries(files[1]);
  bool same = true;
  double worst = 0;
  for (const auto& [name, ta] : a) {
    const auto it = b.find(name);
    if (it == b.end()) {
      std::cout << name << ": only in " << files[0] << "\n";
      same = false;
      continue;
    }
    const torch::Tensor& tb = it->second;
    if (ta.sizes() != tb.sizes()) {
      std::cout << name << ": shape " << ta.sizes() << " against " << tb.sizes() << "\n";
      same = false;
      continue;
    }
    if (ta.numel() == 0) continue;
    const torch::Tensor x = ta.to(torch::kDouble), y = tb.to(torch::kDouble);
    const double diff = (x - y).abs().max().item<double>();
    const bool within = ((x - y).abs() <= atol + rtol * y.abs()).all().item<bool>();
    worst = std::max(worst, diff);
    if (diff > 0) std::cout << name << ": largest difference " << diff << (within ? "" : " (beyond the tolerance)") << "\n";
    same = same && within;
  }
  for (const auto& [name, tb] : b) {
    if (!a.count(name)) {
      std::cout << name << ": only in " << files[1] << "\n";
      same = false;
    }
  }
  std::cout << (same ? "same" : "different") << " within atol " << atol << " and rtol " << rtol << " (" << a.size()
            << " entries; largest difference " << worst << ")\n";
  return same ? 0 : 1;
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
  if (args[0] == "diff") return diffCommand(args);
  if (args[0] != "upgrade")
    throw UsageError(str("chorus checkpoint: unknown subcommand '", args[0],
                         "'; there are: upgrade, convert, diff. Run `chorus help checkpoint`."));
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
