#include "chorus/common/error.h"

#include <cstring>

namespace chorus {

SystemError::SystemError(const std::string& what, int err)
    : Error(what + ": " + std::strerror(err)), code_(err) {}

namespace detail {
void throwCheck(const char* file, int line, const char* cond, const std::string& msg) {
  throw Error(str(file, ":", line, ": check '", cond, "' failed", msg.empty() ? "" : ": ", msg));
}
}  // namespace detail

}  // namespace chorus
