// A small command-line parser for the chorus CLI: each command declares its flags (name,
// aliases, value name, default, help), parses argv, and reads typed values back. Errors throw
// UsageError naming the command, the flag and what is valid — an unknown flag lists every
// flag the command takes and, when one is close, suggests it.
//
// Accepted forms: `--flag value`, `--flag=value`, `-n 4`, switches without a value
// (`--json`), and `--` to end the flags. Commands that run a program (launch) stop at the
// first positional argument, so `chorus launch -n 2 ./prog --its-own-flag` works without `--`.
//
// Not thread-safe; one parser per command invocation.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "chorus/common/error.h"

namespace chorus::tools {

// A command line that cannot be run as written. main() prints it with the command's usage
// hint and exits with status 2.
class UsageError : public InvalidArgument {
 public:
  using InvalidArgument::InvalidArgument;
};

// "4096", "4K", "64M", "1G" (also "4KB", "4KiB", lower case) -> bytes, with K = 1024.
// Throws InvalidArgument with the accepted forms.
uint64_t parseSize(const std::string& text);
// Formats bytes the way parseSize reads them back: 4096 -> "4K", 1536 -> "1536".
std::string formatSize(uint64_t bytes);
// A whole decimal number (optionally signed). Throws InvalidArgument.
int64_t parseInt(const std::string& text);

// Levenshtein distance, for "did you mean" hints.
size_t editDistance(const std::string& a, const std::string& b);

class ArgParser {
 public:
  enum class Positional {
    kReject,     // a positional argument is an error
    kStopThere,  // the first positional argument and everything after it go to rest()
  };

  // `command` names the command in messages ("chorus launch").
  ArgParser(std::string command, Positional positional);

  // Declares a flag that takes a value. `names` is a comma-separated list: "-n,--nproc".
  // `defaultValue` "" means the flag has no default (has() tells whether it was given).
  void addValue(const std::string& names, const std::string& valueName, const std::string& help,
                const std::string& defaultValue = "");
  // Declares a switch: present or absent, no value.
  void addSwitch(const std::string& names, const std::string& help);

  // Parses the arguments (not including the program and command names). Throws UsageError
  // for an unknown flag, a missing value, a repeated flag, or an unexpected positional.
  void parse(const std::vector<std::string>& args);

  // Whether the flag was on the command line (any alias). `name` is the canonical (last,
  // long) name, e.g. "--nproc".
  bool has(const std::string& name) const;
  // The given value, else the default.
  std::string get(const std::string& name) const;
  // Typed readers; errors name the flag and the accepted range.
  int64_t getInt(const std::string& name, int64_t min, int64_t max) const;
  uint64_t getSize(const std::string& name) const;
  // One of `choices`; throws UsageError listing them.
  std::string getChoice(const std::string& name, const std::vector<std::string>& choices) const;

  // Arguments after `--` or from the first positional on (Positional::kStopThere).
  const std::vector<std::string>& rest() const { return rest_; }
  // The flags as the original command line spelled them, with values: what a launcher passes
  // on when it re-runs the same command in its children.
  const std::vector<std::string>& given() const { return given_; }

  // The flag table for help output: one line per flag with its value name, default and help.
  std::string flagTable() const;
  // "--a, --b, -n/--nproc" — every flag, for error messages.
  std::string flagList() const;

 private:
  struct Flag {
    std::vector<std::string> names;  // as declared; the canonical name is the last
    std::string valueName;           // "" for a switch
    std::string help;
    std::string defaultValue;
    bool isSwitch = false;
  };
  void add(Flag flag);
  const Flag& find(const std::string& name) const;
  [[noreturn]] void unknownFlag(const std::string& arg) const;

  std::string command_;
  Positional positional_;
  std::vector<Flag> flags_;
  std::map<std::string, size_t> byName_;      // every alias -> index in flags_
  std::map<std::string, std::string> values_;  // canonical name -> value ("1" for switches)
  std::vector<std::string> rest_;
  std::vector<std::string> given_;
};

}  // namespace chorus::tools
