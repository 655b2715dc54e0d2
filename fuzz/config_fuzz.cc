// libFuzzer target for the training config reader (src/chorus/train/config.cc): its TOML
// reader, the --set overrides, the schema's type and range checks and the rules across keys,
// which run on files and command lines a user wrote.
//
// The input: one byte for the number of workers (0..8; 0 = not known yet), then the TOML text,
// then up to four --set overrides, separated by NUL bytes. parseConfig must either return a
// Config or throw ConfigError: no other exception, no out-of-bounds access (ASan), no
// overflow or other undefined behaviour (UBSan). What it returns must survive toToml: the text
// parses back to an equal Config, so `chorus train` can save a run's resolved config and
// reload it.
//
// fuzz-sources: src/chorus/train/config.cc src/chorus/common/error.cc src/chorus/compress/methods.cc
// fuzz-max-len: 8192
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/train/config.h"
#include "seeds.h"

using namespace chorus::train;

namespace {

[[noreturn]] void fail(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "config_fuzz: %s%s%s\n", what, detail.empty() ? "" : ": ", detail.c_str());
  std::abort();
}

std::vector<uint8_t> bytesOf(int workers, const std::string& text, const std::vector<std::string>& overrides) {
  std::vector<uint8_t> out{static_cast<uint8_t>(workers)};
  out.insert(out.end(), text.begin(), text.end());
  for (const std::string& o : overrides) {
    out.push_back(0);
    out.insert(out.end(), o.begin(), o.end());
  }
  return out;
}

void writeSeeds(const char* folder) {
  using chorus::fuzz::writeSeed;
  writeSeed(folder, "defaults_resolved", bytesOf(2, toToml(defaultConfig({}, 2)), {}));
  writeSeed(folder, "main_job", bytesOf(2,
                                        "# the main job\n"
                                        "name = \"fashion-mlp\"\n"
                                        "precision = \"fp32\"   # fp32 | bf16 | fp16\n\n"
                                        "[model]\nname = \"mlp\"\nhidden = [512, 256]\n\n"
                                        "[optim]\nname = \"sgd\"\nlr = 0.05\nmomentum = 0.9\n\n"
                                        "[train]\nepochs = 3\nbatch_size = 128\n",
                                        {}));
  writeSeed(folder, "strings_and_arrays",
            bytesOf(3,
                    "name = \"r\\u00e9sum\\u00E9 \\\"q\\\" \\t\"\r\n"
                    "[data]\r\npath = '/tmp/data set'\r\nlimit_train = 1_000\n"
                    "[model]\nname = \"cnn\"\nchannels = [\n  16,  # first\n  32,\n]\nfc = 64\n"
                    "[train]\nbatch_size = 3\n",
                    {}));
  writeSeed(folder, "overrides", bytesOf(4, "[optim]\nlr = 1e-2\n",
                                         {"optim.name=adam", "train.batch_size=64", "model.hidden=[128,64,32]",
                                          "ddp.transport="}));
  writeSeed(folder, "cross_key_rules",
            bytesOf(3,
                    "[train]\nbatch_size = 100\ndrop_last = true\n[data]\nlimit_train = 10\n"
                    "[optim]\nname = \"sgd\"\nnesterov = true\nmomentum = 0.0\n"
                    "[compression]\nmethod = \"dgc\"\n[schedule]\nname = \"cosine\"\nmin_lr = 1.0\n",
                    {"ps.servers=1", "ps.backup=2"}));
  writeSeed(folder, "errors", bytesOf(0, "[optim\nlr = \"x\"\n[[a]]\nkey.with.dots = 01\nx = 1e999\n", {"=", "a"}));
}

}  // namespace

CHORUS_FUZZ_SEEDS(writeSeeds)

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int workers = data[0] % 9;
  std::vector<std::string> parts(1);
  for (size_t i = 1; i < size; ++i) {
    if (data[i] == 0 && parts.size() < 5) {
      parts.emplace_back();
    } else {
      parts.back() += static_cast<char>(data[i]);
    }
  }
  const std::string text = parts[0];
  const std::vector<std::string> overrides(parts.begin() + 1, parts.end());

  Config c;
  try {
    c = parseConfig(text, "fuzz.toml", overrides, workers);
  } catch (const chorus::ConfigError&) {
    return 0;
  } catch (const std::exception& e) {
    fail("not a ConfigError", e.what());
  }
  const std::string saved = toToml(c);
  Config again;
  try {
    again = parseConfig(saved, "saved.toml", {}, workers);
  } catch (const std::exception& e) {
    fail("toToml wrote a config that does not parse back", e.what());
  }
  if (!(again == c)) fail("toToml wrote a config that parses back to another", saved);
  return 0;
}
