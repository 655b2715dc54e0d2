// The version of the chorus library this program was built against, and the git commit it
// was built from. `chorus --version` prints versionLine(); CMake users can also ask for a
// version in find_package(chorus 0.1 CONFIG) (docs/install.md).
//
// The strings are static: callers must not free them. Thread-safe.
#pragma once

#include <string>

namespace chorus {

// "0.1.0": the VERSION of project(chorus ...) in CMakeLists.txt.
const char* version();
// The commit the library was built from: 12 hex digits, with "-dirty" appended when the work
// tree had uncommitted changes to tracked files; "unknown" when not built from a git checkout.
// The build re-reads it on every build (cmake/chorus_version.cmake).
const char* gitCommit();
// "chorus 0.1.0 (commit 0123456789ab)": one line for --version output and logs.
std::string versionLine();

}  // namespace chorus
