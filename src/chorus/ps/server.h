// A parameter server: holds its shard of the model (ShardPlan), applies the optimizer on the
// server side, and answers workers' pushes and pulls (protocol.h) under a consistency mode
// (consistency.h). Torch-free; runs over any transport of the comm core.
//
// Threads. One thread (the caller of run()) does all the communication: it keeps a header
// receive posted for every live worker and waits for whichever completes first
// (ProcessGroup::waitAny). Updates run on a small pool of apply threads; each slice has its
// own mutex, so pushes to different slices proceed at once and a pull copies each slice under
// its own lock: there is no lock over the whole shard. Pulls that consistency holds back wait
// in a queue and are answered as soon as an update makes them eligible. Where the comm thread
// waits for the pool: in bsp, for the round's update (applied slice-parallel), so that the
// next round starts from it; in asp/ssp, before answering a pull, for that worker's own
// pushes (a worker always reads its own writes); before a checkpoint, for everything.
//
// Updates. bsp: the round's pushes are averaged (summed in double) and one optimizer step is
// applied with the learning rate of the push that closed the round. asp/ssp: every push is a
// step on grad / N (N = consistency.workers) at the push's learning rate, by an optimizer set up
// with pushesPerRound = N, so N pushes move the parameters as one bsp round would (with sgd
// momentum the buffer advances once per N pushes unless optimizer.roundMomentum is off; see
// optimizer.h). Pulls before the first init (or a loaded
// checkpoint) wait for it; a push before it is refused.
//
// Faults. A worker whose connection fails (PeerError) is logged by rank and index and leaves
// (Consistency::onLeave); asp and ssp continue with the rest. In bsp the open round closes
// with the pushes it has when the live workers cannot fill it (the bsp_partial_rounds count
// in the report says how often). A malformed message gets a kError answer and changes nothing.
//
// Restarted workers (workerRestarts > 0; the transport must take restarted peers: tcp with
// CHORUS_REJOIN). While a failed worker may still come back, the loop also polls the
// transport's peer epochs (every kRejoinPoll); when a restarted process has taken the failed
// worker's place it rejoins (Consistency::onRejoin): live again, its header receive posted;
// the answers' clock field tells the new process its count of pushes (Client::rejoin), so it
// resumes at that step, skipping none of its own. In bsp it counts again from the round it
// pulls; in ssp the others wait for it to come within s. With no live worker left, the server waits for a rejoin up to the group's
// timeout, then ends.
//
// Backup workers on several servers (bsp, backup > 0, more than one server; serverRanks
// given). Every server must apply the same pushes in a round, or one worker's gradient lands
// on one shard and not on another. Server 0 coordinates: its round closes on its own count
// (the first N - b pushes to reach it) and it sends the members to every other server
// (protocol.h, kDecisionTag) before it applies them. The others follow
// (ConsistencyOptions::followRounds): they keep each counted push apart until the decision,
// then apply the members' average, waiting for a member's push that has not arrived yet, and
// drop the rest. A worker's push must count in the same round everywhere, so it must be based
// on one version from every server: a follower answers a pull with kFlagAgree and holds a pull
// that asks for a version it has not reached (protocol.h), and the worker asks a follower
// again when its answer was older than server 0's (Client, aligned pulls). A member that dies
// before its push reached a follower is left out there (logged), and after a server restart
// the versions no longer line up and pulls are not aligned: the only ways the shards can
// differ. When the last worker leaves, server 0 tells the others it is done, so no receive is
// left posted.
//
// Checkpoints. With checkpointPath set the shard (values, optimizer state, version, the plan's
// fingerprint) is written atomically (temp file, fsync, rename), with a SHA-256 of its body
// that loading checks before it reads anything, every checkpointEvery updates and when run()
// returns; with resume, a server that finds the file loads it in its constructor, and answers
// workers' kInit with kAck without overwriting what it loaded. The version goes on from the
// saved one. The file holds one server's shard: give every server its own path.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "chorus/common/clock.h"
#include "chorus/comm/group.h"
#include "chorus/ps/consistency.h"
#include "chorus/ps/optimizer.h"
#include "chorus/ps/sharding.h"

namespace chorus::ps {

struct ServerOptions {
  ConsistencyOptions consistency;
  // Every server's rank in the group, by server index: needed with backup workers in bsp on
  // more than one server (the round's decision travels between them); otherwise unused.
  std::vector<int> serverRanks;
  // How many times each worker may be replaced by a restarted process (see above); 0: a
  // failed worker is gone for good.
  int workerRestarts = 0;
  OptimizerOptions optimizer;
  int applyThreads = 2;            // >= 1
  std::string checkpointPath;      // "" : no checkpoints
  int64_t checkpointEvery = 0;     // updates between checkpoints; 0: only at the end
  bool resume = false;             // load checkpointPath first when it exists
  Millis idle{0};                  // longest wait for any message (run() then throws
                                   // TimeoutError); 0: no limit but PeerError
};

struct ServerReport {
  int server = 0;
  int64_t version = 0;        // updates applied
  int64_t pushes = 0, pulls = 0, errorsSent = 0, bspPartialRounds = 0;
  int64_t codecPushes = 0;    // pushes that came as codec messages (protocol.h) and were decoded
  uint64_t bytesReceived = 0, bytesSent = 0;
  double busySeconds = 0;     // time spent applying updates and copying pulls
  double wallSeconds = 0;
  std::vector<WorkerStats> workers;
  std::vector<int> failedWorkers;
  std::vector<int> rejoinedWorkers;  // in the order restarted processes took their places
  int64_t decisions = 0;              // backup agreement: rounds decided (sent by server 0,
                                      // followed by the others)
  bool resumedFromCheckpoint = false;
};

class Server {
 public:
  // group: the whole job; workerRanks[i] is worker i's rank in it (as many as
  // opts.consistency.workers). Throws InvalidArgument for serverIndex outside
  // [0, plan.servers()) or bad options; with resume, ConfigError for a checkpoint of another
  // plan (fingerprint), server or optimizer, Error for a corrupt one (a checksum that does not
  // match, naming the path).
  Server(std::shared_ptr<comm::ProcessGroup> group, int serverIndex, std::vector<int> workerRanks, ShardPlan plan,
         ServerOptions opts);
  ~Server();
  // Serves until every worker has said goodbye or left; returns the statistics. Call once.
  // Throws TimeoutError past opts.idle, an Error from the transport or a checkpoint write;
  // then it first aborts the group (ProcessGroup::abort: this process's transport closes, the
  // receives it had posted are cancelled and their buffers freed), since a failed server's
  // process is done.
  ServerReport run();
  // This server's parameter values, its slices in order (for tests and checkpoints). Safe to
  // call from any thread; during run() each slice is copied under its own lock.
  std::vector<float> values() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace chorus::ps
