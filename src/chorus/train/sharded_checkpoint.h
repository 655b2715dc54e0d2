// Checkpoints of tensor-parallel models that reload at another tp (or dp): every tp rank saves
// its own shards, the main file records the layout, and a load at any tp joins the old shards
// and cuts them again with the new model's ShardSpecs. Megatron's and DeepSpeed's checkpoints
// are tied to the layout that wrote them; these are not.
//
// Files (all in the checkpoint folder, each the frame and tensor table of checkpoint.h, with its
// own SHA-256):
//   ckpt-<step>.pt               the main file, written by tp rank 0 of dp rank 0: everything a
//                                plain checkpoint holds (params/, buffers/, state/, scalars/,
//                                tensors/, optim/), with params/ and optim/ holding tp rank 0's
//                                shard of each split parameter, plus the layout:
//     layout/tp, layout/pp, layout/dp     int64 scalars: the mesh that wrote it
//     layout/spec/<name>                  int64 [5]: dim, blocks, fullSize, paddedSize, stage of
//                                         the parameter's ShardSpec at that tp (dim -1:
//                                         replicated, held by the main file alone)
//     layout/shape/<name>                 int64 [rank]: the parameter's full (unpadded) shape
//     layout/optim/<g>/names              uint8: group g's parameter names, '\n'-separated, so
//                                         optim/<g>/<p>/ state belongs to a named parameter
//     layout/shard_sha256                 uint8 [pp * tp, 32]: the payload SHA-256 of every
//                                         shard file, in (stage, tp rank) order (row 0, the
//                                         main file itself, is zeros)
//   ckpt-<step>.pt.tp<r>-of-<k>  tp rank r > 0's shard file: params/<name> and
//                                optim/<g>/<p>/<field> (momentum_buffer, exp_avg, exp_avg_sq,
//                                max_exp_avg_sq) of every split parameter, and shard/tp_rank,
//                                shard/tp, shard/pp_rank, shard/pp, shard/global_step (int64).
//                                With pipeline stages the name gains ".pp<s>-of-<P>" before
//                                ".tp"; this build writes and reads pp = 1 only.
// The name of a checkpoint stays "ckpt-<step>.pt", so listCheckpoints, latestCheckpoint and
// CheckpointHistory (which prunes a main file with its siblings) work unchanged.
//
// Order: the shard files first; then a collective over the tp group confirms every one is
// durable and carries their digests to tp rank 0, which writes the main file last. A main file
// therefore means a complete checkpoint, and its digests tie it to exactly the shards of its own
// save (a shard left by another save of the same step is refused).
//
// Load: every file is read and verified on every loading rank (frame, SHA-256, digest recorded
// in the main file, step, layout, entry names, shapes and dtypes), then each parameter and each
// optimizer state of its shape is joined (unshard with the saved spec, padding dropped) and cut
// again for this rank (shardOf with the current model's spec, padded as the current tp needs);
// optimizer `step` counts and everything else come from the main file. Then the same checks and
// copy as loadCheckpoint: nothing changes unless everything fits. The whole checkpoint passes
// through each loading rank's memory once (files are read in full), which suits the models chorus
// trains on CPUs; loading only the overlapping pieces is the next step when it does not.
//
// One rule for both formats: a plain checkpoint (saveCheckpoint) is a checkpoint at tp 1 and
// loads at any tp through loadShardedCheckpoint; a sharded one loads at tp 1 through either
// loadShardedCheckpoint(…, 0, 1) or loadCheckpoint, which detects the layout and delegates.
//
// Thread-safety: the functions share no state; ranks as threads may call them concurrently.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "chorus/parallel/mesh.h"
#include "chorus/parallel/tensor/communication.h"
#include "chorus/train/checkpoint.h"

namespace chorus::train {

// Saves the checkpoint `path` (a "ckpt-<step>.pt" name) of this rank's part of a
// tensor-parallel model: tp rank 0 writes path, tp rank r > 0 writes
// checkpointShardPath(path, r, k). Only data-parallel rank 0 writes; on other dp ranks this
// returns at once without communicating. Model parameters are named by model.named_parameters()
// and split as parallel::shardSpecs(model) says; every optimizer parameter must be one of them.
// Replicated parameters, buffers and `state` are saved from tp rank 0: training keeps them equal
// on every tp rank (under sequence parallelism only if allReduceSequenceParallelGradients runs).
//
// Collective over tp (the tp group of dp rank 0): every tp rank must call it with the same path.
// Blocks on file I/O and on two small all-gathers over tp; the first waits for the slowest
// rank's write, within the group's timeout (large shards on slow disks need a timeout to match). When a rank fails to write, every
// rank of the group throws (the failing one its own error, the others an Error naming it) and
// no main file is written (an existing one stays as it was). After a successful save, tp rank 0
// removes shard files of the same name left by an earlier save at another tp.
// InvalidArgument for pp > 1 (not supported yet), an optimizer checkpoints do not hold, or a
// dtype they do not store.
void saveShardedCheckpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer& opt,
                           const TrainState& state, const parallel::TpGroup& tp, int dpRank = 0, int dpSize = 1);
// The same with the groups and coordinates of a mesh (dims "tp", "dp", "pp"; an absent
// dimension counts as size 1).
void saveShardedCheckpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer& opt,
                           const TrainState& state, const parallel::ProcessMesh& mesh);

// Loads the checkpoint `path` (a main file, sharded at any tp, or a plain checkpoint) into this
// rank's part of a model split over tpSize ranks (tpRank of tpSize; model's ShardSpecs say how,
// and must be those of a model built for tpSize). Not collective: it reads files only, and any
// rank may call it alone (every rank of a run must, each with its coordinates). Checks before
// changing anything (a chorus::Error naming the file and what differs; model and optimizer stay
// as they were): every shard file present ("<main>.tp1-of-2 is missing: ...") with the main
// file's step, layout and recorded digest, checksums, entry names, every parameter's full shape
// and dtype, optimizer kind, groups and their parameter names. Returns tp rank 0's TrainState.
TrainState loadShardedCheckpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer& opt,
                                 int tpRank, int tpSize);
// The same at the mesh's tp coordinate and size.
TrainState loadShardedCheckpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer& opt,
                                 const parallel::ProcessMesh& mesh);

// What a checkpoint's main file says of its layout; reads and verifies the main file only.
struct CheckpointLayout {
  bool sharded = false;  // false: a plain checkpoint (tp = pp = dp = 1 here)
  int64_t tp = 1, pp = 1, dp = 1;
  int64_t globalStep = 0;
  std::vector<std::string> files;  // the main file, then the shard files it needs
  std::string describe() const;    // "sharded at tp 2, pp 1, dp 2: 2 files" or "plain (unsharded)"
};
CheckpointLayout readCheckpointLayout(const std::string& path);

// Joins every shard of the checkpoint at `from` (sharded or plain; no config needed) into one
// file `to` that LibTorch reads without chorus: torch::pickle_save of a
// c10::Dict<std::string, at::Tensor> holding each parameter and buffer under its name, full
// size (vocabulary padding dropped), and with withOptimizer also "optim/<name>/<field>" (the
// state tensors, joined likewise, and `step` as an int64 scalar). Load it with
// torch::pickle_load in C++ or torch.load in Python. Written atomically; `to` must not exist
// (Error naming it). Errors as loadShardedCheckpoint's, naming the file.
struct ConvertReport {
  CheckpointLayout layout;
  size_t tensors = 0, parameters = 0, buffers = 0, optimizerTensors = 0;
  int64_t parameterElements = 0;
  std::string optimizer;  // "sgd", "adam", "adamw"
};
ConvertReport convertCheckpoint(const std::string& from, const std::string& to, bool withOptimizer = false);

}  // namespace chorus::train
