// A rank's coordinates are its world rank written in the mixed radix of the dimension sizes,
// the last dimension the least significant digit. The group of dimension d is the split of
// world whose color is the rank's other coordinates (as one number) and whose key is its
// coordinate along d, so the members are ordered by that coordinate.
#include "chorus/parallel/mesh.h"

#include <set>

#include "chorus/common/error.h"

namespace chorus::parallel {

namespace {

std::string layoutOf(const ProcessMesh::Dims& dims) {
  std::string s;
  for (size_t i = 0; i < dims.size(); ++i) s += chorus::str(i ? " x " : "", dims[i].first, dims[i].second);
  return s.empty() ? "(no dimensions)" : s;
}

}  // namespace

ProcessMesh::ProcessMesh(std::shared_ptr<comm::ProcessGroup> world, Dims dims) : world_(std::move(world)), dims_(std::move(dims)) {
  if (!world_) throw InvalidArgument("ProcessMesh needs a world group; got nullptr");
  if (dims_.empty()) throw ConfigError("ProcessMesh needs at least one dimension, e.g. {{\"dp\", world size}}");
  std::set<std::string> names;
  int64_t product = 1;
  for (const auto& [name, size] : dims_) {
    if (name.empty()) throw ConfigError(chorus::str("ProcessMesh ", layoutOf(dims_), ": a dimension has no name"));
    if (!names.insert(name).second) throw ConfigError(chorus::str("ProcessMesh ", layoutOf(dims_), ": dimension '", name, "' appears twice"));
    if (size < 1) throw ConfigError(chorus::str("ProcessMesh ", layoutOf(dims_), ": dimension '", name, "' has size ", size, "; sizes must be >= 1"));
    product *= size;
  }
  if (product != world_->size())
    throw ConfigError(chorus::str("ProcessMesh ", layoutOf(dims_), " holds ", product, " ranks but the world has ", world_->size(),
                          "; choose sizes whose product is ", world_->size(), " (or launch ", product, " ranks)"));

  // Mixed-radix digits of the world rank, last dimension fastest.
  const int n = static_cast<int>(dims_.size());
  coords_.assign(n, 0);
  int rest = world_->rank();
  for (int i = n - 1; i >= 0; --i) {
    coords_[i] = rest % dims_[i].second;
    rest /= dims_[i].second;
  }
  groups_.reserve(n);
  for (int d = 0; d < n; ++d) {
    int color = 0;
    for (int i = 0; i < n; ++i) {
      if (i != d) color = color * dims_[i].second + coords_[i];
    }
    groups_.push_back(world_->split(color, coords_[d]));
  }
}

ProcessMesh ProcessMesh::make(std::shared_ptr<comm::ProcessGroup> world, int tp, int pp) {
  if (!world) throw InvalidArgument("ProcessMesh::make needs a world group; got nullptr");
  if (tp < 1 || pp < 1) throw ConfigError(chorus::str("ProcessMesh: tp (", tp, ") and pp (", pp, ") must be >= 1"));
  const int w = world->size();
  if (w % (tp * pp) != 0)
    throw ConfigError(chorus::str("ProcessMesh: the world size ", w, " is not a multiple of tp ", tp, " x pp ", pp, " = ", tp * pp,
                          " (dp would be ", w, "/", tp * pp, " = ", static_cast<double>(w) / (tp * pp),
                          "); launch a multiple of ", tp * pp, " ranks or change tp/pp"));
  return ProcessMesh(std::move(world), {{"pp", pp}, {"dp", w / (tp * pp)}, {"tp", tp}});
}

int ProcessMesh::index(const std::string& dim) const {
  for (size_t i = 0; i < dims_.size(); ++i)
    if (dims_[i].first == dim) return static_cast<int>(i);
  return -1;
}

bool ProcessMesh::has(const std::string& dim) const { return index(dim) >= 0; }

std::shared_ptr<comm::ProcessGroup> ProcessMesh::group(const std::string& dim) const {
  const int i = index(dim);
  if (i < 0) throw InvalidArgument(chorus::str("ProcessMesh ", layoutOf(dims_), " has no dimension '", dim, "'"));
  return groups_[i];
}

int ProcessMesh::size(const std::string& dim) const {
  const int i = index(dim);
  return i < 0 ? 1 : dims_[i].second;
}

int ProcessMesh::coord(const std::string& dim) const {
  const int i = index(dim);
  return i < 0 ? 0 : coords_[i];
}

int ProcessMesh::rank() const { return world_->rank(); }

int ProcessMesh::rankAt(const std::vector<int>& coords) const {
  if (coords.size() != dims_.size())
    throw InvalidArgument(chorus::str("ProcessMesh ", layoutOf(dims_), ": rankAt needs ", dims_.size(), " coordinates, got ", coords.size()));
  int r = 0;
  for (size_t i = 0; i < dims_.size(); ++i) {
    if (coords[i] < 0 || coords[i] >= dims_[i].second)
      throw InvalidArgument(chorus::str("ProcessMesh ", layoutOf(dims_), ": coordinate ", coords[i], " out of range for '", dims_[i].first, "'"));
    r = r * dims_[i].second + coords[i];
  }
  return r;
}

std::string ProcessMesh::describe() const {
  std::string s = chorus::str(layoutOf(dims_), "; rank ", rank(), " = (");
  for (size_t i = 0; i < dims_.size(); ++i) s += chorus::str(i ? ", " : "", dims_[i].first, coords_[i]);
  return s + ")";
}

}  // namespace chorus::parallel
