#include "args.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <limits>
#include <sstream>

namespace chorus::tools {

namespace {

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::vector<std::string> splitNames(const std::string& names) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : names) {
    if (c == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else if (c != ' ') {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

std::string joinNames(const std::vector<std::string>& names, const char* sep) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += sep;
    out += names[i];
  }
  return out;
}

}  // namespace

uint64_t parseSize(const std::string& text) {
  const std::string hint = " (use a byte count with an optional K, M or G suffix, e.g. 4096, 4K, 64M, 1G)";
  if (text.empty() || !std::isdigit(static_cast<unsigned char>(text[0]))) {
    throw InvalidArgument(str("'", text, "' is not a size", hint));
  }
  size_t digits = 0;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) ++digits;
  std::string suffix = lower(text.substr(digits));
  uint64_t scale = 1;
  if (!suffix.empty() && suffix != "b") {
    std::string unit = suffix.substr(1);
    int shift = suffix[0] == 'k' ? 10 : suffix[0] == 'm' ? 20 : suffix[0] == 'g' ? 30 : -1;
    if (shift < 0 || !(unit.empty() || unit == "b" || unit == "ib")) {
      throw InvalidArgument(str("'", text, "' has an unknown size suffix '", text.substr(digits), "'", hint));
    }
    scale = uint64_t{1} << shift;
  }
  errno = 0;
  char* end = nullptr;
  unsigned long long n = std::strtoull(text.substr(0, digits).c_str(), &end, 10);
  if (errno == ERANGE || n > std::numeric_limits<uint64_t>::max() / scale) {
    throw InvalidArgument(str("'", text, "' is too large a size: it does not fit in 64 bits"));
  }
  return static_cast<uint64_t>(n) * scale;
}

std::string formatSize(uint64_t bytes) {
  static const char* kSuffix[] = {"", "K", "M", "G"};
  int i = 0;
  while (i < 3 && bytes >= 1024 && bytes % 1024 == 0) {
    bytes /= 1024;
    ++i;
  }
  return str(bytes, kSuffix[i]);
}

int64_t parseInt(const std::string& text) {
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || end == text.c_str() || *end != '\0' || std::isspace(static_cast<unsigned char>(text[0]))) {
    throw InvalidArgument(str("'", text, "' is not a whole number"));
  }
  if (errno == ERANGE) throw InvalidArgument(str("'", text, "' is out of range"));
  return v;
}

size_t editDistance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t subst = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, subst});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

ArgParser::ArgParser(std::string command, Positional positional)
    : command_(std::move(command)), positional_(positional) {}

void ArgParser::addValue(const std::string& names, const std::string& valueName, const std::string& help,
                         const std::string& defaultValue) {
  Flag f;
  f.names = splitNames(names);
  f.valueName = valueName;
  f.help = help;
  f.defaultValue = defaultValue;
  add(std::move(f));
}

void ArgParser::addSwitch(const std::string& names, const std::string& help) {
  Flag f;
  f.names = splitNames(names);
  f.help = help;
  f.isSwitch = true;
  add(std::move(f));
}

void ArgParser::add(Flag flag) {
  CHORUS_CHECK(!flag.names.empty(), "a flag needs a name");
  for (const auto& n : flag.names) {
    CHORUS_CHECK(n.size() >= 2 && n[0] == '-', "flag name '", n, "' must start with '-'");
    CHORUS_CHECK(byName_.count(n) == 0, "flag ", n, " declared twice");
    byName_[n] = flags_.size();
  }
  flags_.push_back(std::move(flag));
}

const ArgParser::Flag& ArgParser::find(const std::string& name) const {
  auto it = byName_.find(name);
  CHORUS_CHECK(it != byName_.end(), command_, " reads flag ", name, " that it never declared");
  return flags_[it->second];
}

void ArgParser::unknownFlag(const std::string& arg) const {
  std::string best;
  size_t bestDist = 3;  // suggest only close names
  for (const auto& [name, idx] : byName_) {
    (void)idx;
    size_t d = editDistance(arg, name);
    if (d < bestDist) {
      bestDist = d;
      best = name;
    }
  }
  std::string msg = str(command_, ": unknown flag ", arg);
  if (!best.empty()) msg += str(" (did you mean ", best, "?)");
  msg += str(". Valid flags: ", flagList(), ". Run `", command_, " --help` for details.");
  throw UsageError(msg);
}

void ArgParser::parse(const std::vector<std::string>& args) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--") {
      rest_.assign(args.begin() + static_cast<std::ptrdiff_t>(i) + 1, args.end());
      return;
    }
    if (arg.size() < 2 || arg[0] != '-') {
      if (positional_ == Positional::kStopThere) {
        rest_.assign(args.begin() + static_cast<std::ptrdiff_t>(i), args.end());
        return;
      }
      throw UsageError(str(command_, ": unexpected argument '", arg, "'. It takes only flags: ", flagList(),
                           ". Run `", command_, " --help` for details."));
    }
    std::string name = arg;
    std::string value;
    bool inlineValue = false;
    size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      inlineValue = true;
    }
    auto it = byName_.find(name);
    if (it == byName_.end()) unknownFlag(name);
    const Flag& f = flags_[it->second];
    const std::string& canonical = f.names.back();
    if (values_.count(canonical) != 0) {
      throw UsageError(str(command_, ": flag ", name, " given twice; give it once"));
    }
    if (f.isSwitch) {
      if (inlineValue) {
        throw UsageError(str(command_, ": ", name, " is a switch and takes no value; write just ", name));
      }
      values_[canonical] = "1";
      given_.push_back(arg);
      continue;
    }
    if (!inlineValue) {
      if (i + 1 >= args.size()) {
        throw UsageError(str(command_, ": ", name, " needs a value: ", name, " ", f.valueName));
      }
      value = args[++i];
      given_.push_back(arg);
      given_.push_back(value);
    } else {
      given_.push_back(arg);
    }
    values_[canonical] = value;
  }
}

bool ArgParser::has(const std::string& name) const { return values_.count(find(name).names.back()) != 0; }

std::string ArgParser::get(const std::string& name) const {
  const Flag& f = find(name);
  auto it = values_.find(f.names.back());
  return it != values_.end() ? it->second : f.defaultValue;
}

int64_t ArgParser::getInt(const std::string& name, int64_t min, int64_t max) const {
  std::string v = get(name);
  int64_t x;
  try {
    x = parseInt(v);
  } catch (const InvalidArgument& e) {
    throw UsageError(str(command_, ": ", name, " ", e.what()));
  }
  if (x < min || x > max) {
    throw UsageError(str(command_, ": ", name, " must be between ", min, " and ", max, ", got ", x));
  }
  return x;
}

uint64_t ArgParser::getSize(const std::string& name) const {
  try {
    return parseSize(get(name));
  } catch (const InvalidArgument& e) {
    throw UsageError(str(command_, ": ", name, " ", e.what()));
  }
}

std::string ArgParser::getChoice(const std::string& name, const std::vector<std::string>& choices) const {
  std::string v = get(name);
  if (std::find(choices.begin(), choices.end(), v) != choices.end()) return v;
  throw UsageError(str(command_, ": ", name, " must be one of ", joinNames(choices, ", "), "; got '", v, "'"));
}

std::string ArgParser::flagTable() const {
  std::vector<std::string> lefts;
  size_t width = 0;
  for (const auto& f : flags_) {
    std::string left = joinNames(f.names, ", ");
    if (!f.isSwitch) left += " " + f.valueName;
    width = std::max(width, left.size());
    lefts.push_back(left);
  }
  std::ostringstream os;
  for (size_t i = 0; i < flags_.size(); ++i) {
    os << "  " << lefts[i] << std::string(width - lefts[i].size() + 2, ' ') << flags_[i].help;
    if (!flags_[i].defaultValue.empty()) os << " (default: " << flags_[i].defaultValue << ")";
    os << "\n";
  }
  return os.str();
}

std::string ArgParser::flagList() const {
  std::vector<std::string> names;
  for (const auto& f : flags_) names.push_back(joinNames(f.names, "/"));
  return joinNames(names, ", ");
}

}  // namespace chorus::tools
