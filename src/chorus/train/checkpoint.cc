// Checkpoints (see checkpoint.h).
//
// Save: the payload is one torch::serialize archive with these entries:
//   params/<name>, buffers/<name>   the model's tensors by their dotted names ("0.weight")
//   optim                           the optimizer's own archive (per-parameter state, options)
//   optim_meta/kind, optim_meta/lr/<g>   which optimizer, and each param group's lr (torch's
//                                   optimizer load restores state but not options)
//   state/{epoch,step_in_epoch,global_step}   int64 tensors
//   scalars/<name>                  float64 tensors, so every double returns bit for bit
// It is written behind a 52-byte header to "<path>.tmp.<pid>" in the target folder, fsynced,
// renamed over <path> and the folder fsynced: a crash leaves either the old file or the new.
//
// Load reads the whole file and checks magic, version, length and SHA-256 before it parses
// anything, then reads every tensor and checks names and shapes before it changes the model,
// so a bad file leaves model and optimizer as they were.
#include "chorus/train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <sstream>
#include <string_view>

#include "chorus/common/error.h"
#include "chorus/common/hmac.h"

namespace chorus::train {
namespace {

namespace fs = std::filesystem;

constexpr char kMagic[8] = {'C', 'H', 'O', 'R', 'U', 'S', 'C', 'K'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = sizeof(kMagic) + 4 + 8 + 32;

void putLe(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t getLe(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

std::string shapeStr(const torch::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

const char* optimizerKind(const torch::optim::Optimizer& opt) {
  if (dynamic_cast<const torch::optim::SGD*>(&opt)) return "sgd";
  if (dynamic_cast<const torch::optim::AdamW*>(&opt)) return "adamw";
  if (dynamic_cast<const torch::optim::Adam*>(&opt)) return "adam";
  return "other";
}

torch::Tensor int64Tensor(int64_t v) { return torch::tensor(v, torch::kInt64); }
torch::Tensor float64Tensor(double v) { return torch::tensor(v, torch::kFloat64); }

std::string serializePayload(torch::nn::Module& model, torch::optim::Optimizer& opt, const TrainState& state) {
  torch::serialize::OutputArchive root;
  torch::serialize::OutputArchive params(root.compilation_unit()), buffers(root.compilation_unit());
  for (const auto& p : model.named_parameters()) params.write(p.key(), p.value().detach());
  for (const auto& b : model.named_buffers()) buffers.write(b.key(), b.value().detach(), /*is_buffer=*/true);
  root.write("params", params);
  root.write("buffers", buffers);

  torch::serialize::OutputArchive optim(root.compilation_unit()), meta(root.compilation_unit());
  opt.save(optim);
  meta.write("kind", c10::IValue(std::string(optimizerKind(opt))));
  meta.write("groups", int64Tensor(static_cast<int64_t>(opt.param_groups().size())));
  for (size_t g = 0; g < opt.param_groups().size(); ++g)
    meta.write(str("lr/", g), float64Tensor(opt.param_groups()[g].options().get_lr()));
  root.write("optim", optim);
  root.write("optim_meta", meta);

  torch::serialize::OutputArchive st(root.compilation_unit()), scalars(root.compilation_unit());
  st.write("epoch", int64Tensor(state.epoch));
  st.write("step_in_epoch", int64Tensor(state.stepInEpoch));
  st.write("global_step", int64Tensor(state.globalStep));
  for (const auto& [name, value] : state.scalars) scalars.write(name, float64Tensor(value));
  torch::serialize::OutputArchive tensors(root.compilation_unit());
  for (const auto& [name, value] : state.tensors) tensors.write(name, value.detach().contiguous());
  root.write("state", st);
  root.write("scalars", scalars);
  root.write("tensors", tensors);

  std::ostringstream os;
  root.save_to(os);
  return os.str();
}

// Writes all of data to fd, retrying on EINTR and short writes; false with errno set on failure.
bool writeAll(int fd, const char* data, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, data, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

int fsyncRetry(int fd) {
  int rc;
  do rc = ::fsync(fd);
  while (rc != 0 && errno == EINTR);
  return rc;
}

// Reads the named tensors of one sub-archive, checking that they are exactly the module's
// (same names, same shapes). `what` is "parameter" or "buffer".
std::vector<torch::Tensor> readTensors(const std::string& path, torch::serialize::InputArchive& archive,
                                       const std::vector<std::pair<std::string, torch::Tensor>>& expected,
                                       const char* what, bool isBuffer) {
  std::vector<torch::Tensor> out;
  for (const auto& [name, cur] : expected) {
    torch::Tensor t;
    if (!archive.try_read(name, t, isBuffer))
      throw Error(str("checkpoint ", path, ": ", what, " '", name,
                      "' is missing; the checkpoint was written for a different model (check model.*)"));
    if (!t.sizes().equals(cur.sizes()))
      throw Error(str("checkpoint ", path, ": ", what, " '", name, "' has shape ", shapeStr(t),
                      " in the checkpoint but ", shapeStr(cur), " in the model; it was written for a different model"));
    out.push_back(t);
  }
  for (const auto& key : archive.keys()) {
    bool known = std::any_of(expected.begin(), expected.end(), [&](const auto& e) { return e.first == key; });
    if (!known)
      throw Error(str("checkpoint ", path, ": ", what, " '", key,
                      "' is in the checkpoint but not in the model; it was written for a different model"));
  }
  return out;
}

template <typename Dict>
std::vector<std::pair<std::string, torch::Tensor>> pairs(const Dict& d) {
  std::vector<std::pair<std::string, torch::Tensor>> v;
  for (const auto& item : d) v.emplace_back(item.key(), item.value());
  return v;
}

int64_t readInt(torch::serialize::InputArchive& a, const char* key) {
  torch::Tensor t;
  a.read(key, t);
  return t.item<int64_t>();
}

// The whole file; SystemError naming the path (and errno's text) if it cannot be read.
std::string readFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw SystemError(str("cannot load checkpoint ", path), errno);
  std::string out;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      throw SystemError(str("cannot load checkpoint ", path, ": read"), err);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

}  // namespace

void saveCheckpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer& opt,
                    const TrainState& state) {
  std::string payload;
  try {
    payload = serializePayload(model, opt, state);
  } catch (const c10::Error& e) {
    throw Error(str("cannot save checkpoint ", path, ": serializing failed: ", e.what_without_backtrace()));
  }
  Digest digest = sha256(payload.data(), payload.size());
  std::string header(kMagic, sizeof(kMagic));
  putLe(header, kVersion, 4);
  putLe(header, payload.size(), 8);
  header.append(reinterpret_cast<const char*>(digest.data()), digest.size());

  fs::path target(path);
  fs::path dir = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    throw Error(str("cannot save checkpoint ", path, ": cannot create the folder ", dir.string(), ": ", ec.message(),
                    "; check output.dir"));

  std::string tmp = str(path, ".tmp.", ::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw SystemError(str("cannot save checkpoint ", path, ": open ", tmp), errno);
  auto fail = [&](const char* op) {
    int err = errno;
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw SystemError(str("cannot save checkpoint ", path, ": ", op, " ", tmp), err);
  };
  if (!writeAll(fd, header.data(), header.size()) || !writeAll(fd, payload.data(), payload.size())) fail("write");
  if (fsyncRetry(fd) != 0) fail("fsync");
  int rc = ::close(fd);
  fd = -1;
  if (rc != 0) fail("close");
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail("rename to the checkpoint");

  // The rename is durable only once the folder's entry is on disk.
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) throw SystemError(str("checkpoint ", path, " written, but opening its folder to fsync failed"), errno);
  rc = fsyncRetry(dfd);
  int err = errno;
  ::close(dfd);
  if (rc != 0) throw SystemError(str("checkpoint ", path, " written, but fsync of its folder failed"), err);
}

TrainState loadCheckpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer& opt) {
  std::string file = readFile(path);

  auto bad = [&](const std::string& what) { return Error(str("checkpoint ", path, ": ", what)); };
  if (file.size() < sizeof(kMagic) || std::memcmp(file.data(), kMagic, sizeof(kMagic)) != 0)
    throw bad("not a chorus checkpoint (bad magic)");
  if (file.size() < kHeaderBytes)
    throw bad(str("truncated: expected a ", kHeaderBytes, "-byte header, found ", file.size(), " bytes"));
  uint32_t version = static_cast<uint32_t>(getLe(file.data() + 8, 4));
  if (version != kVersion)
    throw bad(str("version ", version, " is not supported (this build reads version ", kVersion, ")"));
  uint64_t length = getLe(file.data() + 12, 8);
  uint64_t found = file.size() - kHeaderBytes;
  if (found < length) throw bad(str("truncated: expected ", length, " payload bytes, found ", found));
  if (found > length)
    throw bad(str("length mismatch: expected ", length, " payload bytes, found ", found, "; the file is corrupt"));
  const char* payload = file.data() + kHeaderBytes;
  Digest digest = sha256(payload, length);
  if (std::memcmp(digest.data(), file.data() + 20, digest.size()) != 0)
    throw bad("checksum mismatch: the file is corrupt; use an older checkpoint or start again");

  TrainState state;
  std::vector<torch::Tensor> params, buffers;
  auto modelParams = pairs(model.named_parameters());
  auto modelBuffers = pairs(model.named_buffers());
  std::vector<double> lrs;
  try {
    torch::serialize::InputArchive root;
    root.load_from(payload, length);

    torch::serialize::InputArchive pa, ba;
    root.read("params", pa);
    root.read("buffers", ba);
    params = readTensors(path, pa, modelParams, "parameter", false);
    buffers = readTensors(path, ba, modelBuffers, "buffer", true);

    torch::serialize::InputArchive st, sc;
    root.read("state", st);
    root.read("scalars", sc);
    state.epoch = readInt(st, "epoch");
    state.stepInEpoch = readInt(st, "step_in_epoch");
    state.globalStep = readInt(st, "global_step");
    for (const auto& key : sc.keys()) {
      torch::Tensor t;
      sc.read(key, t);
      state.scalars[key] = t.item<double>();
    }
    torch::serialize::InputArchive ta;
    if (root.try_read("tensors", ta)) {
      for (const auto& key : ta.keys()) {
        torch::Tensor t;
        ta.read(key, t);
        state.tensors[key] = t;
      }
    }

    torch::serialize::InputArchive meta, optim;
    root.read("optim_meta", meta);
    root.read("optim", optim);
    c10::IValue kind;
    meta.read("kind", kind);
    if (kind.toStringRef() != optimizerKind(opt))
      throw bad(str("it holds the state of optimizer '", kind.toStringRef(), "', but this run uses '",
                    optimizerKind(opt), "' (check optim.name)"));
    int64_t groups = readInt(meta, "groups");
    if (groups != static_cast<int64_t>(opt.param_groups().size()))
      throw bad(str("it has ", groups, " optimizer param groups, the optimizer has ", opt.param_groups().size()));
    for (int64_t g = 0; g < groups; ++g) {
      torch::Tensor t;
      meta.read(str("lr/", g), t);
      lrs.push_back(t.item<double>());
    }
    // Last of the reads: it replaces the optimizer's state, and nothing below can fail.
    opt.load(optim);
  } catch (const c10::Error& e) {
    throw bad(str("the payload cannot be read (", e.what_without_backtrace(),
                  "); it was written by another program or version"));
  }

  torch::NoGradGuard noGrad;
  for (size_t i = 0; i < params.size(); ++i) modelParams[i].second.copy_(params[i]);
  for (size_t i = 0; i < buffers.size(); ++i) modelBuffers[i].second.copy_(buffers[i]);
  for (size_t g = 0; g < lrs.size(); ++g) opt.param_groups()[g].options().set_lr(lrs[g]);
  return state;
}

std::string checkpointName(int64_t globalStep) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "ckpt-%08lld.pt", static_cast<long long>(globalStep));
  return buf;
}

namespace {

// The step of a file named "ckpt-<digits>.pt", or nothing (temporary files, other files).
std::optional<int64_t> checkpointStep(const std::string& name) {
  constexpr std::string_view kPrefix = "ckpt-", kSuffix = ".pt";
  if (name.size() <= kPrefix.size() + kSuffix.size() || !name.starts_with(kPrefix) || !name.ends_with(kSuffix))
    return std::nullopt;
  std::string digits = name.substr(kPrefix.size(), name.size() - kPrefix.size() - kSuffix.size());
  if (digits.size() > 18 || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  return std::stoll(digits);
}

// Checkpoints in dir, oldest first; none if dir does not exist.
std::vector<std::pair<int64_t, fs::path>> listCheckpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  fs::directory_iterator it(dir, ec);
  if (ec) throw Error(str("cannot list checkpoints in ", dir, ": ", ec.message()));
  for (const auto& entry : it) {
    if (!entry.is_regular_file(ec)) continue;
    if (auto step = checkpointStep(entry.path().filename().string())) out.emplace_back(*step, entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

std::string latestCheckpoint(const std::string& dir) {
  auto all = listCheckpoints(dir);
  return all.empty() ? std::string() : all.back().second.string();
}

void pruneCheckpoints(const std::string& dir, int64_t keep) {
  if (keep < 0) throw InvalidArgument(str("pruneCheckpoints: keep = ", keep, " must be at least 0"));
  auto all = listCheckpoints(dir);
  for (size_t i = 0; i + static_cast<size_t>(keep) < all.size(); ++i) {
    std::error_code ec;
    fs::remove(all[i].second, ec);
    if (ec) throw Error(str("cannot remove old checkpoint ", all[i].second.string(), ": ", ec.message()));
  }
}

}  // namespace chorus::train
