#include "env_command.h"

#include <algorithm>
#include <iostream>
#include <sstream>

#include "args.h"
#include "chorus/common/env.h"

namespace chorus::tools {

namespace {

ArgParser makeParser() {
  ArgParser p("chorus env", ArgParser::Positional::kReject);
  p.addSwitch("-h,--help", "show this help");
  return p;
}

}  // namespace

std::string envTable() {
  struct Line {
    std::string name, value, def, meaning;
  };
  std::vector<Line> lines = {{"NAME", "VALUE", "DEFAULT", "MEANING"}};
  for (const EnvParam& p : envParams()) {
    auto v = envGet(p.name);
    std::string def = *p.defaultValue != '\0' ? p.defaultValue : "(unset)";
    lines.push_back({p.name, v ? *v : "-", def, p.meaning});
  }
  size_t wName = 0, wValue = 0, wDef = 0;
  for (const auto& l : lines) {
    wName = std::max(wName, l.name.size());
    wValue = std::max(wValue, std::min<size_t>(l.value.size(), 24));
    wDef = std::max(wDef, l.def.size());
  }
  std::ostringstream os;
  for (const auto& l : lines) {
    // The job secret is a credential: show only that it is set.
    std::string value = l.name == "CHORUS_JOB_SECRET" && l.value != "-" ? "(set)" : l.value;
    if (value.size() > 24) value = value.substr(0, 21) + "...";
    os << l.name << std::string(wName - l.name.size() + 2, ' ') << value
       << std::string(wValue - value.size() + 2, ' ') << l.def << std::string(wDef - l.def.size() + 2, ' ')
       << l.meaning << "\n";
  }
  return os.str();
}

std::string envHelp() {
  return str(
      "usage: chorus env\n"
      "\n"
      "Prints every CHORUS_* environment variable chorus reads: its name, the value this shell\n"
      "gives it (- when unset), its default, and what it means. Programs take these defaults\n"
      "unless their options say otherwise. The job secret is shown only as (set).\n"
      "\n"
      "flags:\n",
      makeParser().flagTable());
}

int envCommand(const std::vector<std::string>& args) {
  ArgParser p = makeParser();
  p.parse(args);
  if (p.has("--help")) {
    std::cout << envHelp();
    return 0;
  }
  std::cout << envTable();
  return 0;
}

}  // namespace chorus::tools
