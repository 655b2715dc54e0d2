// Prints chorus's version line: proves a project that add_subdirectory()s chorus compiles
// against its headers (include path and C++20 from chorus::common) and links its library.
#include <iostream>

#include "chorus/common/version.h"

int main() {
  std::cout << chorus::versionLine() << "\n";
  return 0;
}
