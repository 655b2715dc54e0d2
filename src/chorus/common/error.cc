#include "chorus/common/error.h"

#include <cstring>
#include <new>
#include <utility>

namespace chorus {

SystemError::SystemError(const std::string& what, int err)
    : Error(what + ": " + std::strerror(err)), code_(err) {}

namespace {

// SystemError composes its message from errno; this keeps the type and code but shows the
// message with the context in front.
class ContextSystemError : public SystemError {
 public:
  ContextSystemError(std::string msg, int code) : SystemError("", code), msg_(std::move(msg)) {}
  const char* what() const noexcept override { return msg_.c_str(); }

 private:
  std::string msg_;
};

}  // namespace

void rethrowWithContext(const std::string& context) {
  try {
    throw;
  } catch (const TimeoutError& e) {
    throw TimeoutError(context + e.what());
  } catch (const PeerError& e) {
    throw PeerError(context + e.what(), e.peer());
  } catch (const MismatchError& e) {
    throw MismatchError(context + e.what());
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(context + e.what());
  } catch (const AuthError& e) {
    throw AuthError(context + e.what());
  } catch (const ConfigError& e) {
    throw ConfigError(context + e.what());
  } catch (const OutOfMemoryError& e) {
    throw OutOfMemoryError(context + e.what());
  } catch (const SystemError& e) {
    throw ContextSystemError(context + e.what(), e.code());
  } catch (const Error& e) {
    throw Error(context + e.what());
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(context + e.what());
  }
}

namespace detail {
void throwCheck(const char* file, int line, const char* cond, const std::string& msg) {
  throw Error(str(file, ":", line, ": check '", cond, "' failed", msg.empty() ? "" : ": ", msg));
}
}  // namespace detail

}  // namespace chorus
