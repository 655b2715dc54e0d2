// The worker side of the parameter server: splits a model's gradients by the ShardPlan, pushes
// each server its part, and pulls fresh parameters back (protocol.h). Torch-free: tensors are
// spans of float, one per TensorSpec of the plan, in order.
//
// Each call talks to every server at once (async sends, then waits for all answers), so the
// time of a push or a pull is that of the slowest server, not the sum. A server's kError
// answer is thrown as ps::ServerError with its message; a server that dies is a PeerError
// naming it, unless the client may reconnect.
//
// Reconnecting (reconnectTimeout > 0; the transport must take restarted peers, tcp with
// CHORUS_REJOIN). When a server's connection fails, or a restarted process has taken its
// place since the last call (ProcessGroup::peerEpoch), the client waits up to
// reconnectTimeout for the new process (ProcessGroup::awaitPeer), resynchronizes with it and
// then finishes the call:
//   1. init with the values this worker last pulled from (or sent to) that server; a server
//      that reloaded its checkpoint keeps its own (Server: the first init wins), one that had
//      none starts from these;
//   2. pull from it, so later pushes are based on the restarted server's version;
//   3. redo the call on that server: a push is sent again, now based on that version (it is
//      stale by what the restarted server lost, as an asp push may be); a pull returns the
//      values of step 2; a goodbye is said again.
// A server that fails again during this is retried, kMaxReconnects times per call.
//
// Aligned pulls (bsp with backup workers on several servers; protocol.h, kFlagAgree). Server
// 0 decides the rounds and the others follow a little behind, so one pull may find server 0 a
// round or more ahead of a follower. pull() then asks each follower behind again, for server
// 0's version, so that every server counts this worker's next push in the same round.
//
// Compressed pushes (compressPushes): each server's part of a pushed gradient is gathered
// into one flat buffer (its slices in order, each slice a segment for layer-wise codecs) and
// encoded by the codec with a state of its own per server, so error-feedback residuals stay
// with the entries they belong to. The server decodes the message into a dense gradient and
// goes on as for a dense push (protocol.h, kFlagCodec). Inits and pulls stay dense float32.
// A push sent again to a restarted server sends the same message (its residual was already
// taken). The codec states live in this process only: a restarted worker starts from empty
// residuals.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "chorus/common/clock.h"
#include "chorus/common/error.h"
#include "chorus/comm/group.h"
#include "chorus/compress/codec.h"
#include "chorus/ps/sharding.h"

namespace chorus::ps {

// What a server refused, in its words (the request was malformed or cannot be served).
class ServerError : public Error {
 public:
  using Error::Error;
};

class Client {
 public:
  // How often one call reconnects to restarted servers before it gives up.
  static constexpr int kMaxReconnects = 3;

  // serverRanks[s] is server s's rank in `group`. timeout bounds each call (0: the group's);
  // a pull that consistency holds back waits within it too. reconnectTimeout: 0, a dead
  // server is an error; > 0, how long to wait for a restarted one (see above).
  Client(std::shared_ptr<comm::ProcessGroup> group, int workerIndex, std::vector<int> serverRanks, ShardPlan plan,
         Millis timeout = Millis(0), Millis reconnectTimeout = Millis(0));
  ~Client();

  // Sends the initial parameter values. Every worker may call it; a server keeps the first
  // values it receives (call it on one worker, then pull on all, to start from one model).
  void init(const std::vector<std::span<const float>>& params);
  // Pushes this worker's gradient, computed on the parameters of the last pull (or of init),
  // to be applied at learning rate lr. Returns once every server has accepted it.
  void push(const std::vector<std::span<const float>>& grads, double lr);
  // Fetches every server's parameters into params; blocks while consistency holds it back.
  void pull(const std::vector<std::span<float>>& params);
  // A process restarted in place of this worker after it failed (the servers run with
  // ServerOptions::workerRestarts) calls this instead of init: it pulls the servers'
  // parameters and returns the step to resume at, the most pushes any server counts for this
  // worker (each push carries the worker's own count, and shard checkpoints keep them, so a
  // restarted server knows it too); clock() goes on from there. A server that has not yet seen the restart holds
  // the pull until it has (it polls for restarted workers).
  int64_t rejoin(const std::vector<std::span<float>>& params);
  // Says goodbye and fetches the servers' final parameters into params: each server answers
  // once no worker is left working and none may come back (a failed worker with restarts
  // left), and every push is applied. The evaluating worker calls it at the end of the run,
  // so that it evaluates the model every worker's steps went into (in asp a worker may end
  // well before the others). While it waits, each server sends a keepalive every quarter of
  // its timeout, so the wait lasts as long as the others work, not one call's timeout. Then
  // it says the plain goodbye (bye()). Throws InvalidArgument after bye().
  void finalPull(const std::vector<std::span<float>>& params);
  // Tells every server this worker is done. The destructor does it if not done, except while
  // an exception unwinds the stack: then the servers see the worker fail when its transport
  // closes (as if its process had died), rather than a clean goodbye.
  void bye();

  // From now on, pushes go out as messages of `codec` (see above), one state per server,
  // seeded from `seed` (server s's rng from seed and s). Throws InvalidArgument for a codec
  // whose name() is not one of compress::codecNames() (a server could not decode it).
  void compressPushes(std::unique_ptr<compress::Codec> codec, uint64_t seed);
  // Server s's codec state (residual, momentum, rng); empty before compressPushes.
  compress::CodecState& codecState(int server);

  int64_t clock() const;                       // pushes made
  const std::vector<int64_t>& versions() const;  // per server, the version of the last pull
  double pullWaitSeconds() const;              // total time spent in pull()
  uint64_t bytesPushed() const;               // payload bytes of the pushes (codec messages when compressing)
  int64_t reconnects() const;                  // restarted servers this client resynchronized with
  int64_t realignedPulls() const;              // pulls followed by a second one to align versions (below)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace chorus::ps
