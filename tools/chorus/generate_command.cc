// `chorus generate` (see generate_command.h).
#include "generate_command.h"

#include <cmath>
#include <filesystem>
#include <iostream>

#include "args.h"
#include "chorus/common/error.h"
#include "chorus/train/config.h"
#include "chorus/train/gpt.h"
#include "chorus/train/optim.h"
#include "chorus/train/sharded_checkpoint.h"
#include "chorus/train/text_task.h"

namespace chorus::tools {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kMaxTokens = 1000000;

ArgParser generateParser() {
  ArgParser p("chorus generate", ArgParser::Positional::kReject);
  p.addValue("--prompt", "TEXT", "the text the sample continues (empty: start from a newline)", "");
  p.addValue("--tokens", "N", str("bytes to sample, 1 to ", kMaxTokens), "200");
  p.addValue("--temperature", "T", "softmax temperature; 0 takes the most likely byte every time", "0.8");
  p.addValue("--top-k", "K", "draw from the K most likely bytes only (0: all 256)", "40");
  p.addValue("--seed", "S", "seed of the sampling (the same seed gives the same text)", "0");
  p.addValue("--config", "PATH", "the run's config (default: config.toml next to the checkpoints folder)");
  p.addSwitch("-h,--help", "show this help");
  return p;
}

// The value flags, so that their values are not taken for the CHECKPOINT argument.
bool takesValue(const std::string& arg) {
  for (const char* f : {"--prompt", "--tokens", "--temperature", "--top-k", "--seed", "--config"})
    if (arg == f) return true;
  return false;
}

double parseTemperature(const std::string& v) {
  size_t used = 0;
  double t = -1;
  try {
    t = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != v.size() || v.empty() || !(t >= 0) || !std::isfinite(t) || t > 100)
    throw UsageError(str("chorus generate: --temperature must be a number in [0, 100] (0: greedy), not '", v, "'"));
  return t;
}

}  // namespace

std::string generateHelp() {
  return str(
      "usage: chorus generate CHECKPOINT [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K]\n"
      "                       [--seed S] [--config PATH]\n"
      "\n"
      "Samples text from a GPT that `chorus train` trained (model.name = \"gpt\", configs/gpt.toml):\n"
      "builds the run's model in this process, loads CHECKPOINT (a ckpt-<step>.pt of\n"
      "<output.dir>/checkpoints; a tensor-parallel run's shard files must lie next to it, and\n"
      "any parallel.tp loads), and prints the prompt followed by the sampled bytes. The model's\n"
      "shape comes from the run's config: <output.dir>/config.toml, which the run wrote next to\n"
      "the checkpoints folder, or --config.\n"
      "\n"
      "  chorus generate runs/gpt/checkpoints/ckpt-2000.pt --prompt \"The \" --tokens 300\n"
      "\n"
      "flags:\n",
      generateParser().flagTable());
}

std::string generateConfigPath(const std::string& checkpoint, const std::string& given) {
  if (!given.empty()) {
    if (!fs::is_regular_file(given))
      throw InvalidArgument(str("--config ", given, " is not a file; name the run's config.toml (in its output.dir)"));
    return given;
  }
  const fs::path beside = fs::path(checkpoint).parent_path().parent_path() / "config.toml";
  if (!fs::is_regular_file(beside))
    throw InvalidArgument(str("no config for ", checkpoint, ": ", beside.string(),
                              " (the config.toml chorus train writes in output.dir, next to checkpoints/) does not "
                              "exist, and no --config was given; pass the run's config with --config PATH"));
  return beside.string();
}

int generateCommand(const std::vector<std::string>& args) {
  // CHECKPOINT may come before, between or after the flags.
  std::vector<std::string> flags, positional;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") {
      positional.insert(positional.end(), args.begin() + static_cast<std::ptrdiff_t>(i) + 1, args.end());
      break;
    }
    if (a.size() >= 2 && a[0] == '-') {
      flags.push_back(a);
      if (takesValue(a) && i + 1 < args.size()) flags.push_back(args[++i]);
    } else {
      positional.push_back(a);
    }
  }
  ArgParser p = generateParser();
  p.parse(flags);
  if (p.has("--help")) {
    std::cout << generateHelp();
    return 0;
  }
  if (positional.size() != 1)
    throw UsageError(str("chorus generate: it takes one CHECKPOINT (got ", positional.size(),
                         "), e.g. runs/gpt/checkpoints/ckpt-2000.pt. Run `chorus generate --help`."));
  const std::string checkpoint = positional[0];
  const int64_t tokens = p.getInt("--tokens", 1, kMaxTokens);
  const double temperature = parseTemperature(p.get("--temperature"));
  const int64_t topK = p.getInt("--top-k", 0, 256);
  const int64_t seed = p.getInt("--seed", 0, INT64_MAX);
  const std::string prompt = p.get("--prompt");

  if (!fs::is_regular_file(checkpoint))
    throw InvalidArgument(str("checkpoint ", checkpoint, " does not exist (or is not a file); the run's checkpoints are "
                              "in <output.dir>/checkpoints, named ckpt-<step>.pt"));
  const std::string configPath = generateConfigPath(checkpoint, p.get("--config"));
  // World size 0: the worker-count rules belong to the run, not to this one process.
  train::Config cfg = train::loadConfig(configPath, {}, 0);
  if (cfg.model.name != "gpt")
    throw InvalidArgument(str(configPath, " describes model.name = \"", cfg.model.name,
                              "\"; chorus generate samples from a GPT (model.name = \"gpt\", e.g. configs/gpt.toml)"));
  // The unsplit model: the checkpoint's shards (any tp) are joined on load.
  train::GptOptions o = train::gptOptions(cfg);
  o.sequenceParallel = false;
  train::Gpt model(o);
  auto optimizer = train::makeOptimizer(cfg.optim, model->parameters());
  try {
    train::loadShardedCheckpoint(checkpoint, *model, *optimizer, 0, 1);
  } catch (const Error& e) {
    throw InvalidArgument(str(checkpoint, " does not load into the GPT of ", configPath, " (layers ", o.layers,
                              ", heads ", o.heads, ", embed ", o.embed, ", context ", o.context,
                              "): ", e.what(), "; is it this run's checkpoint, of a GPT?"));
  }
  const std::string text = train::generate(model, prompt, tokens, temperature, topK, static_cast<uint64_t>(seed), nullptr);
  std::cout << prompt << text << "\n";
  std::cout.flush();
  return 0;
}

}  // namespace chorus::tools
