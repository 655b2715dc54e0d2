// How a model's parameters are spread over the parameter servers: by key range.
//
// The key space is the concatenation of every parameter tensor, flattened, in the model's
// order (key = global element offset). It is cut into `servers` contiguous ranges whose sizes
// differ by at most one element, so every server holds the same load; a tensor that straddles
// a cut is split into slices, one per server it touches. A slice is the unit of storage,
// locking and optimizer state on a server: one contiguous range of one tensor.
//
//   tensors  [ w1 (10)      ][ b1 (2) ][ w2 (6)   ]     total 18, servers 3 -> 6 each
//   servers  [ s0 (6)  ][ s1 (6)       ][ s2 (6)  ]
//   slices   w1[0,6)@s0  w1[6,10)@s1  b1[0,2)@s1  w2[0,6)@s2
//
// Slices are numbered in key order; server s owns a consecutive run of them. The plan is a
// pure function of (tensor sizes, servers), so workers and servers compute it on their own
// and check that they agree through fingerprint().
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace chorus::ps {

struct TensorSpec {
  std::string name;
  int64_t numel = 0;  // >= 0; empty tensors get no slice
};

struct Slice {
  int tensor = 0;      // index into the plan's tensors
  int64_t offset = 0;  // first element of the tensor in this slice
  int64_t numel = 0;   // > 0
  int server = 0;
  int64_t key = 0;     // global key (element offset in the concatenation) of its first element
};

class ShardPlan {
 public:
  ShardPlan() = default;
  // Throws InvalidArgument for servers < 1, a negative numel, or more servers than elements
  // (a server would hold nothing: say how many elements and servers there are).
  static ShardPlan make(std::vector<TensorSpec> tensors, int servers);

  int servers() const { return servers_; }
  int64_t totalNumel() const { return total_; }
  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  const std::vector<Slice>& slices() const { return slices_; }
  // The slices server s owns: indices [first, first + count) into slices().
  int firstSlice(int server) const;
  int sliceCount(int server) const;
  // Elements server s holds (its load); the sum of its slices' numel.
  int64_t load(int server) const;
  // FNV-1a over (servers, each tensor's name and numel); equal plans, equal fingerprints.
  uint64_t fingerprint() const;

 private:
  int servers_ = 0;
  int64_t total_ = 0;
  std::vector<TensorSpec> tensors_;
  std::vector<Slice> slices_;
  std::vector<int> firstSlice_;  // per server, plus one past the end
  std::vector<int64_t> load_;
};

}  // namespace chorus::ps
