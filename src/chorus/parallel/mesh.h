// ProcessMesh: the world's ranks laid out as a grid of named dimensions (pipeline, data,
// tensor parallel), with one sub-group per dimension: the ranks that differ from this one
// only along that dimension.
//
//   auto world = chorus::comm::ProcessGroup::fromEnvironment();
//   auto mesh = chorus::parallel::ProcessMesh::make(world, /*tp=*/2);   // dp = world / 2
//   ColumnParallelLinear fc(opts, mesh.group("tp"));
//   DistributedDataParallel ddp(model, mesh.group("dp"));
//
// Layout: dimensions are listed slowest to fastest varying; the last one is contiguous in
// rank order (tensor parallelism goes last, so its all-reduces stay within a node).
// For {{"pp",P},{"dp",D},{"tp",K}}: rank = (pp_i * D + dp_i) * K + tp_i.
//
// Thread-safety: a ProcessMesh is immutable after construction; its groups follow
// ProcessGroup's rules. Copies share the groups.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "chorus/comm/group.h"

namespace chorus::parallel {

class ProcessMesh {
 public:
  using Dims = std::vector<std::pair<std::string, int>>;

  // dims ordered slowest to fastest varying, e.g. {{"pp",1},{"dp",2},{"tp",2}}; names must be
  // distinct and non-empty, sizes >= 1, and the product must equal world->size()
  // (ConfigError naming the sizes otherwise). Collective over world: every rank calls it, in
  // the same order relative to its other calls on world (it calls world->split once per
  // dimension, in the order of dims). Blocks until every rank has joined each split.
  ProcessMesh(std::shared_ptr<comm::ProcessGroup> world, Dims dims);

  // The usual layout {{"pp",pp},{"dp",dp},{"tp",tp}} with dp = world->size() / (tp * pp);
  // ConfigError naming the world size, tp, pp and what dp would be when tp * pp does not
  // divide the world size. Collective over world, like the constructor.
  static ProcessMesh make(std::shared_ptr<comm::ProcessGroup> world, int tp, int pp = 1);

  // The ranks that differ from this one only in `dim` (ordered by their coordinate along
  // dim, so group(dim)->rank() == coord(dim)); a dimension of size 1 has a group of one rank.
  // InvalidArgument naming the mesh's dimensions for a dimension the mesh lacks (make() always
  // has pp, dp and tp).
  std::shared_ptr<comm::ProcessGroup> group(const std::string& dim) const;
  bool has(const std::string& dim) const;
  int size(const std::string& dim) const;   // 1 for a dimension the mesh lacks
  int coord(const std::string& dim) const;  // this rank's index along dim (0 if absent)
  int rank() const;                         // this rank in world
  std::shared_ptr<comm::ProcessGroup> world() const { return world_; }
  const Dims& dims() const { return dims_; }
  // The world rank at `coords` (one per dimension, in the order of dims).
  int rankAt(const std::vector<int>& coords) const;
  std::string describe() const;  // "pp1 x dp2 x tp2; rank 3 = (pp0, dp1, tp1)"

 private:
  int index(const std::string& dim) const;  // -1 if absent

  std::shared_ptr<comm::ProcessGroup> world_;
  Dims dims_;
  std::vector<int> coords_;
  std::vector<std::shared_ptr<comm::ProcessGroup>> groups_;
};

}  // namespace chorus::parallel
