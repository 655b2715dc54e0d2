// The worker side of the parameter server: splits a model's gradients by the ShardPlan, pushes
// each server its part, and pulls fresh parameters back (protocol.h). Torch-free: tensors are
// spans of float, one per TensorSpec of the plan, in order.
//
// Each call talks to every server at once (async sends, then waits for all answers), so the
// time of a push or a pull is that of the slowest server, not the sum. A server's kError
// answer is thrown as ps::ServerError with its message; a server that dies is a PeerError
// naming it.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "chorus/common/clock.h"
#include "chorus/common/error.h"
#include "chorus/comm/group.h"
#include "chorus/ps/sharding.h"

namespace chorus::ps {

// What a server refused, in its words (the request was malformed or cannot be served).
class ServerError : public Error {
 public:
  using Error::Error;
};

class Client {
 public:
  // serverRanks[s] is server s's rank in `group`. timeout bounds each call (0: the group's);
  // a pull that consistency holds back waits within it too.
  Client(std::shared_ptr<comm::ProcessGroup> group, int workerIndex, std::vector<int> serverRanks, ShardPlan plan,
         Millis timeout = Millis(0));
  ~Client();

  // Sends the initial parameter values. Every worker may call it; a server keeps the first
  // values it receives (call it on one worker, then pull on all, to start from one model).
  void init(const std::vector<std::span<const float>>& params);
  // Pushes this worker's gradient, computed on the parameters of the last pull (or of init),
  // to be applied at learning rate lr. Returns once every server has accepted it.
  void push(const std::vector<std::span<const float>>& grads, double lr);
  // Fetches every server's parameters into params; blocks while consistency holds it back.
  void pull(const std::vector<std::span<float>>& params);
  // Tells every server this worker is done. The destructor does it if not done, except while
  // an exception unwinds the stack: then the servers see the worker fail when its transport
  // closes (as if its process had died), rather than a clean goodbye.
  void bye();

  int64_t clock() const;                       // pushes made
  const std::vector<int64_t>& versions() const;  // per server, the version of the last pull
  double pullWaitSeconds() const;              // total time spent in pull()
  uint64_t bytesPushed() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace chorus::ps
