// Seed corpora for the fuzz targets that make their own: with CHORUS_FUZZ_WRITE_SEEDS set to a
// folder, such a target writes its seeds there (from the library's own encoders) and exits
// instead of fuzzing. fuzz/make_seeds.sh runs that for every target into fuzz/corpus/NAME/.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace chorus::fuzz {

// The folder to write seeds into, or null when the target should fuzz.
inline const char* seedFolder() { return std::getenv("CHORUS_FUZZ_WRITE_SEEDS"); }

inline void writeSeed(const char* folder, const std::string& name, const std::vector<uint8_t>& bytes) {
  const std::string path = std::string(folder) + "/" + name;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || std::fclose(f) != 0) {
    std::fprintf(stderr, "cannot write the seed %s\n", path.c_str());
    std::exit(1);
  }
}

}  // namespace chorus::fuzz

// In a target: CHORUS_FUZZ_SEEDS(writeSeeds) defines libFuzzer's init hook, which calls
// writeSeeds(folder) and exits when seeds are asked for, and otherwise lets the fuzzing start.
#define CHORUS_FUZZ_SEEDS(writeSeeds)                                        \
  extern "C" int LLVMFuzzerInitialize(int*, char***) {                       \
    if (const char* folder = ::chorus::fuzz::seedFolder()) {                 \
      writeSeeds(folder);                                                    \
      std::exit(0);                                                          \
    }                                                                        \
    return 0;                                                                \
  }
