#include "chorus/common/version.h"

// The build generates chorus/version_info.h (cmake/chorus_version.cmake) with
// CHORUS_VERSION_STRING and CHORUS_GIT_COMMIT. A build outside CMake (fuzz/build.sh) has no
// such header and reports "unknown".
#if __has_include("chorus/version_info.h")
#include "chorus/version_info.h"
#endif
#ifndef CHORUS_VERSION_STRING
#define CHORUS_VERSION_STRING "unknown"
#endif
#ifndef CHORUS_GIT_COMMIT
#define CHORUS_GIT_COMMIT "unknown"
#endif

namespace chorus {

const char* version() { return CHORUS_VERSION_STRING; }

const char* gitCommit() { return CHORUS_GIT_COMMIT; }

std::string versionLine() { return std::string("chorus ") + version() + " (commit " + gitCommit() + ")"; }

}  // namespace chorus
