// `chorus pipeline show` (see pipeline_command.h).
#include "pipeline_command.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <sstream>

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
  p.addValue("--costs", "F,B,W",
             "simulate with these costs of a forward, an input-gradient and a weight-gradient half (e.g. measured "
             "milliseconds; a whole backward costs B + W) instead of 1, 1, 1",
             "");
  p.addSwitch("--json", "print the simulation as one JSON line (bubble and peak stored activations per rank, "
                        "the mean bubble, makespan, theory) instead of the grid");
  p.addSwitch("-h,--help", "show this help");
  return p;
}

}  // namespace

std::string pipelineHelp() {
  return str(
      "usage: chorus pipeline show [--schedule NAME] [--stages P] [--micro-batches M] [--chunks V]\n"
      "                            [--update-every K] [--costs F,B,W] [--json]\n"
      "\n"
      "Prints a pipeline schedule as a grid, one row per rank and one column per time unit (a\n"
      "forward costs 1, the input-gradient and the weight-gradient halves of a backward 1 each),\n"
      "after checking it: every micro-batch's forward and backward run once per stage, in\n"
      "dependency order, every send has its receive, and the ranks cannot deadlock. Below the\n"
      "grid: each rank's idle (bubble) fraction and its peak stored activations; for the\n"
      "asynchronous schedules (pipedream, 2bw), which update the weights inside the step, also the\n"
      "weight versions each rank keeps stashed. --costs simulates other op times (say, those a\n"
      "trace measured), which is the bubble to expect when the halves of a backward are not equal.\n"
      "\n"
      "  chorus pipeline show --schedule 1f1b --stages 4 --micro-batches 8\n"
      "  chorus pipeline show --schedule interleaved --stages 4 --micro-batches 8 --chunks 2\n"
      "  chorus pipeline show --schedule 2bw --stages 4 --micro-batches 16 --update-every 8\n"
      "  chorus pipeline show --schedule zb-h1 --stages 2 --micro-batches 4 --costs 60,70,40 --json\n"
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
  parallel::SimCosts costs;
  if (!p.get("--costs").empty()) {
    const std::string text = p.get("--costs");
    std::vector<double> v;
    size_t at = 0;
    while (at <= text.size()) {
      const size_t comma = std::min(text.find(',', at), text.size());
      const std::string part = text.substr(at, comma - at);
      char* end = nullptr;
      const double x = std::strtod(part.c_str(), &end);
      if (part.empty() || end != part.c_str() + part.size() || !(x >= 0) || !std::isfinite(x))
        throw UsageError(str("chorus pipeline show: --costs ", text, ": '", part,
                             "' is not a cost; give three numbers >= 0, F,B,W, e.g. --costs 60,70,40"));
      v.push_back(x);
      at = comma + 1;
    }
    if (v.size() != 3 || !(v[0] + v[1] + v[2] > 0))
      throw UsageError(str("chorus pipeline show: --costs ", text,
                           ": give three costs F,B,W (forward, input-gradient half, weight-gradient half), not all 0"));
    costs.forward = v[0];
    costs.backwardInput = v[1];
    costs.backwardWeight = v[2];
  }
  const parallel::PipeSchedule s = parallel::makeSchedule(name, stages, micro, chunks, every);
  const parallel::SimResult r = parallel::checkSchedule(s, costs);
  const double theory = parallel::theoreticalBubble(name, stages, micro, chunks);
  if (p.has("--json")) {
    std::ostringstream o;
    o.precision(6);
    o << "{\"schedule\": \"" << name << "\", \"stages\": " << stages << ", \"micro_batches\": " << micro
      << ", \"chunks\": " << chunks << ", \"costs\": [" << costs.forward << ", " << costs.backwardInput << ", "
      << costs.backwardWeight << "], \"bubble\": [";
    for (size_t i = 0; i < r.bubble.size(); ++i) o << (i ? ", " : "") << r.bubble[i];
    o << "], \"peak_activations\": [";
    for (size_t i = 0; i < r.peakActivations.size(); ++i) o << (i ? ", " : "") << r.peakActivations[i];
    o << "], \"mean_bubble\": " << r.meanBubble() << ", \"makespan\": " << r.makespan
      << ", \"theory\": " << theory << "}\n";
    std::cout << o.str();
    return 0;
  }
  std::cout << parallel::renderSchedule(s, r);
  if (!p.get("--costs").empty())
    std::cout << "simulated with costs F " << costs.forward << ", B " << costs.backwardInput << ", W "
              << costs.backwardWeight << ": mean bubble " << 100 * r.meanBubble() << "%\n";
  std::cout << "theory (equal stages): bubble " << 100 * theory << "%\n";
  return 0;
}

}  // namespace chorus::tools
