// Elastic all-reduce training: a worker that dies does not end the job. The survivors keep
// their processes, re-form their process group with the launcher's next generation of members
// (`chorus launch --min M` / `chorus train --nproc N --min M`), agree on the state at the end
// of the last step any of them completed, and go on from there (docs/fault-tolerance.md).
//
// The generation protocol, through the job's store (the launcher writes, workers read):
//   chorus/elastic/members/<g>   the worker ids of generation g, in rank order ("0,1,3,4")
// Generation 0 is the launch (ids 0..n-1, ranks as launched). When a worker dies, the launcher
// writes generation g+1: the workers still running, in their rank order, then any replacement
// it starts (a new id, CHORUS_ELASTIC_GEN=g+1). Fewer than --min left ends the job.
//
// A worker (trainElastic):
//   1. trains, keeping the state at the end of every completed step in memory (TrainOptions::
//      snapshot: model, optimizer, loss scale, loop position, and its own compression state;
//      no collective, one copy);
//   2. when a step fails with PeerError or TimeoutError, it waits for generation g+1 (up to the
//      group's timeout), finds its rank in it (a worker left out ends with an error), and
//      re-forms the group under "chorus/elastic/g<g+1>" (ProcessGroup::reform); a member that
//      fails during this makes it wait for the generation after;
//   3. the members agree on the most advanced snapshot (the highest step; the lowest rank
//      holding it), which that rank broadcasts; the members holding that same step also
//      share their own compression states, which every member merges for the new world as a
//      checkpoint resume does (codec_state.h; the dead ranks' residuals are lost); every
//      member loads it into a fresh setup at the new world size (the data re-divided: with a
//      global batch divisible by the world, step k of an epoch covers the same samples at any
//      world size) and training goes on.
// Nothing is read from disk and the survivors are not restarted; at most the step in flight
// is lost. Tensor- and pipeline-parallel jobs keep their world and every rank its place, and
// step 3 is the per-shard agreement below (planShardRecovery).
//
// Hung workers. Each worker's heartbeat thread writes "chorus/elastic/hb/<id>" =
// "<generation>,<beat>,<calls>,<last call>" twice a second (calls: the collectives its group
// has issued). The launcher excludes (SIGKILL, then as above) a worker whose beat stops for
// CHORUS_HEARTBEAT_TIMEOUT_MS (a stopped or frozen process), prints a stall report naming the
// workers whose calls lag behind the others' for CHORUS_STALL_WARN_S, and excludes one that
// still lags when the collective timeout (CHORUS_TIMEOUT_MS) has passed (user code that never
// returns).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "chorus/comm/group.h"
#include "chorus/train/config.h"
#include "chorus/train/trainer.h"

namespace chorus::train {

struct ElasticOptions {
  bool enabled = false;    // CHORUS_ELASTIC=1 (the launcher sets it)
  int64_t workerId = 0;    // CHORUS_ELASTIC_ID: stable across generations
  int64_t generation = 0;  // CHORUS_ELASTIC_GEN: the generation this process joined
  bool spare = false;      // CHORUS_ELASTIC_SPARE=1: a standby worker (waitAsSpare)
};

// From the launcher's variables; disabled when CHORUS_ELASTIC is unset.
ElasticOptions elasticFromEnvironment();

// A standby worker (chorus train --spares): loads what a worker loads (the datasets, kept in
// memory), beats, and waits until the launcher puts it into a generation, instead of a
// replacement that would start from nothing ("chorus/elastic/spare/<id>" = that generation,
// or -1 when the job ended without needing it). Returns the generation, with this worker's
// rank and the generation's size, or -1.
int64_t waitAsSpare(const Config& cfg, const ElasticOptions& e, int& rank, int& size);

// The store prefix generation g's group joins under (g > 0; generation 0 joins as usual).
std::string elasticPrefix(int64_t generation);

// train() that survives the death of other workers (see above). `group` is this process's
// group of generation `e.generation`; on return, the group of the generation that finished. Throws what train() throws for anything but a failed
// peer, and Error when this worker is left out of a generation or none comes in time.
TrainResult trainElastic(const Config& cfg, std::shared_ptr<comm::ProcessGroup>& group, TrainOptions opts,
                         const ElasticOptions& e);

// Tensor- and pipeline-parallel jobs (parallel.tp x parallel.pp > 1) recover by position: a
// rank's model is its own shard, which only its data-parallel replicas (the ranks with the same
// tp and pp coordinates) also hold, so the world keeps its size and every rank its place, and a
// replacement takes the failed rank's (the launcher's LaunchOptions::elasticKeepPositions).
// Each rank keeps its snapshots of the last two completed steps (every step all-reduces its
// divergence flags over the world, so no rank is more than one step ahead of another). The
// ranks agree on the newest step whose snapshot every shard still has on some rank: each rank
// restores its own snapshot of that step if it holds one, else receives it from the lowest rank
// of its shard that does (planShardRecovery). A shard whose every holder failed (all its
// replicas at once) cannot be recovered in memory: Error, with what to do instead.
//
// At dp = 1 no replica exists, so the ranks replicate: after each snapshot the loop takes, rank r
// sends it to rank r + 1 (mod the world) and keeps rank r - 1's, two deep (Snapshot::replicate,
// copy). A replacement then receives its shard from its buddy's copy. Two neighbours that fail
// together take a shard with them.
struct ShardHolding {
  int rank = 0;       // the member that holds it
  int shard = 0;      // whose state it is (meshShards' index)
  bool copy = false;  // a copy of another rank's snapshots (dp = 1), not the rank's own
  int64_t newest = -1, previous = -1;  // the steps of its two snapshots (-1: none)
};
struct ShardRecoveryPlan {
  int64_t step = -1;           // the step every rank restores; -1: every rank starts afresh
  std::vector<int> source;     // per rank: the rank whose snapshot of `step` it restores (itself, or another holder)
  std::vector<bool> fromCopy;  // per rank: that holder sends its copy (of this rank's shard), not its own
};
// shardOf[r]: the shard rank r holds (ranks with the same index hold the same state); held: every
// snapshot the members hold, their own and their copies. A rank restores its own snapshot of the
// agreed step when it holds it, else the lowest holder's (own before copy). The plan starts afresh
// only when no rank holds a snapshot (the loop takes one as it starts, so: a failure during
// setup).
ShardRecoveryPlan planShardRecovery(const std::vector<int>& shardOf, const std::vector<ShardHolding>& held);
// The same with own snapshots only: newest[r] and previous[r] are rank r's.
ShardRecoveryPlan planShardRecovery(const std::vector<int64_t>& newest, const std::vector<int64_t>& previous,
                                    const std::vector<int>& shardOf);
// The shard index of each rank of a world under ProcessMesh::make(world, tp, pp)'s layout
// (rank = (pp_i * dp + dp_i) * tp + tp_i): pp_i * tp + tp_i.
std::vector<int> meshShards(int world, int tp, int pp);

// Fault injection for tests and the chaos benchmark: CHORUS_FAULT="kill:<id>:<step>,..." makes
// the worker with that id (CHORUS_ELASTIC_ID, else its rank CHORUS_RANK) kill itself with
// SIGKILL as it starts global step <step>; "stop:<id>:<step>" stops it with SIGSTOP;
// "loop:<id>:<step>" spins forever there (user code that never returns). A process restarted
// in place of a failed one (CHORUS_RESTART_COUNT = k) skips the first k faults of its id.
// Called by the loop before every step; does nothing when the variable is unset.
void injectFault(int64_t globalStep);

// The heartbeat thread above, for processes outside trainElastic that the launcher watches the
// same way (parameter-server workers and servers of a job with ps.restarts: one whose beat stops
// is killed and restarted). Beats under "chorus/elastic/hb/<id>" until the handle is dropped;
// does nothing when the process was not started by a launcher.
class Heartbeat;
struct HeartbeatStop {
  void operator()(Heartbeat* h) const;
};
std::unique_ptr<Heartbeat, HeartbeatStop> startHeartbeat(int64_t id);

}  // namespace chorus::train
