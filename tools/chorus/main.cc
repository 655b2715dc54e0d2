// The `chorus` command line: dispatches to the commands and turns their errors into messages
// and exit statuses. The only place in chorus that decides the process's exit status.
//
// Exit statuses: 0 success; 1 a command failed (its message says why); 2 a usage error (the
// message names what is wrong and the valid choices); 3 training diverged (DivergenceError),
// which launch.h's kFatalExitStatus makes end the whole job even where the launcher lets
// workers fail alone; a launched job's own status otherwise.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "args.h"
#include "bench_collectives.h"
#include "checkpoint_command.h"
#include "chorus/common/env.h"
#include "chorus/common/error.h"
#include "chorus/common/malloc_tuning.h"
#include "chorus/common/version.h"
#include "env_command.h"
#include "generate_command.h"
#include "launch.h"
#include "pipeline_command.h"
#include "train_command.h"

namespace chorus::tools {
namespace {

const char* kOverview =
    "usage: chorus <command> [flags]\n"
    "\n"
    "commands:\n"
    "  train               train a model with data-parallel workers (chorus train --nproc 2)\n"
    "  generate            sample text from a trained GPT checkpoint (chorus generate CKPT --prompt ...)\n"
    "  launch              start N ranks of a program on this host (like torchrun)\n"
    "  bench collectives   measure a collective over message sizes (like nccl-tests)\n"
    "  env                 list the CHORUS_* environment variables, their values and defaults\n"
    "  checkpoint upgrade  convert a checkpoint of an older chorus to the data-only format\n"
    "  checkpoint convert  join a (tensor-parallel) checkpoint into one LibTorch file\n"
    "  pipeline show       print a pipeline schedule as a grid of ranks x time, checked\n"
    "  version             print the chorus version and the git commit it was built from\n"
    "  help [COMMAND]      show this overview, or a command's flags\n"
    "\n"
    "Run `chorus help <command>` or `chorus <command> --help` for its flags.\n";

const char* kBenchOverview =
    "usage: chorus bench <benchmark> [flags]\n"
    "\n"
    "benchmarks:\n"
    "  collectives   allreduce, reduce_scatter, allgather, broadcast or alltoall over a size sweep\n"
    "\n"
    "Run `chorus help bench collectives` for its flags.\n";

const std::vector<std::string> kCommands = {"train", "generate", "launch",     "bench",   "env",
                                            "help",  "version",  "checkpoint", "pipeline"};

ArgParser versionParser() {
  ArgParser p("chorus version", ArgParser::Positional::kReject);
  p.addSwitch("-h,--help", "show this help");
  return p;
}

std::string versionHelp() {
  return str(
      "usage: chorus version   (or chorus --version)\n"
      "\n"
      "Prints one line: chorus, its version, and the git commit it was built from (-dirty when\n"
      "the tree had uncommitted changes; unknown when not built from a git checkout), e.g.\n"
      "  chorus 0.1.0 (commit 0123456789ab)\n"
      "\n"
      "flags:\n",
      versionParser().flagTable());
}

int versionCommand(const std::vector<std::string>& args) {
  ArgParser p = versionParser();
  p.parse(args);
  if (p.has("--help")) {
    std::cout << versionHelp();
    return 0;
  }
  std::cout << versionLine() << "\n";
  return 0;
}

std::string closest(const std::string& word, const std::vector<std::string>& choices) {
  std::string best;
  size_t bestDist = 3;
  for (const auto& c : choices) {
    size_t d = editDistance(word, c);
    if (d < bestDist) {
      bestDist = d;
      best = c;
    }
  }
  return best;
}

[[noreturn]] void unknown(const std::string& what, const std::string& word, const std::vector<std::string>& choices,
                          const std::string& helpCmd) {
  std::string msg = str("chorus: unknown ", what, " '", word, "'");
  std::string near = closest(word, choices);
  if (!near.empty()) msg += str(" (did you mean ", near, "?)");
  msg += "; the choices are: ";
  for (size_t i = 0; i < choices.size(); ++i) msg += (i > 0 ? ", " : "") + choices[i];
  msg += str(". Run `", helpCmd, "` for usage.");
  throw UsageError(msg);
}

int benchCommand(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    if (args.empty()) {
      std::cerr << "chorus bench: which benchmark? `chorus bench collectives` is the one there is.\n\n" << kBenchOverview;
      return 2;
    }
    std::cout << kBenchOverview;
    return 0;
  }
  if (args[0] == "collectives") return benchCollectivesCommand({args.begin() + 1, args.end()});
  unknown("benchmark", args[0], {"collectives"}, "chorus help bench");
}

int helpCommand(const std::vector<std::string>& args) {
  if (args.empty()) {
    std::cout << kOverview;
    return 0;
  }
  const std::string& cmd = args[0];
  if (cmd == "train") {
    std::cout << kTrainHelp;
  } else if (cmd == "generate") {
    std::cout << generateHelp();
  } else if (cmd == "launch") {
    std::cout << launchHelp();
  } else if (cmd == "bench") {
    if (args.size() >= 2 && args[1] == "collectives") {
      std::cout << benchCollectivesHelp();
    } else if (args.size() >= 2) {
      unknown("benchmark", args[1], {"collectives"}, "chorus help bench");
    } else {
      std::cout << kBenchOverview;
    }
  } else if (cmd == "env") {
    std::cout << envHelp();
  } else if (cmd == "checkpoint") {
    std::cout << checkpointHelp();
  } else if (cmd == "pipeline") {
    std::cout << pipelineHelp();
  } else if (cmd == "version") {
    std::cout << versionHelp();
  } else if (cmd == "help") {
    std::cout << kOverview;
  } else {
    unknown("command", cmd, kCommands, "chorus help");
  }
  return 0;
}

int dispatch(const std::vector<std::string>& args) {
  if (args.empty()) {
    std::cerr << kOverview;
    return 2;
  }
  const std::string& cmd = args[0];
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (cmd == "-h" || cmd == "--help" || cmd == "help") return helpCommand(rest);
  if (cmd == "train") return trainCommand(rest);
  if (cmd == "generate") return generateCommand(rest);
  if (cmd == "launch") return launchCommand(rest);
  if (cmd == "bench") return benchCommand(rest);
  if (cmd == "env") return envCommand(rest);
  if (cmd == "checkpoint") return checkpointCommand(rest);
  if (cmd == "pipeline") return pipelineCommand(rest);
  if (cmd == "version" || cmd == "--version") return versionCommand(rest);
  if (!cmd.empty() && cmd[0] == '-') {
    throw UsageError(str("chorus: '", cmd, "' is not a command; flags come after the command: chorus <command> [flags]. ",
                         "Run `chorus help` for the commands."));
  }
  unknown("command", cmd, kCommands, "chorus help");
}

// "rank 3: " when this process is a rank of a job, so a failing rank's message says which.
std::string rankLabel() {
  auto r = envGet("CHORUS_RANK");
  if (!r) r = envGet("OMPI_COMM_WORLD_RANK");
  if (!r) r = envGet("RANK");
  return r ? str("rank ", *r, ": ") : std::string();
}

}  // namespace
}  // namespace chorus::tools

int main(int argc, char** argv) {
  using namespace chorus::tools;
  // Reuse freed tensors' memory instead of faulting it in again every step
  // (common/malloc_tuning.h); workers forked or started from here inherit or redo it.
  chorus::keepFreedMemory();
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string cmd = args.empty() ? std::string() : args[0];
  if ((cmd == "bench" || cmd == "checkpoint" || cmd == "pipeline") && args.size() >= 2) cmd += " " + args[1];
  try {
    return dispatch(args);
  } catch (const UsageError& e) {
    std::fflush(stdout);
    std::cerr << e.what() << "\n";
    return 2;
  } catch (const chorus::DivergenceError& e) {
    std::fflush(stdout);
    std::cerr << "chorus " << cmd << ": " << rankLabel() << "error: " << e.what() << "\n";
    return chorus::tools::kFatalExitStatus;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::cerr << "chorus " << cmd << ": " << rankLabel() << "error: " << e.what() << "\n";
    return 1;
  }
}
