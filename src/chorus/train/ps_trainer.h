// `chorus train` with a parameter server (ps.servers = S > 0): the job's last S ranks serve the
// model's shards (ps::Server) and the others are workers that compute gradients on their
// shard of the data, push them and pull fresh parameters (ps::Client), under ps.mode. A worker
// runs the one training loop (loop.h) with PsWorkerStrategy (ps_strategy.h); a server runs
// ps::Server until every worker has left.
#pragma once

#include <memory>

#include "chorus/comm/group.h"
#include "chorus/train/config.h"
#include "chorus/train/trainer.h"

namespace chorus::train {

// Runs this rank's role. Ranks [0, W) are workers (W = group size - S), ranks [W, W + S)
// servers. Worker 0 sends the initial model, writes metrics.jsonl (steps, an evaluation on
// the whole test split after each epoch, the summary) and prints the progress; every worker
// writes ps/worker<w>.jsonl (its step times, push and pull times and versions) and every
// server ps/server<s>.json (its report: updates, per-worker pushes, drops and staleness) under
// output.dir. Server shards are checkpointed to ps/server<s>.ckpt every ps.checkpoint_every
// updates and at the end; with opts.resume a server reloads its shard.
TrainResult trainWithServers(const Config& cfg, std::shared_ptr<comm::ProcessGroup> group, const TrainOptions& opts);

}  // namespace chorus::train
