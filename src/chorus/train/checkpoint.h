// Checkpoints: the model, the optimizer's state and the loop's position, written atomically
// (a temporary file in the same folder, fsync, rename, fsync of the folder) with a SHA-256 of
// the payload that load verifies. Resuming from one continues bit-exactly.
//
// A checkpoint is data only: loading one reads numbers and runs no code from the file, so a
// checkpoint from elsewhere can do no more harm than wrong weights. File layout: the frame and
// tensor table of common/tensor_file.h with magic "CHORUSCK" and version 2; the table's entries
//   params/<name>, buffers/<name>       the model's tensors by their dotted names ("0.weight")
//   state/epoch, state/step_in_epoch, state/global_step    int64 scalars
//   scalars/<name>                      float64 scalars (TrainState::scalars, bit for bit)
//   tensors/<name>                      TrainState::tensors as they are
//   optim/kind                          uint8 bytes: "sgd", "adam" or "adamw"
//   optim/groups                        int64: the number of param groups
//   optim/<g>/lr, optim/<g>/params      float64 learning rate and int64 parameter count of group g
//   optim/<g>/<p>/<field>               state of group g's parameter p: momentum_buffer (sgd);
//                                       step, exp_avg, exp_avg_sq, max_exp_avg_sq (adam, adamw)
// Version 1 (chorus before the data-only format) held a TorchScript archive, and loading one
// can run code: loadCheckpoint refuses it and upgradeCheckpoint converts a trusted one.
//
// Checkpoint folders: "<output.dir>/checkpoints" holds the files of one line of runs (a run
// and the runs that resumed it). listCheckpoints and latestCheckpoint read a folder;
// CheckpointHistory prunes only the files of its own run's line, oldest written first.
//
// Tensor-parallel checkpoints (sharded_checkpoint.h) keep this file as their main file and put
// each other tp rank's shards in a sibling "<main>.tp<r>-of-<k>"; loadCheckpoint loads them too
// (into an unsplit model), and pruning and the removal of stale temporaries treat a main file
// and its siblings as one checkpoint.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "chorus/common/hmac.h"
#include "chorus/common/tensor_file.h"

namespace chorus::train {

// Where the training loop stands, and whatever else must survive a restart.
struct TrainState {
  int64_t epoch = 0;        // the epoch in progress (0-based)
  int64_t stepInEpoch = 0;  // steps of that epoch already taken
  int64_t globalStep = 0;   // steps taken in all
  std::map<std::string, double> scalars;  // e.g. "amp.scale", "amp.good_steps"
  std::map<std::string, torch::Tensor> tensors;  // e.g. per-rank codec state, "codec.rank0"
};

// Atomic write; throws chorus::Error naming the path on failure (the old file stays intact),
// InvalidArgument when the optimizer is not one checkpoints hold (sgd, adam, adamw) or a tensor
// has a dtype they do not (complex, quantized).
void saveCheckpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer& opt,
                    const TrainState& state);

// Checks the file (a regular file; magic, version, size against the header before reading it
// all, SHA-256, the entry table) and every entry against model and optimizer (names, shapes,
// dtypes, optimizer kind and groups) before changing either; a bad file is a chorus::Error
// naming the path and what is wrong, and leaves model and optimizer as they were. A version-1
// file is refused with how to upgrade it. The main file of a tensor-parallel checkpoint loads
// as loadShardedCheckpoint(path, model, opt, 0, 1) does: its shards joined into the unsplit
// model; a shard file ("<main>.tp<r>-of-<k>") is refused, naming its main file.
TrainState loadCheckpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer& opt);

// Converts a version-1 checkpoint (a TorchScript archive, written by chorus before the data-only
// format) into a version-2 file at `to`, keeping every tensor bit for bit; needs no config (the
// optimizer's state is mapped to the parameters in the order they were written). Reading the
// old file runs TorchScript code from it: only for files you trust. `to` must not exist, unless
// it is `from` itself (converted in place, atomically). Throws chorus::Error naming the file.
struct UpgradeReport {
  size_t params = 0, buffers = 0, optimizerStates = 0;
  std::string optimizer;
  int64_t globalStep = 0;
};
UpgradeReport upgradeCheckpoint(const std::string& from, const std::string& to);

// Named tensors as bytes in the tensor-table format (common/tensor_file.h), and back; for
// state that travels inside a checkpoint as one byte tensor (the per-rank codec state). Decode
// errors are chorus::Error "<source>: ...".
std::string encodeTensors(const std::vector<std::pair<std::string, torch::Tensor>>& tensors);
std::vector<std::pair<std::string, torch::Tensor>> decodeTensors(const void* data, size_t size,
                                                                  const std::string& source);

// Checkpoint file name for a global step: "ckpt-00001234.pt".
std::string checkpointName(int64_t globalStep);
// The checkpoints ("ckpt-<step>.pt") in dir, lowest step first; none if dir is missing.
// Temporary files ("*.tmp.<pid>") and other files are ignored.
std::vector<std::string> listCheckpoints(const std::string& dir);
// The path (dir/name) of the newest checkpoint in dir (highest step), or "" if none.
std::string latestCheckpoint(const std::string& dir);

// The shard file of tp rank tpRank of tpSize (and pipeline stage ppRank of ppSize) of the
// checkpoint at mainPath: "<main>.tp<r>-of-<k>", or "<main>.pp<s>-of-<P>.tp<r>-of-<k>" when
// ppSize > 1. InvalidArgument for a rank outside its size.
std::string checkpointShardPath(const std::string& mainPath, int tpRank, int tpSize, int ppRank = 0, int ppSize = 1);
// The shard files of the checkpoint at mainPath present in its folder, of any layout (also
// those of an earlier save of the same step at another tp), sorted; none if there are none.
std::vector<std::string> checkpointShardFiles(const std::string& mainPath);

// Removes the temporary files ("<name>.tmp.<pid>", name a checkpoint's or one of its shard
// files') in dir that a writer killed mid-save left: those whose pid is no live process on this
// host, or is this process (which calls this before its first save). A temporary of a live
// writer is kept. Returns the paths removed.
std::vector<std::string> removeStaleTemporaries(const std::string& dir);

// The checkpoints of one run's line, in the order they were written, and pruning among them.
// Files it does not list (another run's) are never touched. Not thread-safe.
class CheckpointHistory {
 public:
  // inherited: the files of the line this run continues, oldest first (none for a new line).
  explicit CheckpointHistory(std::vector<std::string> inherited = {});

  // Records `path`, just written, as the newest (moving it there if it was listed), then removes
  // the oldest listed files until `keep` (>= 1) remain, each with its shard files (the main file
  // first, so no main file outlives its shards). The newest is never removed; a listed file
  // already gone is forgotten (its shard files still removed). Returns the paths removed;
  // throws Error if one cannot be.
  std::vector<std::string> add(const std::string& path, int64_t keep);

  const std::vector<std::string>& files() const { return files_; }

 private:
  std::vector<std::string> files_;
};

// ---- building blocks for other layouts of the same entries (sharded_checkpoint.cc) ----

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// The entries of a checkpoint file of this model, optimizer and state (the list at the top of
// this file), in the order saveCheckpoint writes them. The tensors are the model's own (not
// copies). InvalidArgument when the optimizer is not sgd, adam or adamw (path names the file
// in the message).
NamedTensors checkpointEntries(torch::nn::Module& model, const torch::optim::Optimizer& opt, const TrainState& state,
                               const std::string& path);

// Writes entries as a checkpoint file (frame, version 2, tensor table) atomically, as
// saveCheckpoint does, and returns the SHA-256 of the payload (the digest in the file's header).
// InvalidArgument naming the path for a dtype checkpoints do not hold; Error/SystemError naming
// it when the write fails (the old file stays intact).
Digest writeCheckpointEntries(const std::string& path, const NamedTensors& entries);

// Reads and verifies a checkpoint file's frame (a regular file, magic, version 2, size against
// the header, SHA-256): what loadCheckpoint checks before looking at the entries. A version-1
// file is refused with how to upgrade it. Errors name the path.
FramedFile readCheckpointFile(const std::string& path);

// What loadCheckpoint does with a verified plain payload (path names it in errors): checks every
// entry against model and optimizer, then copies them in. Entries of a sharded layout ("layout/",
// "shard/") are unknown entries here.
TrainState loadCheckpointEntries(const std::string& path, const std::string& payload, torch::nn::Module& model,
                                 torch::optim::Optimizer& opt);

// "sgd", "adam" or "adamw"; nullptr for an optimizer checkpoints do not hold.
const char* checkpointOptimizerKind(const torch::optim::Optimizer& opt);

}  // namespace chorus::train
