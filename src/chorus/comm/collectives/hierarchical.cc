// Hierarchical collectives: for groups whose ranks sit on several hosts, several on a host.
// Links inside a host (shared memory) are much faster than links between hosts, so these
// algorithms move as little as possible between hosts and do the rest inside them. Each is
// made of phases, each phase a flat algorithm on a subset of the group (Comm::subset): the
// ranks of one host, or one rank of each host. Phases use their own tag steps.
//
// Layout. Hosts are numbered in order of their lowest group rank; inside a host, ranks are in
// group order, and a rank's local index is its place there. S = the fewest ranks on any host.
//
// All-reduce (P ranks on H hosts, n bytes):
//   1. reduce-scatter inside each host into S slices of the buffer: local rank i < S ends with
//      its host's sum of slice i (ranks i >= S of a larger host get nothing);
//   2. all-reduce of slice i across the hosts, among the local ranks i of every host (the
//      flat algorithm auto picks for H ranks);
//   3. all-gather of the slices inside each host.
//   On each host link: 2·(H-1)/H·n/S bytes per rank pair, so a host sends 2·(H-1)/H·n in all,
//   where a flat ring over the P ranks sends 2·(P-1)/P·n across each host boundary it crosses
//   (once per host-local run of the ring). For 2 hosts × 2 ranks: n per host link against
//   1.5·n; the bound on the gain is 1.5×. An average sums in every phase and divides once.
//
// Broadcast: the root sends to one rank of every other host (the root itself on its host;
// local index 0 elsewhere), a flat broadcast among those; then each of them broadcasts inside
// its host. The buffer crosses into each host once.
//
// All-gather: each host gathers its ranks' blocks (a flat all-gather inside the host, into a
// buffer packed in local order); the hosts' first ranks exchange those packs (a flat
// all-gather across hosts, one pack per host); each first rank broadcasts the result inside
// its host; every rank unpacks it into group order. Each block crosses into each host once.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/common/reduce.h"
#include "chorus/comm/collectives/collectives.h"
#include "chorus/comm/collectives/comm.h"
#include "chorus/comm/collectives/detail.h"

namespace chorus::comm {

namespace {

// Tag steps of the phases (each phase's flat algorithm uses steps below 16 on top).
constexpr uint16_t kInsideStep = 16;
constexpr uint16_t kAcrossStep = 32;
constexpr uint16_t kInsideAgainStep = 48;

struct Layout {
  std::vector<std::vector<int>> hosts;  // group ranks of each host, ascending
  int host = 0;                         // this rank's host
  int local = 0;                        // this rank's index in its host
  size_t fewest = 0;                    // the fewest ranks on a host (S)
};

Layout layoutOf(const Comm& comm) {
  Layout l;
  std::vector<int> hostIds;  // the transport's host index of each of our hosts
  for (int r = 0; r < comm.size(); ++r) {
    const int h = comm.hostOf(r);
    const auto it = std::find(hostIds.begin(), hostIds.end(), h);
    const size_t k = static_cast<size_t>(it - hostIds.begin());
    if (it == hostIds.end()) {
      hostIds.push_back(h);
      l.hosts.emplace_back();
    }
    if (r == comm.rank()) {
      l.host = static_cast<int>(k);
      l.local = static_cast<int>(l.hosts[k].size());
    }
    l.hosts[k].push_back(r);
  }
  l.fewest = l.hosts.empty() ? 0 : l.hosts[0].size();
  for (const auto& h : l.hosts) l.fewest = std::min(l.fewest, h.size());
  return l;
}

// A phase's subset: the global ranks of the group ranks `members`, and this rank's place.
struct Subset {
  std::vector<int> global;
  int rank = -1;
};

Subset subsetOf(const Comm& comm, const std::vector<int>& members) {
  Subset s;
  for (size_t i = 0; i < members.size(); ++i) {
    s.global.push_back(comm.globalRank(members[i]));
    if (members[i] == comm.rank()) s.rank = static_cast<int>(i);
  }
  return s;
}

// The ranks of local index `local` on every host that has one, in host order.
std::vector<int> acrossMembers(const Layout& l, int local) {
  std::vector<int> out;
  for (const auto& h : l.hosts) {
    if (static_cast<size_t>(local) < h.size()) out.push_back(h[static_cast<size_t>(local)]);
  }
  return out;
}

}  // namespace

Links linksOf(const Comm& comm) {
  Links k;
  k.sharedMemory = true;
  for (int r = 0; r < comm.size(); ++r) {
    if (r != comm.rank() && !comm.sharedMemoryTo(r)) k.sharedMemory = false;
  }
  if (comm.size() <= 1) return k;
  const Layout l = layoutOf(comm);
  k.hosts = static_cast<int>(l.hosts.size());
  k.largestHost = 0;
  for (const auto& h : l.hosts) k.largestHost = std::max(k.largestHost, static_cast<int>(h.size()));
  return k;
}

void allreduceHierarchical(Comm& comm, const AllreduceOptions& o) {
  if (detail::trivialAllreduce(comm, o)) return;
  const Layout l = layoutOf(comm);
  const ReduceOp partial = detail::partialOp(o.op);
  const size_t esize = dtypeSize(o.dtype);
  const auto& mine = l.hosts[static_cast<size_t>(l.host)];
  const size_t S = l.fewest;
  // Slice i of the buffer for local rank i < S; nothing for the others.
  std::vector<size_t> counts(mine.size(), 0);
  for (size_t i = 0; i < S; ++i) counts[i] = detail::evenBlock(o.count, static_cast<int>(S), static_cast<int>(i)).count;
  std::vector<size_t> offsets(mine.size() + 1, 0);
  std::partial_sum(counts.begin(), counts.end(), offsets.begin() + 1);
  void* slice = detail::advance(o.data, offsets[static_cast<size_t>(l.local)], esize);
  const size_t sliceCount = counts[static_cast<size_t>(l.local)];

  const Subset inside = subsetOf(comm, mine);
  if (mine.size() > 1) {
    Comm c = comm.subset(&inside.global, inside.rank, kInsideStep);
    ReduceScatterOptions rs;
    rs.input = o.data;
    rs.output = slice;
    rs.count = sliceCount;
    rs.counts = counts;
    rs.dtype = o.dtype;
    rs.op = partial;
    reduceScatter(c, rs);
  }
  if (static_cast<size_t>(l.local) < S && l.hosts.size() > 1) {
    const Subset across = subsetOf(comm, acrossMembers(l, l.local));
    Comm c = comm.subset(&across.global, across.rank, kAcrossStep);
    AllreduceOptions ar;
    ar.data = slice;
    ar.count = sliceCount;
    ar.dtype = o.dtype;
    ar.op = partial;
    ar.algo = chooseAllreduceAlgo(sliceCount * esize, c.size(), linksOf(c));
    CHORUS_CHECK(ar.algo != AllreduceAlgo::kHierarchical, "a cross-host phase chose the hierarchical algorithm");
    allreduce(c, ar);
  }
  if (mine.size() > 1) {
    Comm c = comm.subset(&inside.global, inside.rank, kInsideAgainStep);
    AllgatherOptions ag;
    ag.input = slice;
    ag.output = o.data;
    ag.count = sliceCount;
    ag.counts = counts;
    ag.dtype = o.dtype;
    allgatherFlat(c, ag);
  }
  finishReduce(o.data, o.count, o.dtype, o.op, comm.size());
}

void broadcastHierarchical(Comm& comm, const BroadcastOptions& o) {
  detail::requireRoot(comm, o.root);
  detail::requireBuffer(o.data, o.count, "broadcast data");
  if (o.count == 0 || comm.size() == 1) return;
  const Layout l = layoutOf(comm);
  // Each host's entry rank: the root on the root's host, the first rank elsewhere.
  const int rootHost = [&] {
    for (size_t h = 0; h < l.hosts.size(); ++h) {
      if (std::find(l.hosts[h].begin(), l.hosts[h].end(), o.root) != l.hosts[h].end()) return static_cast<int>(h);
    }
    return 0;
  }();
  std::vector<int> entries;
  for (size_t h = 0; h < l.hosts.size(); ++h) entries.push_back(static_cast<int>(h) == rootHost ? o.root : l.hosts[h][0]);
  const int entry = entries[static_cast<size_t>(l.host)];
  if (comm.rank() == entry) {
    const Subset across = subsetOf(comm, entries);
    Comm c = comm.subset(&across.global, across.rank, kAcrossStep);
    BroadcastOptions b = o;
    b.root = rootHost;
    broadcastFlat(c, b);
  }
  const auto& mine = l.hosts[static_cast<size_t>(l.host)];
  if (mine.size() > 1) {
    const Subset inside = subsetOf(comm, mine);
    Comm c = comm.subset(&inside.global, inside.rank, kInsideStep);
    BroadcastOptions b = o;
    b.root = static_cast<int>(std::find(mine.begin(), mine.end(), entry) - mine.begin());
    broadcastFlat(c, b);
  }
}

void allgatherHierarchical(Comm& comm, const AllgatherOptions& o) {
  const int P = comm.size();
  const auto [counts, offsets] = detail::allgatherLayout(comm, o);
  const size_t esize = dtypeSize(o.dtype);
  const size_t total = offsets[static_cast<size_t>(P)];
  if (total == 0) return;
  const Layout l = layoutOf(comm);
  const auto& mine = l.hosts[static_cast<size_t>(l.host)];

  // Packed order: host by host, each host's ranks in local order.
  std::vector<size_t> hostCounts(l.hosts.size(), 0);
  for (size_t h = 0; h < l.hosts.size(); ++h) {
    for (int q : l.hosts[h]) hostCounts[h] += counts[static_cast<size_t>(q)];
  }
  std::vector<size_t> hostOffsets(l.hosts.size() + 1, 0);
  std::partial_sum(hostCounts.begin(), hostCounts.end(), hostOffsets.begin() + 1);
  std::vector<char> packed(total * esize);
  char* myPack = packed.data() + hostOffsets[static_cast<size_t>(l.host)] * esize;

  const Subset inside = subsetOf(comm, mine);
  {
    Comm c = comm.subset(&inside.global, inside.rank, kInsideStep);
    AllgatherOptions g;
    g.input = o.input;
    g.output = myPack;
    g.count = o.count;
    for (int q : mine) g.counts.push_back(counts[static_cast<size_t>(q)]);
    g.dtype = o.dtype;
    allgatherFlat(c, g);
  }
  if (l.local == 0 && l.hosts.size() > 1) {
    const Subset across = subsetOf(comm, acrossMembers(l, 0));
    Comm c = comm.subset(&across.global, across.rank, kAcrossStep);
    AllgatherOptions g;
    g.input = myPack;
    g.output = packed.data();
    g.count = hostCounts[static_cast<size_t>(l.host)];
    g.counts = hostCounts;
    g.dtype = o.dtype;
    allgatherFlat(c, g);
  }
  if (mine.size() > 1 && l.hosts.size() > 1) {
    Comm c = comm.subset(&inside.global, inside.rank, kInsideAgainStep);
    BroadcastOptions b;
    b.data = packed.data();
    b.count = total;
    b.dtype = o.dtype;
    b.root = 0;
    broadcastFlat(c, b);
  }
  // Unpack into group order.
  size_t at = 0;
  for (const auto& h : l.hosts) {
    for (int q : h) {
      const size_t n = counts[static_cast<size_t>(q)] * esize;
      if (n > 0) std::memcpy(detail::advance(o.output, offsets[static_cast<size_t>(q)], esize), packed.data() + at, n);
      at += n;
    }
  }
}

}  // namespace chorus::comm
