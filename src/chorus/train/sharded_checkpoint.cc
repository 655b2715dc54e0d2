// Sharded checkpoints (see sharded_checkpoint.h for the files and their entries).
//
// Save, on the tp group of dp rank 0:
//   1. every rank takes the entries a plain checkpoint of its part would hold (checkpoint.cc);
//   2. tp ranks r > 0 keep their split parameters and those parameters' optimizer tensors and
//      write them, with their position and step, to "<main>.tp<r>-of-<k>";
//   3. an all-gather over tp carries each rank's outcome and its file's SHA-256 to every rank;
//   4. if all succeeded, tp rank 0 writes the main file (its own entries plus the layout and the
//      digests); a second all-gather tells every rank whether it did.
// A crash anywhere before step 4 finishes leaves the previous main file (if any) and at worst
// new shard files that do not match its digests: a load refuses the mixture rather than
// joining shards of two saves.
//
// Load builds, in memory, the plain checkpoint that the current rank's part would have had
// (params/ and optim/ tensors cut for this rank, everything else from the main file) and hands
// it to the plain loader, which checks it against the model and optimizer and copies it in. The
// re-sharding needs no arithmetic, so loaded values are bit-for-bit the saved ones.
#include "chorus/train/sharded_checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "chorus/common/error.h"
#include "chorus/parallel/tensor/sharding.h"

namespace chorus::train {
namespace {

namespace fs = std::filesystem;
using parallel::ShardSpec;

torch::Tensor int64Scalar(int64_t v) { return torch::tensor(v, torch::kInt64); }

torch::Tensor int64Vector(const std::vector<int64_t>& v) {
  return torch::tensor(at::ArrayRef<int64_t>(v), torch::kInt64).reshape({static_cast<int64_t>(v.size())});
}

torch::Tensor textTensor(const std::string& s) {
  torch::Tensor t = torch::empty({static_cast<int64_t>(s.size())}, torch::kUInt8);
  if (!s.empty()) std::memcpy(t.data_ptr(), s.data(), s.size());
  return t;
}

std::string shapeStr(c10::IntArrayRef sizes) {
  std::ostringstream os;
  os << sizes;
  return os.str();
}

// The full (unpadded) shape of a parameter whose shard on a rank of k is `local`.
std::vector<int64_t> fullShapeOf(const torch::Tensor& local, const ShardSpec& s, int64_t k) {
  std::vector<int64_t> shape = local.sizes().vec();
  if (s.dim >= 0 && s.dim < local.dim()) shape[s.dim] = s.fullSize > 0 ? s.fullSize : shape[s.dim] * k;
  return shape;
}

// optim/<g>/<p>/<field> -> (g, p, field); anything else -> nothing.
struct OptimKey {
  size_t group = 0, param = 0;
  std::string field;
};
std::optional<OptimKey> parseOptimKey(const std::string& name) {
  if (!name.starts_with("optim/")) return std::nullopt;
  std::vector<std::string> parts;
  std::stringstream ss(name.substr(6));
  for (std::string part; std::getline(ss, part, '/');) parts.push_back(part);
  if (parts.size() != 3) return std::nullopt;
  auto index = [](const std::string& s) -> std::optional<size_t> {
    if (s.empty() || s.size() > 9 || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return std::nullopt;
    return static_cast<size_t>(std::stoul(s));
  };
  auto g = index(parts[0]), p = index(parts[1]);
  if (!g || !p) return std::nullopt;
  return OptimKey{*g, *p, parts[2]};
}

// The name of every optimizer parameter, by group and position, found by identity among the
// model's parameters; nothing for a tensor that is not one of them.
std::vector<std::vector<std::optional<std::string>>> optimizerParamNames(torch::nn::Module& model,
                                                                         const torch::optim::Optimizer& opt) {
  std::map<const void*, std::string> byImpl;
  for (const auto& p : model.named_parameters()) byImpl[p.value().unsafeGetTensorImpl()] = p.key();
  std::vector<std::vector<std::optional<std::string>>> names;
  for (const auto& group : opt.param_groups()) {
    auto& row = names.emplace_back();
    for (const auto& p : group.params()) {
      auto it = byImpl.find(p.unsafeGetTensorImpl());
      row.push_back(it == byImpl.end() ? std::nullopt : std::optional<std::string>(it->second));
    }
  }
  return names;
}

std::string joinLines(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "\n" : "") + v[i];
  return s;
}

std::vector<std::string> splitLines(const std::string& s) {
  std::vector<std::string> v;
  if (s.empty()) return v;
  std::stringstream ss(s);
  for (std::string line; std::getline(ss, line, '\n');) v.push_back(line);
  if (s.back() == '\n') v.emplace_back();
  return v;
}

std::string textOf(const torch::Tensor& t) {
  torch::Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), static_cast<size_t>(c.numel()));
}

// A tensor of this rank's part: the full tensor itself when replicated, else its shard.
torch::Tensor reshard(const torch::Tensor& full, const ShardSpec& s, int rank, int k) {
  return s.dim < 0 ? full : parallel::shardOf(full, s, rank, k);
}

struct SavedParam {
  ShardSpec spec;
  std::vector<int64_t> shape;  // full, unpadded
};

// ---- reading a checkpoint: the main file and the shard files its layout names ----

class CheckpointSet {
 public:
  explicit CheckpointSet(const std::string& path) : path_(path), source_(str("checkpoint ", path)) {
    FramedFile f = readCheckpointFile(path);
    main_ = decodeTensors(f.payload.data(), f.payload.size(), source_);
    f.payload.clear();
    files_.emplace_back();
    for (const auto& [name, t] : main_) {
      if (name.starts_with("shard/"))
        throw Error(str(source_, ": a shard file of a tensor-parallel checkpoint, not a checkpoint; load its main file "
                                 "(the name without the \".tp<r>-of-<k>\" ending)"));
      files_[0][name] = t;
    }
    layout_.files.push_back(path);
    layout_.globalStep = int64Of(files_[0], "state/global_step", source_);
    if (files_[0].count("optim/kind")) kind_ = textOf(files_[0].at("optim/kind"));
    if (files_[0].count("layout/tp")) {
      readLayout();
      for (int64_t r = 1; r < layout_.tp; ++r) readShard(static_cast<int>(r));
    } else {
      for (const auto& [name, t] : main_) {
        if (!name.starts_with("params/")) continue;
        const std::string param = name.substr(7);
        params_[param] = {ShardSpec{}, t.sizes().vec()};
        order_.push_back(param);
      }
    }
  }

  const CheckpointLayout& layout() const { return layout_; }
  const NamedTensors& mainEntries() const { return main_; }
  const std::map<std::string, SavedParam>& params() const { return params_; }
  const std::vector<std::string>& paramOrder() const { return order_; }
  // Per group, the parameter names of the optimizer's state (sharded checkpoints only).
  const std::optional<std::vector<std::vector<std::string>>>& optimNames() const { return optimNames_; }
  const std::string& optimizerKind() const { return kind_; }

  // The full tensor of entry `entry` (params/<name> or optim/<g>/<p>/<field>) of parameter
  // `param`: joined from every file's piece when the parameter was split.
  torch::Tensor full(const std::string& entry, const std::string& param) const {
    const SavedParam& sp = params_.at(param);
    if (sp.spec.dim < 0) return files_[0].at(entry);
    std::vector<torch::Tensor> pieces;
    for (const auto& file : files_) pieces.push_back(file.at(entry));
    return parallel::unshard(pieces, sp.spec);
  }

 private:
  Error bad(const std::string& source, const std::string& what) const { return Error(str(source, ": ", what)); }

  int64_t int64Of(const std::map<std::string, torch::Tensor>& m, const std::string& name, const std::string& source) const {
    auto it = m.find(name);
    if (it == m.end()) throw bad(source, str("entry '", name, "' is missing"));
    if (it->second.scalar_type() != torch::kInt64 || it->second.dim() != 0)
      throw bad(source, str("entry '", name, "' must be an int64 scalar; the file is corrupt"));
    return it->second.item<int64_t>();
  }

  // The expected shape of a split parameter's piece in each file of a tp = k save.
  std::vector<int64_t> pieceShape(const std::string& param, const SavedParam& sp) const {
    std::vector<int64_t> shape = sp.shape;
    if (sp.spec.dim < 0) return shape;
    const int64_t size = sp.spec.padded() ? sp.spec.paddedSize : sp.shape[sp.spec.dim];
    if (size % (layout_.tp * sp.spec.blocks) != 0)
      throw bad(source_, str("layout of '", param, "': dimension ", sp.spec.dim, " of size ", size, " does not split into ",
                             sp.spec.blocks, " block(s) of ", layout_.tp, " pieces; the file is corrupt"));
    shape[sp.spec.dim] = size / layout_.tp;
    return shape;
  }

  void readLayout() {
    const auto& m = files_[0];
    layout_.sharded = true;
    layout_.tp = int64Of(m, "layout/tp", source_);
    layout_.pp = int64Of(m, "layout/pp", source_);
    layout_.dp = int64Of(m, "layout/dp", source_);
    if (layout_.tp < 1 || layout_.tp > 65536 || layout_.dp < 1 || layout_.pp < 1)
      throw bad(source_, str("the layout tp ", layout_.tp, ", pp ", layout_.pp, ", dp ", layout_.dp,
                             " is not a mesh; the file is corrupt"));
    if (layout_.pp != 1)
      throw bad(source_, str("it was saved with pp = ", layout_.pp,
                             "; this chorus reads checkpoints of pipeline-parallel runs only at pp = 1"));
    for (const auto& [name, t] : main_) {
      if (!name.starts_with("layout/spec/")) continue;
      const std::string param = name.substr(12);
      auto shapeIt = m.find("layout/shape/" + param);
      if (t.scalar_type() != torch::kInt64 || t.dim() != 1 || t.size(0) != 5 || shapeIt == m.end() ||
          shapeIt->second.scalar_type() != torch::kInt64 || shapeIt->second.dim() != 1)
        throw bad(source_, str("the layout of parameter '", param, "' is malformed; the file is corrupt"));
      SavedParam sp;
      auto v = t.accessor<int64_t, 1>();
      sp.spec.dim = static_cast<int>(v[0]);
      sp.spec.blocks = static_cast<int>(v[1]);
      sp.spec.fullSize = v[2];
      sp.spec.paddedSize = v[3];
      const int64_t stage = v[4];
      const torch::Tensor shape = shapeIt->second.contiguous();
      sp.shape.assign(shape.data_ptr<int64_t>(), shape.data_ptr<int64_t>() + shape.numel());
      const int64_t rank = static_cast<int64_t>(sp.shape.size());
      const bool ok = sp.spec.dim >= -1 && sp.spec.dim < rank && sp.spec.blocks >= 1 && stage == 0 &&
                      std::all_of(sp.shape.begin(), sp.shape.end(), [](int64_t d) { return d >= 0; }) &&
                      (sp.spec.dim < 0 || (sp.spec.fullSize == sp.shape[sp.spec.dim] &&
                                           (sp.spec.paddedSize == 0 || sp.spec.paddedSize >= sp.spec.fullSize)));
      if (!ok)
        throw bad(source_, str("the layout of parameter '", param, "' (spec ", shapeStr(v.sizes()), " = [", v[0], ", ", v[1],
                               ", ", v[2], ", ", v[3], ", ", v[4], "], full shape ", shapeStr(sp.shape),
                               ") is inconsistent; the file is corrupt"));
      auto p = m.find("params/" + param);
      const std::vector<int64_t> piece = pieceShape(param, sp);
      if (p == m.end()) throw bad(source_, str("parameter '", param, "' is in the layout but has no entry; the file is corrupt"));
      if (!p->second.sizes().equals(piece))
        throw bad(source_, str("parameter '", param, "' has shape ", shapeStr(p->second.sizes()), " but its layout says ",
                               shapeStr(piece), "; the file is corrupt"));
      params_[param] = sp;
      order_.push_back(param);
    }
    for (const auto& [name, t] : main_) {
      if (name.starts_with("params/") && !params_.count(name.substr(7)))
        throw bad(source_, str("parameter '", name.substr(7), "' has no layout entry; the file is corrupt"));
      if (name.starts_with("layout/shape/") && !params_.count(name.substr(13)))
        throw bad(source_, str("entry '", name, "' has no layout/spec entry; the file is corrupt"));
    }
    // The optimizer's parameter names, group by group.
    const int64_t groups = m.count("optim/groups") ? int64Of(m, "optim/groups", source_) : 0;
    std::vector<std::vector<std::string>> names;
    for (int64_t g = 0; g < groups; ++g) {
      auto it = m.find(str("layout/optim/", g, "/names"));
      if (it == m.end() || it->second.scalar_type() != torch::kUInt8 || it->second.dim() != 1)
        throw bad(source_, str("entry 'layout/optim/", g, "/names' is missing or not text; the file is corrupt"));
      names.push_back(splitLines(textOf(it->second)));
      for (const auto& n : names.back()) {
        if (!params_.count(n))
          throw bad(source_, str("optimizer group ", g, " names parameter '", n, "', which is not in the layout; the file is corrupt"));
      }
    }
    optimNames_ = names;
    auto digests = m.find("layout/shard_sha256");
    if (digests == m.end() || digests->second.scalar_type() != torch::kUInt8 ||
        !digests->second.sizes().equals({layout_.tp * layout_.pp, 32}))
      throw bad(source_, str("entry 'layout/shard_sha256' is missing or not [", layout_.tp * layout_.pp,
                             ", 32] uint8; the file is corrupt"));
    digests_ = digests->second.contiguous();
    for (const auto& [name, t] : main_) {
      if (!name.starts_with("layout/")) continue;
      const bool known = name == "layout/tp" || name == "layout/pp" || name == "layout/dp" || name == "layout/shard_sha256" ||
                         name.starts_with("layout/spec/") || name.starts_with("layout/shape/") ||
                         (name.starts_with("layout/optim/") && name.ends_with("/names"));
      if (!known) throw bad(source_, str("unknown entry '", name, "'; it was written by another program or a newer chorus"));
    }
    for (int64_t r = 1; r < layout_.tp; ++r) layout_.files.push_back(checkpointShardPath(path_, static_cast<int>(r), static_cast<int>(layout_.tp)));
  }

  // The name of the parameter that optimizer entry (g, p) belongs to, if the layout says.
  const std::string* optimParam(const OptimKey& k) const {
    if (!optimNames_ || k.group >= optimNames_->size() || k.param >= (*optimNames_)[k.group].size()) return nullptr;
    return &(*optimNames_)[k.group][k.param];
  }

  void readShard(int r) {
    const int k = static_cast<int>(layout_.tp);
    const std::string sp = checkpointShardPath(path_, r, k);
    const std::string mainName = fs::path(path_).filename().string();
    std::error_code ec;
    if (!fs::exists(sp, ec))
      throw Error(str(source_, ": its shard file ", sp, " is missing: a checkpoint saved at tp = ", k, " needs its ", k,
                      " files (", mainName, " and its .tp<r>-of-", k, " siblings) in one folder; copy the shard files with it"));
    const std::string source = str("checkpoint shard ", sp);
    FramedFile f = readCheckpointFile(sp);
    NamedTensors entries = decodeTensors(f.payload.data(), f.payload.size(), source);
    f.payload.clear();
    std::map<std::string, torch::Tensor> m(entries.begin(), entries.end());
    const int64_t step = int64Of(m, "shard/global_step", source);
    if (step != layout_.globalStep)
      throw bad(source, str("it holds step ", step, ", but its main file ", mainName, " holds step ", layout_.globalStep,
                            ": it belongs to another checkpoint; the checkpoint is incomplete"));
    const int64_t tp = int64Of(m, "shard/tp", source), rank = int64Of(m, "shard/tp_rank", source);
    const int64_t pp = int64Of(m, "shard/pp", source), stage = int64Of(m, "shard/pp_rank", source);
    if (tp != k || rank != r || pp != 1 || stage != 0)
      throw bad(source, str("it holds tp rank ", rank, " of ", tp, " (pp rank ", stage, " of ", pp, "), but its main file ",
                            mainName, " expects tp rank ", r, " of ", k, " (pp rank 0 of 1); the checkpoint is mixed up"));
    if (std::memcmp(f.header.sha256.data(), digests_[r].data_ptr<uint8_t>(), 32) != 0)
      throw bad(source, str("it was written by another save of step ", step, " than its main file ", mainName,
                            " (its SHA-256 is not the one the main file recorded), so the checkpoint is incomplete: a "
                            "save that did not finish may have overwritten it. Resume from an earlier checkpoint"));
    // Exactly the split parameters and their optimizer tensors, shaped and typed as the main file's pieces.
    std::set<std::string> expected;
    for (const auto& [name, sp2] : params_) {
      if (sp2.spec.dim >= 0) expected.insert("params/" + name);
    }
    for (const auto& [name, t] : main_) {
      auto key = parseOptimKey(name);
      if (!key || key->field == "step") continue;
      const std::string* param = optimParam(*key);
      if (param != nullptr && params_.at(*param).spec.dim >= 0) expected.insert(name);
    }
    for (const auto& [name, t] : entries) {
      if (name.starts_with("shard/")) {
        if (name != "shard/global_step" && name != "shard/tp" && name != "shard/tp_rank" && name != "shard/pp" &&
            name != "shard/pp_rank")
          throw bad(source, str("unknown entry '", name, "'; it was written by another program or a newer chorus"));
        continue;
      }
      if (!expected.count(name)) throw bad(source, str("entry '", name, "' is not one its main file's layout expects; the file is corrupt"));
      const torch::Tensor& want = files_[0].at(name);
      if (!t.sizes().equals(want.sizes()) || t.scalar_type() != want.scalar_type())
        throw bad(source, str("entry '", name, "' is ", c10::toString(t.scalar_type()), " of shape ", shapeStr(t.sizes()),
                              ", but the main file's piece is ", c10::toString(want.scalar_type()), " of shape ",
                              shapeStr(want.sizes()), "; the file is corrupt"));
    }
    for (const auto& name : expected) {
      if (!m.count(name)) throw bad(source, str("entry '", name, "' is missing; the file is corrupt"));
    }
    files_.push_back(std::move(m));
  }

  std::string path_, source_;
  NamedTensors main_;
  std::vector<std::map<std::string, torch::Tensor>> files_;  // by tp rank; [0] the main file
  CheckpointLayout layout_;
  std::map<std::string, SavedParam> params_;
  std::vector<std::string> order_;
  std::optional<std::vector<std::vector<std::string>>> optimNames_;
  torch::Tensor digests_;
  std::string kind_;
};

}  // namespace

// ---- save ----

void saveShardedCheckpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer& opt,
                           const TrainState& state, const parallel::TpGroup& tp, int dpRank, int dpSize) {
  if (dpSize < 1 || dpRank < 0 || dpRank >= dpSize)
    throw InvalidArgument(str("saveShardedCheckpoint: dp rank ", dpRank, " of ", dpSize, " is not a position in the mesh"));
  if (dpRank != 0) return;
  const int k = parallel::tpSize(tp), r = parallel::tpRank(tp);
  // Everything that can be refused is refused here, the same way on every tp rank (their
  // optimizers and models have the same structure), before any file or collective.
  const NamedTensors plain = checkpointEntries(model, opt, state, path);
  const auto specs = parallel::shardSpecs(model);
  std::vector<std::vector<std::string>> names;
  for (const auto& row : optimizerParamNames(model, opt)) {
    auto& out = names.emplace_back();
    for (const auto& n : row) {
      if (!n)
        throw InvalidArgument(str("cannot save checkpoint ", path, ": the optimizer holds a tensor that is not a parameter of the "
                                  "model; a sharded checkpoint names every optimizer state by its parameter"));
      out.push_back(*n);
    }
  }
  auto splitParam = [&](const std::string& entry) -> bool {
    if (entry.starts_with("params/")) return specs.at(entry.substr(7)).dim >= 0;
    auto key = parseOptimKey(entry);
    return key && key->field != "step" && specs.at(names.at(key->group).at(key->param)).dim >= 0;
  };

  // 1-2: the shard files.
  std::exception_ptr failure;
  Digest digest{};
  if (r > 0) {
    try {
      NamedTensors shard = {{"shard/tp_rank", int64Scalar(r)},
                            {"shard/tp", int64Scalar(k)},
                            {"shard/pp_rank", int64Scalar(0)},
                            {"shard/pp", int64Scalar(1)},
                            {"shard/global_step", int64Scalar(state.globalStep)}};
      for (const auto& [name, t] : plain) {
        if (splitParam(name)) shard.emplace_back(name, t);
      }
      digest = writeCheckpointEntries(checkpointShardPath(path, r, k), shard);
    } catch (...) {
      failure = std::current_exception();
    }
  }
  // 3: outcomes and digests, [ok, 32 digest bytes] per rank.
  torch::Tensor mine = torch::zeros({1, 33}, torch::kInt64);
  int64_t* row = mine.data_ptr<int64_t>();
  row[0] = failure ? 0 : 1;
  for (int i = 0; i < 32; ++i) row[i + 1] = digest[i];
  const torch::Tensor all = parallel::allGatherAlong(mine, 0, tp);
  if (failure) std::rethrow_exception(failure);
  for (int q = 1; q < k; ++q) {
    if (all[q][0].item<int64_t>() == 0)
      throw Error(str("cannot save checkpoint ", path, ": tp rank ", q, " could not write its shard file ",
                      checkpointShardPath(path, q, k), " (that rank's error says why); the main file was not written"));
  }

  // 4: the main file.
  if (r == 0) {
    try {
      NamedTensors entries = plain;
      entries.emplace_back("layout/tp", int64Scalar(k));
      entries.emplace_back("layout/pp", int64Scalar(1));
      entries.emplace_back("layout/dp", int64Scalar(dpSize));
      for (const auto& p : model.named_parameters()) {
        const ShardSpec& s = specs.at(p.key());
        entries.emplace_back("layout/spec/" + p.key(), int64Vector({s.dim, s.blocks, s.fullSize, s.paddedSize, 0}));
        entries.emplace_back("layout/shape/" + p.key(), int64Vector(fullShapeOf(p.value(), s, k)));
      }
      for (size_t g = 0; g < names.size(); ++g) entries.emplace_back(str("layout/optim/", g, "/names"), textTensor(joinLines(names[g])));
      torch::Tensor digests = all.narrow(1, 1, 32).to(torch::kUInt8).contiguous();
      digests[0].zero_();
      entries.emplace_back("layout/shard_sha256", digests);
      writeCheckpointEntries(path, entries);
    } catch (...) {
      failure = std::current_exception();
    }
  }
  torch::Tensor done = torch::full({1}, failure ? 0 : 1, torch::kInt64);
  const torch::Tensor allDone = parallel::allGatherAlong(done, 0, tp);
  if (failure) std::rethrow_exception(failure);
  if (allDone[0].item<int64_t>() == 0)
    throw Error(str("cannot save checkpoint ", path, ": tp rank 0 could not write the main file (that rank's error says why); "
                    "the checkpoint is incomplete"));
  if (r == 0) {
    // Shard files of an earlier save of this step at another tp would only confuse a reader.
    std::set<std::string> current;
    for (int q = 1; q < k; ++q) current.insert(checkpointShardPath(path, q, k));
    for (const auto& f : checkpointShardFiles(path)) {
      if (current.count(f)) continue;
      std::error_code ec;
      fs::remove(f, ec);  // harmless if it stays: nothing reads it
    }
  }
}

void saveShardedCheckpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer& opt,
                           const TrainState& state, const parallel::ProcessMesh& mesh) {
  if (mesh.size("pp") > 1)
    throw InvalidArgument(str("cannot save checkpoint ", path, ": sharded checkpoints of pipeline-parallel runs (pp = ",
                              mesh.size("pp"), ") are not supported yet"));
  parallel::TpGroup tp = mesh.has("tp") ? mesh.group("tp") : nullptr;
  saveShardedCheckpoint(path, model, opt, state, tp, mesh.coord("dp"), mesh.size("dp"));
}

// ---- load ----

TrainState loadShardedCheckpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer& opt,
                                 int tpRank, int tpSize) {
  if (tpSize < 1 || tpRank < 0 || tpRank >= tpSize)
    throw InvalidArgument(str("loadShardedCheckpoint: tp rank ", tpRank, " of ", tpSize, " is not a position in the mesh"));
  const CheckpointSet set(path);
  const std::string source = str("checkpoint ", path);
  const auto specs = parallel::shardSpecs(model);
  const std::string at = tpSize > 1 ? str(" at tp = ", tpSize) : std::string();

  // Names and full shapes first: these messages say more than the plain loader's would about
  // the shards it is given.
  std::vector<std::pair<std::string, torch::Tensor>> current;
  for (const auto& p : model.named_parameters()) current.emplace_back(p.key(), p.value());
  for (const auto& [name, t] : current) {
    auto it = set.params().find(name);
    if (it == set.params().end())
      throw Error(str(source, ": parameter '", name, "' is missing; the checkpoint was written for a different model (check model.*)"));
    const std::vector<int64_t> want = fullShapeOf(t, specs.at(name), tpSize);
    if (it->second.shape != want)
      throw Error(str(source, ": parameter '", name, "' has the full shape ", shapeStr(it->second.shape),
                      " in the checkpoint but ", shapeStr(want), " in this model", at,
                      "; it was written for a different model (check model.*)"));
  }
  for (const auto& name : set.paramOrder()) {
    if (!specs.count(name))
      throw Error(str(source, ": parameter '", name, "' is in the checkpoint but not in the model; it was written for a different model"));
  }
  // Optimizer parameters by name.
  const auto mineNamed = optimizerParamNames(model, opt);
  std::vector<std::vector<std::string>> mine;
  for (size_t g = 0; g < mineNamed.size(); ++g) {
    auto& row = mine.emplace_back();
    for (size_t p = 0; p < mineNamed[g].size(); ++p) {
      if (!mineNamed[g][p])
        throw InvalidArgument(str("cannot load checkpoint ", path, ": parameter ", p, " of the optimizer's group ", g,
                                  " is not a parameter of the model"));
      row.push_back(*mineNamed[g][p]);
    }
  }
  if (set.optimNames()) {
    const auto& theirs = *set.optimNames();
    if (theirs.size() != mine.size())
      throw Error(str(source, ": it has ", theirs.size(), " optimizer param groups, the optimizer has ", mine.size()));
    for (size_t g = 0; g < mine.size(); ++g) {
      if (theirs[g] != mine[g]) {
        size_t p = 0;
        while (p < mine[g].size() && p < theirs[g].size() && mine[g][p] == theirs[g][p]) ++p;
        throw Error(str(source, ": optimizer param group ", g, " holds ", theirs[g].size(), " parameters in the checkpoint and ",
                        mine[g].size(), " in this run, differing first at position ", p, " ('",
                        p < theirs[g].size() ? theirs[g][p] : "(none)", "' against '", p < mine[g].size() ? mine[g][p] : "(none)",
                        "'); it was written for a different model or optimizer setup"));
      }
    }
  }
  auto paramOf = [&](const OptimKey& k) -> const std::string* {
    if (k.group >= mine.size() || k.param >= mine[k.group].size()) return nullptr;
    return &mine[k.group][k.param];
  };

  // The plain checkpoint this rank's part would have had.
  NamedTensors entries;
  for (const auto& [name, t] : set.mainEntries()) {
    if (name.starts_with("layout/")) continue;
    if (name.starts_with("params/")) {
      const std::string param = name.substr(7);
      entries.emplace_back(name, reshard(set.full(name, param), specs.at(param), tpRank, tpSize));
      continue;
    }
    auto key = parseOptimKey(name);
    const std::string* param = key && key->field != "step" && t.dim() > 0 ? paramOf(*key) : nullptr;
    if (param != nullptr && set.params().count(*param)) {
      torch::Tensor full = set.full(name, *param);
      if (!full.sizes().equals(set.params().at(*param).shape))
        throw Error(str(source, ": optimizer state '", name, "' has the full shape ", shapeStr(full.sizes()), " but its parameter '",
                        *param, "' ", shapeStr(set.params().at(*param).shape), "; it was written for a different model"));
      entries.emplace_back(name, reshard(full, specs.at(*param), tpRank, tpSize));
    } else {
      entries.emplace_back(name, t);  // the plain loader checks what is left
    }
  }
  return loadCheckpointEntries(path, encodeTensors(entries), model, opt);
}

TrainState loadShardedCheckpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer& opt,
                                 const parallel::ProcessMesh& mesh) {
  return loadShardedCheckpoint(path, model, opt, mesh.coord("tp"), mesh.size("tp"));
}

std::string CheckpointLayout::describe() const {
  if (!sharded) return "plain (unsharded)";
  return str("sharded at tp ", tp, ", pp ", pp, ", dp ", dp, ": ", files.size(), files.size() == 1 ? " file" : " files");
}

CheckpointLayout readCheckpointLayout(const std::string& path) {
  FramedFile f = readCheckpointFile(path);
  const std::string source = str("checkpoint ", path);
  CheckpointLayout layout;
  std::map<std::string, torch::Tensor> m;
  for (auto& [name, t] : decodeTensors(f.payload.data(), f.payload.size(), source)) {
    if (name == "state/global_step" || (name.starts_with("layout/") && name.find('/', 7) == std::string::npos)) m[name] = t;
  }
  auto get = [&](const std::string& name) -> int64_t {
    auto it = m.find(name);
    if (it == m.end() || it->second.scalar_type() != torch::kInt64 || it->second.dim() != 0)
      throw Error(str(source, ": entry '", name, "' is missing or not an int64 scalar"));
    return it->second.item<int64_t>();
  };
  layout.globalStep = get("state/global_step");
  layout.files.push_back(path);
  if (m.count("layout/tp")) {
    layout.sharded = true;
    layout.tp = get("layout/tp");
    layout.pp = get("layout/pp");
    layout.dp = get("layout/dp");
    for (int64_t r = 1; r < layout.tp && r < 65536; ++r)
      layout.files.push_back(checkpointShardPath(path, static_cast<int>(r), static_cast<int>(layout.tp)));
  }
  return layout;
}

// ---- convert ----

ConvertReport convertCheckpoint(const std::string& from, const std::string& to, bool withOptimizer) {
  std::error_code ec;
  if (fs::exists(to, ec))
    throw Error(str("cannot convert checkpoint ", from, ": ", to, " exists; name a new file (or remove it first)"));
  const CheckpointSet set(from);
  ConvertReport report;
  report.layout = set.layout();
  report.optimizer = set.optimizerKind();
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& name : set.paramOrder()) {
    torch::Tensor t = set.full("params/" + name, name).contiguous();
    report.parameterElements += t.numel();
    dict.insert(name, t);
    ++report.parameters;
  }
  for (const auto& [name, t] : set.mainEntries()) {
    if (!name.starts_with("buffers/")) continue;
    dict.insert(name.substr(8), t);
    ++report.buffers;
  }
  if (withOptimizer) {
    // A plain checkpoint does not name its optimizer's parameters: chorus builds one group over
    // the model's parameters in order, which is what the file's params/ order is.
    std::vector<std::vector<std::string>> names;
    if (set.optimNames()) {
      names = *set.optimNames();
    } else {
      names.push_back(set.paramOrder());
    }
    for (const auto& [name, t] : set.mainEntries()) {
      auto key = parseOptimKey(name);
      if (!key) continue;
      const bool named = key->group < names.size() && key->param < names[key->group].size();
      const std::string param = named ? names[key->group][key->param] : str(key->group, "/", key->param);
      const bool joinable = named && key->field != "step" && set.params().count(param) &&
                            t.sizes().size() == set.params().at(param).shape.size();
      dict.insert(str("optim/", param, "/", key->field), joinable ? set.full(name, param).contiguous() : t);
      ++report.optimizerTensors;
    }
  }
  report.tensors = dict.size();

  std::vector<char> bytes;
  try {
    bytes = torch::pickle_save(c10::IValue(dict));
  } catch (const c10::Error& e) {
    throw Error(str("cannot convert checkpoint ", from, ": ", e.what_without_backtrace()));
  }
  const std::string tmp = str(to, ".tmp.", ::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) {
      fs::remove(tmp, ec);
      throw Error(str("cannot write ", to, " (converting checkpoint ", from, "): the write to ", tmp, " failed"));
    }
  }
  fs::rename(tmp, to, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw Error(str("cannot write ", to, " (converting checkpoint ", from, "): ", ec.message()));
  }
  return report;
}

}  // namespace chorus::train
