// `chorus pipeline show` (see pipeline_command.h).
#include "pipeline_command.h"

#include <iostream>

#include "args.h"
#include "chorus/common/error.h"
#include "chorus/parallel/pipeline/schedule.h"

namespace chorus::tools {
namespace {

ArgParser showParser() {
  ArgParser p("chorus pipeline show", ArgParser::Positional::kReject);
  std::string names;
  for (const auto& n : parallel::scheduleNames()) names += (names.empty() ? "" : ", ") + n;
  p.addValue("--schedule", "NAME", "the schedule: " + names, "1f1b");
  p.addValue("--stages", "P", "pipeline stages (ranks), 1 to 64", "4");
  p.addValue("--micro-batches", "M", "micro-batches per step, 1 to 1024", "8");
  p.addValue("--chunks", "V", "model chunks per rank (interleaved only), 1 to 16", "1");
  p.addValue("--update-every", "K", "2bw: micro-batches per weight update, 1 to 1024 (default: the stages)", "");
  p.addSwitch("-h,--help", "show this help");
  return p;
}

}  // namespace

std::string pipelineHelp() {
  return str(
      "usage: chorus pipeline show [--schedule NAME] [--stages P] [--micro-batches M] [--chunks V]\n"
      "                            [--update-every K]\n"
      "\n"
      "Prints a pipeline schedule as a grid, one row per rank and one column per time unit (a\n"
      "forward costs 1, the input-gradient and the weight-gradient halves of a backward 1 each),\n"
      "after checking it: every micro-batch's forward and backward run once per stage, in\n"
      "dependency order, every send has its receive, and the ranks cannot deadlock. Below the\n"
      "grid: each rank's idle (bubble) fraction and its peak stored activations; for the\n"
      "asynchronous schedules (pipedream, 2bw), which update the weights inside the step, also the\n"
      "weight versions each rank keeps stashed.\n"
      "\n"
      "  chorus pipeline show --schedule 1f1b --stages 4 --micro-batches 8\n"
      "  chorus pipeline show --schedule interleaved --stages 4 --micro-batches 8 --chunks 2\n"
      "  chorus pipeline show --schedule 2bw --stages 4 --micro-batches 16 --update-every 8\n"
      "\n"
      "flags:\n",
      showParser().flagTable());
}

int pipelineCommand(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    if (args.empty()) {
      std::cerr << "chorus pipeline: which subcommand? `chorus pipeline show` is the one there is.\n\n" << pipelineHelp();
      return 2;
    }
    std::cout << pipelineHelp();
    return 0;
  }
  if (args[0] != "show")
    throw UsageError(str("chorus pipeline: unknown subcommand '", args[0],
                         "'; the one there is: show. Run `chorus help pipeline` for usage."));
  ArgParser p = showParser();
  p.parse({args.begin() + 1, args.end()});
  if (p.has("--help")) {
    std::cout << pipelineHelp();
    return 0;
  }
  const std::string name = p.getChoice("--schedule", parallel::scheduleNames());
  const int stages = static_cast<int>(p.getInt("--stages", 1, 64));
  const int micro = static_cast<int>(p.getInt("--micro-batches", 1, 1024));
  const int chunks = static_cast<int>(p.getInt("--chunks", 1, 16));
  if (chunks > 1 && name != "interleaved")
    throw UsageError(str("chorus pipeline show: --chunks ", chunks, " needs --schedule interleaved (schedule ", name,
                         " runs one model chunk per rank)"));
  int every = 0;
  if (!p.get("--update-every").empty()) {
    if (name != "2bw")
      throw UsageError(str("chorus pipeline show: --update-every is for --schedule 2bw (schedule ", name,
                           name == "pipedream" ? " updates after every micro-batch)" : " steps the optimizer once)"));
    every = static_cast<int>(p.getInt("--update-every", 1, 1024));
  }
  const parallel::PipeSchedule s = parallel::makeSchedule(name, stages, micro, chunks, every);
  const parallel::SimResult r = parallel::checkSchedule(s);
  std::cout << parallel::renderSchedule(s, r);
  std::cout << "theory (equal stages): bubble " << 100 * parallel::theoreticalBubble(name, stages, micro, chunks)
            << "%\n";
  return 0;
}

}  // namespace chorus::tools
