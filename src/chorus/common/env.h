// Settings read from the environment, declared once in one table (env.cc) with name,
// default and meaning. docs/environment.md lists the same table; `chorus env` prints it.
// Library code takes settings through options structs; these readers supply the defaults.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace chorus {

struct EnvParam {
  const char* name;
  const char* defaultValue;  // "" means unset
  const char* meaning;
};

// The table of every CHORUS_* variable the library reads.
const std::vector<EnvParam>& envParams();

// The raw value of any variable (CHORUS_* or a foreign convention such as RANK), if set.
std::optional<std::string> envGet(const char* name);

// Value of a declared CHORUS_* variable, or its table default. Throws ConfigError for a
// name not in the table (a programming error) or a value that does not parse.
std::string envString(const char* name);
int64_t envInt(const char* name);
double envDouble(const char* name);
bool envBool(const char* name);

// The one place the default timeout of every blocking call comes from: CHORUS_TIMEOUT_MS.
std::chrono::milliseconds defaultTimeout();

}  // namespace chorus
