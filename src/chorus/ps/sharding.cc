// Key-range sharding of a model's parameters over the parameter servers (see sharding.h).
//
// Cut rule: with T elements and S servers, base = T / S and rem = T % S; the first rem
// servers hold base + 1 elements, the others base, so server s starts at key
// s * base + min(s, rem). The plan then walks the tensors in order and cuts each one at every
// server boundary it crosses; one pass, O(tensors + servers).
#include "chorus/ps/sharding.h"

#include <algorithm>

#include "chorus/common/error.h"

namespace chorus::ps {

ShardPlan ShardPlan::make(std::vector<TensorSpec> tensors, int servers) {
  if (servers < 1) {
    throw InvalidArgument(str("ShardPlan: servers = ", servers, "; need at least one server"));
  }
  int64_t total = 0;
  for (const TensorSpec& t : tensors) {
    if (t.numel < 0) {
      throw InvalidArgument(str("ShardPlan: tensor '", t.name, "' has numel ", t.numel,
                                "; element counts must be >= 0"));
    }
    total += t.numel;
  }
  if (total < servers) {
    throw InvalidArgument(str("ShardPlan: ", total, " elements over ", servers,
                              " servers would leave a server empty; use at most as many servers"
                              " as parameter elements"));
  }

  ShardPlan plan;
  plan.servers_ = servers;
  plan.total_ = total;
  plan.tensors_ = std::move(tensors);
  const int64_t base = total / servers, rem = total % servers;
  auto serverStart = [&](int s) { return s * base + std::min<int64_t>(s, rem); };

  plan.load_.resize(servers);
  for (int s = 0; s < servers; ++s) plan.load_[s] = serverStart(s + 1) - serverStart(s);

  int server = 0;
  int64_t key = 0;  // first key of the current tensor
  for (int ti = 0; ti < static_cast<int>(plan.tensors_.size()); ++ti) {
    const int64_t numel = plan.tensors_[ti].numel;
    int64_t offset = 0;
    while (offset < numel) {
      while (key + offset >= serverStart(server + 1)) ++server;
      const int64_t len = std::min(numel - offset, serverStart(server + 1) - (key + offset));
      plan.slices_.push_back(Slice{ti, offset, len, server, key + offset});
      offset += len;
    }
    key += numel;
  }

  // Every server holds at least one element, so each owns a non-empty run of slices.
  plan.firstSlice_.assign(servers + 1, 0);
  for (int i = static_cast<int>(plan.slices_.size()) - 1; i >= 0; --i) {
    plan.firstSlice_[plan.slices_[i].server] = i;
  }
  plan.firstSlice_[servers] = static_cast<int>(plan.slices_.size());
  return plan;
}

static void checkServer(int server, int servers) {
  if (server < 0 || server >= servers) {
    throw InvalidArgument(str("ShardPlan: server ", server, " out of range [0, ", servers, ")"));
  }
}

int ShardPlan::firstSlice(int server) const {
  checkServer(server, servers_);
  return firstSlice_[server];
}

int ShardPlan::sliceCount(int server) const {
  checkServer(server, servers_);
  return firstSlice_[server + 1] - firstSlice_[server];
}

int64_t ShardPlan::load(int server) const {
  checkServer(server, servers_);
  return load_[server];
}

uint64_t ShardPlan::fingerprint() const {
  // FNV-1a, 64-bit. Integers go in as 8 little-endian bytes and each name is preceded by its
  // length, so no two different inputs hash the same byte stream.
  uint64_t h = 0xcbf29ce484222325ull;
  auto byte = [&](uint8_t b) {
    h ^= b;
    h *= 0x100000001b3ull;
  };
  auto integer = [&](int64_t v) {
    for (int i = 0; i < 8; ++i) byte(static_cast<uint8_t>(static_cast<uint64_t>(v) >> (8 * i)));
  };
  integer(servers_);
  integer(static_cast<int64_t>(tensors_.size()));
  for (const TensorSpec& t : tensors_) {
    integer(static_cast<int64_t>(t.name.size()));
    for (char c : t.name) byte(static_cast<uint8_t>(c));
    integer(t.numel);
  }
  return h;
}

}  // namespace chorus::ps
