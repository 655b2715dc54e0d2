// Directories for a test binary's files under the system's temporary directory, removed with
// everything in them when the binary exits normally (gtest's main returning, failed tests
// included), so tests that write checkpoints and metrics leave nothing behind in /tmp.
//
// scratchDir(prefix, name) is <tmp>/prefix-<pid>-name: test binaries running at once (ctest -j)
// never share one. Whatever an earlier run with the same pid left there is removed first. The
// directory itself is not created; the code under test creates what it writes.
// Header-only; the registry is one per binary (an inline variable).
#pragma once

#include <unistd.h>

#include <filesystem>
#include <mutex>
#include <string>
#include <system_error>
#include <vector>

#include "chorus/common/error.h"  // str

namespace chorus::test {

class ScratchDirRegistry {
 public:
  ~ScratchDirRegistry() {
    std::error_code ignored;  // a directory left behind is harmless; exit must not throw
    for (const auto& d : dirs_) std::filesystem::remove_all(d, ignored);
  }
  void add(const std::filesystem::path& d) {
    std::lock_guard<std::mutex> lock(mu_);
    dirs_.push_back(d);
  }

 private:
  std::mutex mu_;
  std::vector<std::filesystem::path> dirs_;
};

inline ScratchDirRegistry scratchDirs;

inline std::filesystem::path scratchDir(const std::string& prefix, const std::string& name) {
  std::filesystem::path d = std::filesystem::temp_directory_path() / str(prefix, "-", ::getpid(), "-", name);
  std::filesystem::remove_all(d);
  scratchDirs.add(d);
  return d;
}

}  // namespace chorus::test
