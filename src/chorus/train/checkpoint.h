// Checkpoints: the model, the optimizer's state and the loop's position, written atomically
// (a temporary file in the same folder, fsync, rename, fsync of the folder) with a SHA-256 of
// the payload that load verifies. Resuming from one continues bit-exactly.
//
// File layout: "CHORUSCK" magic, u32 version, u64 payload length, 32-byte SHA-256 of the
// payload, payload (torch::serialize archive).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace chorus::train {

// Where the training loop stands, and whatever else must survive a restart.
struct TrainState {
  int64_t epoch = 0;        // the epoch in progress (0-based)
  int64_t stepInEpoch = 0;  // steps of that epoch already taken
  int64_t globalStep = 0;   // steps taken in all
  std::map<std::string, double> scalars;  // e.g. "amp.scale", "amp.good_steps"
  std::map<std::string, torch::Tensor> tensors;  // e.g. compression residuals, "codec.0.residual"
};

// Atomic write; throws chorus::Error naming the path on failure (the old file stays intact).
void saveCheckpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer& opt,
                    const TrainState& state);

// Verifies magic, version, length and checksum before touching model or optimizer; a bad file
// is a chorus::Error naming the path and what is wrong ("checksum mismatch: the file is
// corrupt"). Parameter names and shapes must match the model.
TrainState loadCheckpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer& opt);

// Checkpoint file name for a global step: "ckpt-00001234.pt".
std::string checkpointName(int64_t globalStep);
// The path (dir/name) of the newest checkpoint in dir (highest step), or "" if none or dir is
// missing. Temporary files ("*.tmp.<pid>") are ignored.
std::string latestCheckpoint(const std::string& dir);
// Removes all but the `keep` newest checkpoints in dir.
void pruneCheckpoints(const std::string& dir, int64_t keep);

}  // namespace chorus::train
