// Checkpoints (see checkpoint.h for the entries of a file).
//
// Save: the model's, the loop's and the optimizer's tensors become a list of named tensors,
// encoded as a tensor table (common/tensor_file.h) and written atomically behind the 52-byte
// frame. The optimizer's state is read out of torch's optimizer directly (its state map is
// keyed by each parameter's TensorImpl address) and stored by group and parameter index, so it
// needs no serializer of torch's.
//
// Load reads and checks the frame (regular file, size, SHA-256) and the table, then checks every
// entry against the model and the optimizer, and only then copies anything in: a bad file leaves
// both as they were.
//
// The upgrade of a version-1 file is the one place that still reads a TorchScript archive; it is
// at the end of this file and nothing on the load path calls it.
#include "chorus/train/checkpoint.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <set>
#include <sstream>
#include <string_view>

#include "chorus/common/error.h"
#include "chorus/common/tensor_file.h"
#include "chorus/train/sharded_checkpoint.h"

namespace chorus::train {
namespace {

namespace fs = std::filesystem;

static_assert(std::endian::native == std::endian::little,
              "checkpoints hold little-endian element bytes, copied as they are in memory");

constexpr std::string_view kMagic{"CHORUSCK", 8};
constexpr uint32_t kVersion = 2;
constexpr uint32_t kLegacyVersion = 1;
constexpr const char* kWhat = "checkpoint";

using Named = std::vector<std::pair<std::string, torch::Tensor>>;

std::optional<TensorDtype> fileDtype(c10::ScalarType t) {
  switch (t) {
    case c10::ScalarType::Float: return TensorDtype::kFloat32;
    case c10::ScalarType::Double: return TensorDtype::kFloat64;
    case c10::ScalarType::Half: return TensorDtype::kFloat16;
    case c10::ScalarType::BFloat16: return TensorDtype::kBFloat16;
    case c10::ScalarType::Long: return TensorDtype::kInt64;
    case c10::ScalarType::Int: return TensorDtype::kInt32;
    case c10::ScalarType::Short: return TensorDtype::kInt16;
    case c10::ScalarType::Char: return TensorDtype::kInt8;
    case c10::ScalarType::Byte: return TensorDtype::kUInt8;
    case c10::ScalarType::Bool: return TensorDtype::kBool;
    default: return std::nullopt;
  }
}

c10::ScalarType torchDtype(TensorDtype d) {
  switch (d) {
    case TensorDtype::kFloat32: return c10::ScalarType::Float;
    case TensorDtype::kFloat64: return c10::ScalarType::Double;
    case TensorDtype::kFloat16: return c10::ScalarType::Half;
    case TensorDtype::kBFloat16: return c10::ScalarType::BFloat16;
    case TensorDtype::kInt64: return c10::ScalarType::Long;
    case TensorDtype::kInt32: return c10::ScalarType::Int;
    case TensorDtype::kInt16: return c10::ScalarType::Short;
    case TensorDtype::kInt8: return c10::ScalarType::Char;
    case TensorDtype::kUInt8: return c10::ScalarType::Byte;
    case TensorDtype::kBool: return c10::ScalarType::Bool;
  }
  throw InvalidArgument(str("tensor dtype code ", static_cast<int>(d), " has no torch dtype"));
}

std::string shapeStr(c10::IntArrayRef sizes) {
  std::ostringstream os;
  os << sizes;
  return os.str();
}

torch::Tensor int64Scalar(int64_t v) {
  torch::Tensor t = torch::empty({}, torch::kInt64);
  t.data_ptr<int64_t>()[0] = v;
  return t;
}

torch::Tensor float64Scalar(double v) {
  torch::Tensor t = torch::empty({}, torch::kFloat64);
  t.data_ptr<double>()[0] = v;
  return t;
}

torch::Tensor textTensor(std::string_view s) {
  torch::Tensor t = torch::empty({static_cast<int64_t>(s.size())}, torch::kUInt8);
  if (!s.empty()) std::memcpy(t.data_ptr(), s.data(), s.size());
  return t;
}

std::string encodeNamed(const Named& items) {
  std::vector<torch::Tensor> hold;  // keeps the contiguous copies alive while encoding
  std::vector<TensorRecord> records;
  hold.reserve(items.size());
  records.reserve(items.size());
  for (const auto& [name, t] : items) {
    if (!t.defined()) throw InvalidArgument(str("tensor '", name, "' is undefined; there is nothing to store"));
    torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
    auto dtype = fileDtype(c.scalar_type());
    if (!dtype)
      throw InvalidArgument(str("tensor '", name, "' has dtype ", c10::toString(c.scalar_type()),
                                ", which checkpoints do not store (floating point, integer and bool dtypes only)"));
    hold.push_back(c);
    records.push_back({name, *dtype, c.sizes().vec(), c.data_ptr(), c.nbytes()});
  }
  return encodeTensorTable(records);
}

// A tensor holding an entry's bytes. Torch computes contiguous strides with every dimension
// counted as at least 1, so that product must fit too, even for a tensor of no elements.
torch::Tensor toTensor(const TensorEntry& e, const std::string& source) {
  uint64_t strideSpan = tensorDtypeSize(e.dtype);
  for (int64_t d : e.shape) {
    if (__builtin_mul_overflow(strideSpan, static_cast<uint64_t>(std::max<int64_t>(d, 1)), &strideSpan) ||
        strideSpan > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      throw Error(str(source, ": entry '", e.name, "' has the shape ", shapeStr(e.shape),
                      ", too large for a tensor; the file is corrupt"));
  }
  torch::Tensor t = torch::empty(e.shape, torch::TensorOptions().dtype(torchDtype(e.dtype)));
  if (e.bytes > 0) std::memcpy(t.data_ptr(), e.data, e.bytes);
  return t;
}

// ---- the optimizer's state ----

const char* optimizerKind(const torch::optim::Optimizer& opt) {
  if (dynamic_cast<const torch::optim::SGD*>(&opt)) return "sgd";
  if (dynamic_cast<const torch::optim::AdamW*>(&opt)) return "adamw";
  if (dynamic_cast<const torch::optim::Adam*>(&opt)) return "adam";
  return nullptr;
}

std::string stateKey(const torch::Tensor& param) { return c10::guts::to_string(param.unsafeGetTensorImpl()); }

// Adam and AdamW keep the same four fields in two unrelated classes.
template <typename ParamState>
void adamEntries(const torch::optim::OptimizerParamState& base, const std::string& prefix, Named& out) {
  const auto* s = dynamic_cast<const ParamState*>(&base);
  if (s == nullptr) throw InvalidArgument(str(prefix, ": the optimizer holds state of an unexpected type"));
  out.emplace_back(prefix + "step", int64Scalar(s->step()));
  out.emplace_back(prefix + "exp_avg", s->exp_avg());
  out.emplace_back(prefix + "exp_avg_sq", s->exp_avg_sq());
  if (s->max_exp_avg_sq().defined()) out.emplace_back(prefix + "max_exp_avg_sq", s->max_exp_avg_sq());
}

// The optimizer entries of a checkpoint (see checkpoint.h). Every state tensor must have its
// parameter's shape: for the upgrade, which maps state to parameters by position, that is the
// check that the mapping is right.
void optimizerEntries(const torch::optim::Optimizer& opt, const std::string& path, Named& out) {
  const char* kind = optimizerKind(opt);
  if (kind == nullptr)
    throw InvalidArgument(str("cannot save checkpoint ", path,
                              ": the optimizer is not one checkpoints hold; they hold sgd, adam and adamw"));
  const auto& groups = opt.param_groups();
  out.emplace_back("optim/kind", textTensor(kind));
  out.emplace_back("optim/groups", int64Scalar(static_cast<int64_t>(groups.size())));
  const auto& states = opt.state();
  for (size_t g = 0; g < groups.size(); ++g) {
    const auto& params = groups[g].params();
    out.emplace_back(str("optim/", g, "/lr"), float64Scalar(groups[g].options().get_lr()));
    out.emplace_back(str("optim/", g, "/params"), int64Scalar(static_cast<int64_t>(params.size())));
    for (size_t p = 0; p < params.size(); ++p) {
      auto it = states.find(stateKey(params[p]));
      if (it == states.end()) continue;  // no step taken yet
      const std::string prefix = str("optim/", g, "/", p, "/");
      const size_t first = out.size();
      if (std::string_view(kind) == "sgd") {
        const auto* s = dynamic_cast<const torch::optim::SGDParamState*>(it->second.get());
        if (s == nullptr) throw InvalidArgument(str(prefix, ": the optimizer holds state of an unexpected type"));
        if (s->momentum_buffer().defined()) out.emplace_back(prefix + "momentum_buffer", s->momentum_buffer());
      } else if (std::string_view(kind) == "adam") {
        adamEntries<torch::optim::AdamParamState>(*it->second, prefix, out);
      } else {
        adamEntries<torch::optim::AdamWParamState>(*it->second, prefix, out);
      }
      for (size_t i = first; i < out.size(); ++i) {
        const torch::Tensor& t = out[i].second;
        if (t.dim() > 0 && !t.sizes().equals(params[p].sizes()))
          throw Error(str("checkpoint ", path, ": optimizer state '", out[i].first, "' has shape ", shapeStr(t.sizes()),
                          " but its parameter has shape ", shapeStr(params[p].sizes())));
      }
    }
  }
}

Named entriesOf(const Named& params, const Named& buffers, const torch::optim::Optimizer& opt, const TrainState& state,
                const std::string& path) {
  Named out;
  for (const auto& [name, t] : params) out.emplace_back("params/" + name, t);
  for (const auto& [name, t] : buffers) out.emplace_back("buffers/" + name, t);
  out.emplace_back("state/epoch", int64Scalar(state.epoch));
  out.emplace_back("state/step_in_epoch", int64Scalar(state.stepInEpoch));
  out.emplace_back("state/global_step", int64Scalar(state.globalStep));
  for (const auto& [name, v] : state.scalars) out.emplace_back("scalars/" + name, float64Scalar(v));
  for (const auto& [name, t] : state.tensors) out.emplace_back("tensors/" + name, t);
  optimizerEntries(opt, path, out);
  return out;
}

Digest writeCheckpointFile(const std::string& path, const Named& entries) {
  std::string payload;
  try {
    payload = encodeNamed(entries);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(str("cannot save checkpoint ", path, ": ", e.what()));
  } catch (const c10::Error& e) {
    throw Error(str("cannot save checkpoint ", path, ": ", e.what_without_backtrace()));
  }
  writeFramedFile(path, kMagic, kVersion, payload, kWhat);
  return sha256(payload.data(), payload.size());
}

template <typename Dict>
Named pairs(const Dict& d) {
  Named v;
  for (const auto& item : d) v.emplace_back(item.key(), item.value());
  return v;
}

// A decimal index as written by the saver ("0", "17"): no sign, no leading zero, < 10^9.
std::optional<size_t> parseIndex(std::string_view s) {
  if (s.empty() || s.size() > 9 || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  size_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<size_t>(c - '0');
  }
  return v;
}

std::vector<std::string_view> splitSlash(std::string_view s) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  for (;;) {
    size_t at = s.find('/', start);
    parts.push_back(s.substr(start, at == std::string_view::npos ? std::string_view::npos : at - start));
    if (at == std::string_view::npos) return parts;
    start = at + 1;
  }
}

// Reads a version-2 payload against a model and optimizer. Everything is checked in the
// constructor; apply() then changes model and optimizer and cannot fail on the file's account.
class Loader {
 public:
  Loader(const std::string& path, const std::string& payload, torch::nn::Module& model, torch::optim::Optimizer& opt)
      : path_(path), source_(str(kWhat, " ", path)), opt_(opt) {
    entries_ = decodeTensorTable(payload.data(), payload.size(), source_);
    for (const auto& e : entries_) classify(e);
    modelParams_ = pairs(model.named_parameters());
    modelBuffers_ = pairs(model.named_buffers());
    params_ = matchModel(sections_["params"], modelParams_, "parameter");
    buffers_ = matchModel(sections_["buffers"], modelBuffers_, "buffer");
    readState();
    readOptimizer();
  }

  TrainState apply() {
    torch::NoGradGuard noGrad;
    for (size_t i = 0; i < params_.size(); ++i) modelParams_[i].second.copy_(params_[i]);
    for (size_t i = 0; i < buffers_.size(); ++i) modelBuffers_[i].second.copy_(buffers_[i]);
    auto& groups = opt_.param_groups();
    for (size_t g = 0; g < lrs_.size(); ++g) groups[g].options().set_lr(lrs_[g]);
    auto& states = opt_.state();
    states.clear();
    for (auto& s : optStates_) {
      const torch::Tensor& param = groups[s.group].params()[s.param];
      auto like = [&](const torch::Tensor& src) { return torch::empty_like(param).copy_(src); };
      if (kind_ == "sgd") {
        auto st = std::make_unique<torch::optim::SGDParamState>();
        st->momentum_buffer(like(s.fields.at("momentum_buffer")));
        states[stateKey(param)] = std::move(st);
      } else if (kind_ == "adam") {
        states[stateKey(param)] = adamState<torch::optim::AdamParamState>(s, like);
      } else {
        states[stateKey(param)] = adamState<torch::optim::AdamWParamState>(s, like);
      }
    }
    return state_;
  }

 private:
  struct OptState {
    size_t group = 0, param = 0;
    int64_t step = 0;
    std::map<std::string, torch::Tensor> fields;
  };

  Error bad(const std::string& what) const { return Error(str(source_, ": ", what)); }

  void classify(const TensorEntry& e) {
    const size_t slash = e.name.find('/');
    const std::string section = slash == std::string::npos ? std::string() : e.name.substr(0, slash);
    static const std::set<std::string> kSections = {"params", "buffers", "state", "scalars", "tensors", "optim"};
    if (slash == std::string::npos || slash + 1 == e.name.size() || !kSections.count(section))
      throw bad(str("unknown entry '", e.name, "'; it was written by another program or a newer chorus"));
    sections_[section][e.name.substr(slash + 1)] = &e;
  }

  // The model's tensors, in the model's order, from the section's entries: same names, shapes
  // and dtypes, none missing and none extra. `what` is "parameter" or "buffer".
  std::vector<torch::Tensor> matchModel(const std::map<std::string, const TensorEntry*>& section, const Named& expected,
                                        const char* what) {
    std::vector<torch::Tensor> out;
    for (const auto& [name, cur] : expected) {
      auto it = section.find(name);
      if (it == section.end())
        throw bad(str(what, " '", name, "' is missing; the checkpoint was written for a different model (check model.*)"));
      const TensorEntry& e = *it->second;
      if (!cur.sizes().equals(e.shape))
        throw bad(str(what, " '", name, "' has shape ", shapeStr(e.shape), " in the checkpoint but ",
                      shapeStr(cur.sizes()), " in the model; it was written for a different model"));
      if (fileDtype(cur.scalar_type()) != e.dtype)
        throw bad(str(what, " '", name, "' is ", tensorDtypeName(e.dtype), " in the checkpoint but ", c10::toString(cur.scalar_type()),
                      " in the model"));
      out.push_back(toTensor(e, source_));
    }
    for (const auto& [name, e] : inFileOrder(section)) {
      bool known = std::any_of(expected.begin(), expected.end(), [&](const auto& x) { return x.first == name; });
      if (!known)
        throw bad(str(what, " '", name, "' is in the checkpoint but not in the model; it was written for a different model"));
    }
    return out;
  }

  // A section's entries in the order of the file, so that errors name the first one that is wrong.
  static std::vector<std::pair<std::string, const TensorEntry*>> inFileOrder(
      const std::map<std::string, const TensorEntry*>& section) {
    std::vector<std::pair<std::string, const TensorEntry*>> v(section.begin(), section.end());
    // The entries sit in one vector in file order, so their addresses are in that order.
    std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return std::less<>()(a.second, b.second); });
    return v;
  }

  const TensorEntry& scalarEntry(const std::string& name, const TensorEntry* e, TensorDtype dtype) const {
    if (e == nullptr) throw bad(str("entry '", name, "' is missing"));
    if (e->dtype != dtype || !e->shape.empty())
      throw bad(str("entry '", name, "' must be a ", tensorDtypeName(dtype), " scalar, but is ", tensorDtypeName(e->dtype),
                    " of shape ", shapeStr(e->shape)));
    return *e;
  }
  int64_t int64Of(const std::string& name, const TensorEntry* e) const {
    int64_t v;
    std::memcpy(&v, scalarEntry(name, e, TensorDtype::kInt64).data, sizeof v);
    return v;
  }
  double float64Of(const std::string& name, const TensorEntry* e) const {
    double v;
    std::memcpy(&v, scalarEntry(name, e, TensorDtype::kFloat64).data, sizeof v);
    return v;
  }
  static const TensorEntry* find(const std::map<std::string, const TensorEntry*>& m, const std::string& key) {
    auto it = m.find(key);
    return it == m.end() ? nullptr : it->second;
  }

  void readState() {
    auto& st = sections_["state"];
    for (const auto& [name, e] : inFileOrder(st)) {
      if (name != "epoch" && name != "step_in_epoch" && name != "global_step")
        throw bad(str("unknown entry 'state/", name, "'; it was written by another program or a newer chorus"));
    }
    state_.epoch = int64Of("state/epoch", find(st, "epoch"));
    state_.stepInEpoch = int64Of("state/step_in_epoch", find(st, "step_in_epoch"));
    state_.globalStep = int64Of("state/global_step", find(st, "global_step"));
    if (state_.epoch < 0 || state_.stepInEpoch < 0 || state_.globalStep < 0)
      throw bad(str("the loop state (epoch ", state_.epoch, ", step in epoch ", state_.stepInEpoch, ", global step ",
                    state_.globalStep, ") is negative; the file is corrupt"));
    for (const auto& [name, e] : sections_["scalars"]) state_.scalars[name] = float64Of("scalars/" + name, e);
    for (const auto& [name, e] : sections_["tensors"]) state_.tensors[name] = toTensor(*e, source_);
  }

  void readOptimizer() {
    auto& sec = sections_["optim"];
    const char* mine = optimizerKind(opt_);
    if (mine == nullptr)
      throw bad("this run's optimizer is not one checkpoints hold; they hold sgd, adam and adamw");
    const TensorEntry* kindEntry = find(sec, "kind");
    if (kindEntry == nullptr) throw bad("entry 'optim/kind' is missing");
    if (kindEntry->dtype != TensorDtype::kUInt8 || kindEntry->shape.size() != 1 || kindEntry->bytes > 16)
      throw bad("entry 'optim/kind' must be a short uint8 string; the file is corrupt");
    kind_.assign(reinterpret_cast<const char*>(kindEntry->data), kindEntry->bytes);
    if (kind_ != mine)
      throw bad(str("it holds the state of optimizer '", kind_, "', but this run uses '", mine,
                    "' (check optim.name)"));

    auto& groups = opt_.param_groups();
    const int64_t nGroups = int64Of("optim/groups", find(sec, "groups"));
    if (nGroups != static_cast<int64_t>(groups.size()))
      throw bad(str("it has ", nGroups, " optimizer param groups, the optimizer has ", groups.size()));
    std::map<std::pair<size_t, size_t>, OptState> perParam;
    const std::set<std::string> fields = kind_ == "sgd" ? std::set<std::string>{"momentum_buffer"}
                                                        : std::set<std::string>{"step", "exp_avg", "exp_avg_sq",
                                                                                "max_exp_avg_sq"};
    for (const auto& [name, e] : inFileOrder(sec)) {
      if (name == "kind" || name == "groups") continue;
      auto parts = splitSlash(name);
      auto g = parseIndex(parts[0]);
      auto unknown = [&] {
        return bad(str("unknown entry 'optim/", name, "'; it was written by another program or a newer chorus"));
      };
      if (!g || (parts.size() != 2 && parts.size() != 3)) throw unknown();
      if (*g >= groups.size()) throw bad(str("entry 'optim/", name, "' names param group ", *g, ", but there are ", groups.size()));
      if (parts.size() == 2) {
        if (parts[1] != "lr" && parts[1] != "params") throw unknown();
        continue;
      }
      auto p = parseIndex(parts[1]);
      if (!p || !fields.count(std::string(parts[2]))) throw unknown();
      const auto& params = groups[*g].params();
      if (*p >= params.size())
        throw bad(str("entry 'optim/", name, "' names parameter ", *p, " of group ", *g, ", which has ", params.size(),
                      "; it was written for a different model"));
      OptState& s = perParam[{*g, *p}];
      s.group = *g;
      s.param = *p;
      const torch::Tensor& param = params[*p];
      if (parts[2] == "step") {
        s.step = int64Of("optim/" + name, e);
        if (s.step < 0) throw bad(str("entry 'optim/", name, "' is negative; the file is corrupt"));
        s.fields["step"] = torch::Tensor();
        continue;
      }
      if (!param.sizes().equals(e->shape) || fileDtype(param.scalar_type()) != e->dtype)
        throw bad(str("optimizer state 'optim/", name, "' is ", tensorDtypeName(e->dtype), " of shape ", shapeStr(e->shape),
                      ", but its parameter is ", c10::toString(param.scalar_type()), " of shape ", shapeStr(param.sizes()),
                      "; it was written for a different model"));
      s.fields[std::string(parts[2])] = toTensor(*e, source_);
    }
    for (size_t g = 0; g < groups.size(); ++g) {
      lrs_.push_back(float64Of(str("optim/", g, "/lr"), find(sec, str(g, "/lr"))));
      const int64_t n = int64Of(str("optim/", g, "/params"), find(sec, str(g, "/params")));
      if (n != static_cast<int64_t>(groups[g].params().size()))
        throw bad(str("param group ", g, " has ", n, " parameters in the checkpoint but ", groups[g].params().size(),
                      " in the optimizer; it was written for a different model"));
    }
    for (auto& [key, s] : perParam) {
      const std::string at = str("optim/", s.group, "/", s.param, "/");
      if (kind_ == "sgd") {
        optStates_.push_back(std::move(s));
        continue;
      }
      for (const char* need : {"step", "exp_avg", "exp_avg_sq"}) {
        if (!s.fields.count(need)) throw bad(str("entry '", at, need, "' is missing; the file is corrupt"));
      }
      bool amsgrad = kind_ == "adam" ? static_cast<torch::optim::AdamOptions&>(groups[s.group].options()).amsgrad()
                                     : static_cast<torch::optim::AdamWOptions&>(groups[s.group].options()).amsgrad();
      if (amsgrad && !s.fields.count("max_exp_avg_sq"))
        throw bad(str("entry '", at, "max_exp_avg_sq' is missing, which this run's amsgrad needs"));
      optStates_.push_back(std::move(s));
    }
  }

  template <typename ParamState, typename Like>
  std::unique_ptr<torch::optim::OptimizerParamState> adamState(const OptState& s, Like like) {
    auto st = std::make_unique<ParamState>();
    st->step(s.step);
    st->exp_avg(like(s.fields.at("exp_avg")));
    st->exp_avg_sq(like(s.fields.at("exp_avg_sq")));
    if (auto it = s.fields.find("max_exp_avg_sq"); it != s.fields.end()) st->max_exp_avg_sq(like(it->second));
    return st;
  }

  std::string path_, source_;
  torch::optim::Optimizer& opt_;
  std::vector<TensorEntry> entries_;
  std::map<std::string, std::map<std::string, const TensorEntry*>> sections_;
  Named modelParams_, modelBuffers_;
  std::vector<torch::Tensor> params_, buffers_;
  TrainState state_;
  std::string kind_;
  std::vector<double> lrs_;
  std::vector<OptState> optStates_;
};

void checkVersionForLoad(const std::string& path, uint32_t version) {
  if (version == kVersion) return;
  if (version == kLegacyVersion)
    throw Error(str("checkpoint ", path,
                    ": version 1, written by chorus before the data-only format; loading it would run TorchScript "
                    "code from the file, so chorus no longer does. If you trust the file, convert it once with "
                    "`chorus checkpoint upgrade ",
                    path, " NEW.pt` and load NEW.pt"));
  throw Error(str("checkpoint ", path, ": version ", version, " is not supported (this build reads version ", kVersion,
                  "; a newer chorus wrote it, or the file is corrupt)"));
}

}  // namespace

void saveCheckpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer& opt,
                    const TrainState& state) {
  writeCheckpointFile(path, checkpointEntries(model, opt, state, path));
}

TrainState loadCheckpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer& opt) {
  FramedFile f = readCheckpointFile(path);
  // A tensor-parallel checkpoint's main file holds "layout/" entries, its shard files "shard/"
  // ones; only the table is parsed here (no copies), the loaders parse it again.
  for (const auto& e : decodeTensorTable(f.payload.data(), f.payload.size(), str(kWhat, " ", path))) {
    if (e.name.starts_with("layout/")) return loadShardedCheckpoint(path, model, opt, 0, 1);
    if (e.name.starts_with("shard/")) {
      const std::string name = fs::path(path).filename().string();
      const size_t at = name.find(".pt.");
      throw Error(str("checkpoint ", path, ": a shard file of a tensor-parallel checkpoint, not a checkpoint; load its main file",
                      at == std::string::npos ? std::string() : " " + (fs::path(path).parent_path() / name.substr(0, at + 3)).string(),
                      " instead"));
    }
  }
  return loadCheckpointEntries(path, f.payload, model, opt);
}

NamedTensors checkpointEntries(torch::nn::Module& model, const torch::optim::Optimizer& opt, const TrainState& state,
                               const std::string& path) {
  return entriesOf(pairs(model.named_parameters()), pairs(model.named_buffers()), opt, state, path);
}

Digest writeCheckpointEntries(const std::string& path, const NamedTensors& entries) {
  return writeCheckpointFile(path, entries);
}

FramedFile readCheckpointFile(const std::string& path) {
  return readFramedFile(path, kMagic, kWhat, [&](uint32_t v) { checkVersionForLoad(path, v); });
}

TrainState loadCheckpointEntries(const std::string& path, const std::string& payload, torch::nn::Module& model,
                                 torch::optim::Optimizer& opt) {
  try {
    Loader loader(path, payload, model, opt);
    return loader.apply();
  } catch (const c10::Error& e) {
    throw Error(str("checkpoint ", path, ": cannot be loaded: ", e.what_without_backtrace()));
  }
}

const char* checkpointOptimizerKind(const torch::optim::Optimizer& opt) { return optimizerKind(opt); }

std::string encodeTensors(const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  return encodeNamed(tensors);
}

std::vector<std::pair<std::string, torch::Tensor>> decodeTensors(const void* data, size_t size,
                                                                  const std::string& source) {
  Named out;
  for (const auto& e : decodeTensorTable(data, size, source)) out.emplace_back(e.name, toTensor(e, source));
  return out;
}

std::string checkpointName(int64_t globalStep) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "ckpt-%08lld.pt", static_cast<long long>(globalStep));
  return buf;
}

namespace {

// The step of a file named "ckpt-<digits>.pt", or nothing (temporary files, other files).
std::optional<int64_t> checkpointStep(std::string_view name) {
  constexpr std::string_view kPrefix = "ckpt-", kSuffix = ".pt";
  if (name.size() <= kPrefix.size() + kSuffix.size() || !name.starts_with(kPrefix) || !name.ends_with(kSuffix))
    return std::nullopt;
  std::string_view digits = name.substr(kPrefix.size(), name.size() - kPrefix.size() - kSuffix.size());
  if (digits.size() > 18 || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  return std::stoll(std::string(digits));
}

// "<r>-of-<k>" with 0 <= r < k: the numbers, or nothing.
std::optional<std::pair<size_t, size_t>> parseRankOf(std::string_view s) {
  const size_t at = s.find("-of-");
  if (at == std::string_view::npos) return std::nullopt;
  auto r = parseIndex(s.substr(0, at)), k = parseIndex(s.substr(at + 4));
  if (!r || !k || *r >= *k) return std::nullopt;
  return std::pair{*r, *k};
}

// The length of the main file's name if `name` is a shard file's ("ckpt-<step>.pt.tp<r>-of-<k>"
// or "ckpt-<step>.pt.pp<s>-of-<P>.tp<r>-of-<k>"), else nothing.
std::optional<size_t> shardMainLength(std::string_view name) {
  const size_t at = name.find(".pt.");
  if (at == std::string_view::npos || !checkpointStep(name.substr(0, at + 3))) return std::nullopt;
  std::string_view rest = name.substr(at + 4);
  if (rest.starts_with("pp")) {
    const size_t dot = rest.find('.');
    if (dot == std::string_view::npos || !parseRankOf(rest.substr(2, dot - 2))) return std::nullopt;
    rest = rest.substr(dot + 1);
  }
  if (!rest.starts_with("tp") || !parseRankOf(rest.substr(2))) return std::nullopt;
  return at + 3;
}

// Removes the shard files of the checkpoint at mainPath; appends them to `removed`.
void removeShardFiles(const std::string& mainPath, std::vector<std::string>& removed) {
  for (const auto& shard : checkpointShardFiles(mainPath)) {
    std::error_code ec;
    const bool gone = fs::remove(shard, ec);
    if (ec) throw Error(str("cannot remove the shard file ", shard, " of old checkpoint ", mainPath, ": ", ec.message()));
    if (gone) removed.push_back(shard);
  }
}

}  // namespace

std::string checkpointShardPath(const std::string& mainPath, int tpRank, int tpSize, int ppRank, int ppSize) {
  if (tpSize < 1 || tpRank < 0 || tpRank >= tpSize || ppSize < 1 || ppRank < 0 || ppRank >= ppSize)
    throw InvalidArgument(str("checkpointShardPath: tp rank ", tpRank, " of ", tpSize, ", pp rank ", ppRank, " of ", ppSize,
                              " is not a position in the mesh"));
  std::string out = mainPath;
  if (ppSize > 1) out += str(".pp", ppRank, "-of-", ppSize);
  return out + str(".tp", tpRank, "-of-", tpSize);
}

std::vector<std::string> checkpointShardFiles(const std::string& mainPath) {
  const fs::path main(mainPath);
  const std::string mainName = main.filename().string();
  fs::path dir = main.parent_path();
  if (dir.empty()) dir = ".";
  std::vector<std::string> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  fs::directory_iterator it(dir, ec);
  if (ec) throw Error(str("cannot list the shard files of checkpoint ", mainPath, ": ", ec.message()));
  for (const auto& entry : it) {
    const std::string name = entry.path().filename().string();
    auto len = shardMainLength(name);
    if (!len || std::string_view(name).substr(0, *len) != mainName || !entry.is_regular_file(ec)) continue;
    out.push_back((main.parent_path() / name).string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> listCheckpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return {};
  fs::directory_iterator it(dir, ec);
  if (ec) throw Error(str("cannot list checkpoints in ", dir, ": ", ec.message()));
  for (const auto& entry : it) {
    if (!entry.is_regular_file(ec)) continue;
    if (auto step = checkpointStep(entry.path().filename().string())) found.emplace_back(*step, entry.path().string());
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& [step, path] : found) out.push_back(std::move(path));
  return out;
}

std::string latestCheckpoint(const std::string& dir) {
  auto all = listCheckpoints(dir);
  return all.empty() ? std::string() : all.back();
}

std::vector<std::string> removeStaleTemporaries(const std::string& dir) {
  std::vector<std::string> removed;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return removed;
  fs::directory_iterator it(dir, ec);
  if (ec) throw Error(str("cannot list checkpoints in ", dir, ": ", ec.message()));
  for (const auto& entry : it) {
    const std::string name = entry.path().filename().string();
    const size_t at = name.rfind(".tmp.");
    const std::string_view base = std::string_view(name).substr(0, at == std::string::npos ? 0 : at);
    if (at == std::string::npos || (!checkpointStep(base) && !shardMainLength(base))) continue;
    auto pid = parseIndex(std::string_view(name).substr(at + 5));
    if (!pid || *pid == 0 || !entry.is_regular_file(ec)) continue;
    // kill(pid, 0) fails with ESRCH only when no such process exists; EPERM means it does.
    const bool mine = static_cast<pid_t>(*pid) == ::getpid();
    if (!mine && (::kill(static_cast<pid_t>(*pid), 0) == 0 || errno != ESRCH)) continue;
    fs::remove(entry.path(), ec);
    if (ec) throw Error(str("cannot remove the unfinished checkpoint ", entry.path().string(), ": ", ec.message()));
    removed.push_back(entry.path().string());
  }
  std::sort(removed.begin(), removed.end());
  return removed;
}

CheckpointHistory::CheckpointHistory(std::vector<std::string> inherited) : files_(std::move(inherited)) {}

std::vector<std::string> CheckpointHistory::add(const std::string& path, int64_t keep) {
  if (keep < 1) throw InvalidArgument(str("CheckpointHistory::add: keep = ", keep, " must be at least 1"));
  const fs::path key = fs::path(path).lexically_normal();
  std::erase_if(files_, [&](const std::string& f) { return fs::path(f).lexically_normal() == key; });
  files_.push_back(path);
  std::vector<std::string> removed;
  while (files_.size() > static_cast<size_t>(keep)) {
    const std::string victim = files_.front();
    std::error_code ec;
    const bool gone = fs::remove(victim, ec);
    if (ec) throw Error(str("cannot remove old checkpoint ", victim, ": ", ec.message()));
    files_.erase(files_.begin());
    if (gone) removed.push_back(victim);
    removeShardFiles(victim, removed);
  }
  return removed;
}

// ---- version 1: the TorchScript payload, read only to upgrade a trusted file ----

namespace {

// Every tensor of a version-1 sub-archive, in the order of its keys.
Named readArchiveTensors(torch::serialize::InputArchive& a, bool isBuffer) {
  Named out;
  for (const auto& key : a.keys()) {
    torch::Tensor t;
    if (!a.try_read(key, t, isBuffer)) throw Error(str("'", key, "' is not a tensor"));
    out.emplace_back(key, t.detach().clone());
  }
  return out;
}

int64_t readLegacyInt(torch::serialize::InputArchive& a, const char* key) {
  torch::Tensor t;
  a.read(key, t);
  return t.item<int64_t>();
}

std::unique_ptr<torch::optim::Optimizer> legacyOptimizer(const std::string& kind, std::vector<torch::Tensor> params,
                                                         double lr) {
  if (kind == "sgd") return std::make_unique<torch::optim::SGD>(std::move(params), torch::optim::SGDOptions(lr));
  if (kind == "adam") return std::make_unique<torch::optim::Adam>(std::move(params), torch::optim::AdamOptions(lr));
  if (kind == "adamw") return std::make_unique<torch::optim::AdamW>(std::move(params), torch::optim::AdamWOptions(lr));
  throw Error(str("it holds the state of optimizer '", kind, "', which chorus never made"));
}

}  // namespace

UpgradeReport upgradeCheckpoint(const std::string& from, const std::string& to) {
  FramedFile f = readFramedFile(from, kMagic, kWhat, [&](uint32_t v) {
    if (v == kVersion) throw Error(str("checkpoint ", from, ": already version 2 (data only); there is nothing to upgrade"));
    if (v != kLegacyVersion)
      throw Error(str("checkpoint ", from, ": version ", v, " is not one this build can upgrade (it upgrades version 1)"));
  });
  std::error_code ec;
  if (fs::exists(to, ec) && !fs::equivalent(from, to, ec))
    throw Error(str("cannot upgrade checkpoint ", from, ": ", to,
                    " exists; name a new file (or the old file itself, to convert it in place)"));
  UpgradeReport report;
  Named entries;
  try {
    torch::serialize::InputArchive root;
    root.load_from(f.payload.data(), f.payload.size());
    torch::serialize::InputArchive pa, ba, st, sc, ta, meta, optim;
    root.read("params", pa);
    root.read("buffers", ba);
    Named params = readArchiveTensors(pa, false), buffers = readArchiveTensors(ba, true);

    TrainState state;
    root.read("state", st);
    state.epoch = readLegacyInt(st, "epoch");
    state.stepInEpoch = readLegacyInt(st, "step_in_epoch");
    state.globalStep = readLegacyInt(st, "global_step");
    root.read("scalars", sc);
    for (auto& [name, t] : readArchiveTensors(sc, false)) state.scalars[name] = t.item<double>();
    if (root.try_read("tensors", ta)) {
      for (auto& [name, t] : readArchiveTensors(ta, false)) {
        // The trainer's per-rank codec state ("codec.rank<r>") was itself a TorchScript archive
        // in a byte tensor: it becomes a tensor table like the one the trainer now writes.
        if (name.starts_with("codec.rank") && t.scalar_type() == torch::kUInt8 && t.dim() == 1) {
          torch::Tensor bytes = t.contiguous();
          torch::serialize::InputArchive inner;
          inner.load_from(static_cast<const char*>(bytes.data_ptr()), static_cast<size_t>(bytes.numel()));
          std::string table = encodeNamed(readArchiveTensors(inner, false));
          t = textTensor(table);
        }
        state.tensors[name] = t;
      }
    }

    root.read("optim_meta", meta);
    root.read("optim", optim);
    c10::IValue kind;
    meta.read("kind", kind);
    const int64_t groups = readLegacyInt(meta, "groups");
    // chorus only ever made optimizers with one param group, over the model's parameters in
    // the order they were written.
    if (groups != 1) throw Error(str("it has ", groups, " optimizer param groups; chorus wrote 1"));
    torch::Tensor lr;
    meta.read("lr/0", lr);
    std::vector<torch::Tensor> tensors;
    for (const auto& [name, t] : params) tensors.push_back(t);
    auto opt = legacyOptimizer(kind.toStringRef(), tensors, lr.item<double>());
    opt->load(optim);

    entries = entriesOf(params, buffers, *opt, state, to);
    report.params = params.size();
    report.buffers = buffers.size();
    report.optimizerStates = opt->state().size();
    report.optimizer = kind.toStringRef();
    report.globalStep = state.globalStep;
  } catch (const c10::Error& e) {
    throw Error(str("checkpoint ", from, ": the version-1 payload cannot be read (", e.what_without_backtrace(),
                    "); it was not written by chorus"));
  } catch (const std::exception& e) {
    throw Error(str("checkpoint ", from, ": cannot upgrade: ", e.what()));
  }
  writeCheckpointFile(to, entries);
  return report;
}

}  // namespace chorus::train
