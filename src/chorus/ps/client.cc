// The worker side of the parameter server (client.h): gathers each server's slices from the
// model's tensors into one buffer, sends every server its request at once, then reads the
// answers server by server (header first, since it says how large the payload is).
#include "chorus/ps/client.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <exception>

#include "chorus/common/logging.h"
#include "chorus/ps/protocol.h"

namespace chorus::ps {

struct Client::Impl {
  std::shared_ptr<comm::ProcessGroup> group;
  int worker;
  std::vector<int> serverRanks;
  ShardPlan plan;
  Millis timeout;
  uint64_t fingerprint;
  std::vector<int64_t> versions;
  int64_t clock = 0;
  double pullWait = 0;
  uint64_t bytesPushed = 0;
  bool saidBye = false;
  int uncaught = std::uncaught_exceptions();  // at construction: a destructor run by unwinding sees more

  int servers() const { return plan.servers(); }
  std::string who() const { return str("ps worker ", worker, " (rank ", group->rank(), ")"); }

  template <typename Span>
  void checkTensors(const std::vector<Span>& ts, const char* op) const {
    const auto& specs = plan.tensors();
    if (ts.size() != specs.size()) {
      throw InvalidArgument(str(who(), " ", op, ": ", ts.size(), " tensors given, the plan has ", specs.size()));
    }
    for (size_t i = 0; i < ts.size(); ++i) {
      if (static_cast<int64_t>(ts[i].size()) != specs[i].numel) {
        throw InvalidArgument(str(who(), " ", op, ": tensor ", i, " ('", specs[i].name, "') has ", ts[i].size(),
                                  " elements, the plan says ", specs[i].numel));
      }
    }
  }

  // Server s's slices of `ts`, in slice order.
  std::vector<float> gather(const std::vector<std::span<const float>>& ts, int s) const {
    std::vector<float> out;
    out.reserve(static_cast<size_t>(plan.load(s)));
    const int first = plan.firstSlice(s);
    for (int k = first; k < first + plan.sliceCount(s); ++k) {
      const Slice& sl = plan.slices()[static_cast<size_t>(k)];
      const float* p = ts[static_cast<size_t>(sl.tensor)].data() + sl.offset;
      out.insert(out.end(), p, p + sl.numel);
    }
    return out;
  }

  void scatter(const std::vector<float>& in, const std::vector<std::span<float>>& ts, int s) const {
    const int first = plan.firstSlice(s);
    size_t at = 0;
    for (int k = first; k < first + plan.sliceCount(s); ++k) {
      const Slice& sl = plan.slices()[static_cast<size_t>(k)];
      std::copy_n(in.begin() + static_cast<std::ptrdiff_t>(at), sl.numel,
                  ts[static_cast<size_t>(sl.tensor)].data() + sl.offset);
      at += static_cast<size_t>(sl.numel);
    }
  }

  // Sends `op` (with payloads[s], if any) to every server and reads every answer. kParams
  // payloads land in params[s]. Throws ServerError with the first server's kError message,
  // after every answer has been read, so the message stream stays in step.
  void exchange(Op op, const std::vector<std::vector<float>>& payloads, double lr,
                std::vector<std::vector<float>>* params) {
    const int n = servers();
    std::vector<std::array<uint8_t, kHeaderBytes>> out(static_cast<size_t>(n)), in(static_cast<size_t>(n));
    std::vector<comm::WorkPtr> sends, recvs;
    for (int s = 0; s < n; ++s) {
      Header h;
      h.op = op;
      h.worker = worker;
      h.server = s;
      h.fingerprint = fingerprint;
      h.version = versions[static_cast<size_t>(s)];
      h.clock = op == Op::kPush ? clock + 1 : clock;  // a push carries the step it makes
      h.lr = lr;
      h.payloadBytes = payloads.empty() ? 0 : payloads[static_cast<size_t>(s)].size() * sizeof(float);
      h.firstSlice = plan.firstSlice(s);
      out[static_cast<size_t>(s)] = encodeHeader(h);
      const int rank = serverRanks[static_cast<size_t>(s)];
      sends.push_back(group->sendAsync(rank, kHeaderTag, out[static_cast<size_t>(s)].data(), kHeaderBytes, timeout));
      if (h.payloadBytes > 0) {
        sends.push_back(
            group->sendAsync(rank, kPayloadTag, payloads[static_cast<size_t>(s)].data(), h.payloadBytes, timeout));
      }
    }
    for (int s = 0; s < n; ++s) {
      recvs.push_back(group->recvAsync(serverRanks[static_cast<size_t>(s)], kHeaderTag,
                                       in[static_cast<size_t>(s)].data(), kHeaderBytes, timeout));
    }
    std::string error;
    for (int s = 0; s < n; ++s) {
      const int rank = serverRanks[static_cast<size_t>(s)];
      recvs[static_cast<size_t>(s)]->wait();
      const Header a = decodeHeader(in[static_cast<size_t>(s)]);
      // An error may be about the fingerprint itself, so only other answers must carry ours.
      if (a.server != s || a.worker != worker || (a.op != Op::kError && a.fingerprint != fingerprint)) {
        throw PeerError(str(who(), ": server ", s, " (rank ", rank, ") answered ", opName(op), " with a header for ",
                            "server ", a.server, ", worker ", a.worker, ", fingerprint ", a.fingerprint,
                            "; check that serverRanks and the plan match the servers"),
                        rank);
      }
      if (a.op == Op::kError) {
        if (a.payloadBytes > kMaxPayloadBytes) {
          throw PeerError(str(who(), ": server ", s, " sent an error of ", a.payloadBytes, " bytes"), rank);
        }
        std::string msg(a.payloadBytes, '\0');
        if (!msg.empty()) group->recv(rank, kPayloadTag, msg.data(), msg.size(), timeout);
        if (error.empty()) error = str(who(), ": ", opName(op), " refused by ", msg);
        continue;
      }
      const Op expected = op == Op::kPull ? Op::kParams : Op::kAck;
      const uint64_t bytes = op == Op::kPull ? 4 * static_cast<uint64_t>(plan.load(s)) : 0;
      if (a.op != expected || a.payloadBytes != bytes) {
        throw PeerError(str(who(), ": server ", s, " (rank ", rank, ") answered ", opName(op), " with ", opName(a.op),
                            " and ", a.payloadBytes, " payload bytes; expected ", opName(expected), " and ", bytes),
                        rank);
      }
      if (op == Op::kPull) {
        auto& buf = (*params)[static_cast<size_t>(s)];
        buf.resize(static_cast<size_t>(plan.load(s)));
        group->recv(rank, kPayloadTag, buf.data(), bytes, timeout);
        versions[static_cast<size_t>(s)] = a.version;
      }
    }
    for (auto& w : sends) w->wait();
    if (!error.empty()) throw ServerError(error);
  }
};

Client::Client(std::shared_ptr<comm::ProcessGroup> group, int workerIndex, std::vector<int> serverRanks, ShardPlan plan,
               Millis timeout)
    : impl_(std::make_unique<Impl>()) {
  Impl& c = *impl_;
  if (!group) throw InvalidArgument("ps client: the process group is null");
  if (static_cast<int>(serverRanks.size()) != plan.servers()) {
    throw InvalidArgument(str("ps client: ", serverRanks.size(), " server ranks for a plan of ", plan.servers(),
                              " servers; give one rank per server"));
  }
  for (size_t s = 0; s < serverRanks.size(); ++s) {
    const int r = serverRanks[s];
    if (r < 0 || r >= group->size() || r == group->rank()) {
      throw InvalidArgument(str("ps client: server ", s, " has rank ", r, ", which is not another rank of the group of ",
                                group->size()));
    }
  }
  if (workerIndex < 0) throw InvalidArgument(str("ps client: worker index ", workerIndex, " is negative"));
  c.group = std::move(group);
  c.worker = workerIndex;
  c.serverRanks = std::move(serverRanks);
  c.plan = std::move(plan);
  c.timeout = timeout;
  c.fingerprint = c.plan.fingerprint();
  c.versions.assign(static_cast<size_t>(c.plan.servers()), 0);
}

Client::~Client() {
  // A worker unwinding from an error does not say goodbye: its servers see the connection
  // fail and count it among the failed workers, as they would if its process had died.
  if (impl_->saidBye || std::uncaught_exceptions() > impl_->uncaught) return;
  try {
    bye();
  } catch (const std::exception& e) {
    CHORUS_DEBUG(impl_->who(), ": goodbye at destruction failed: ", e.what());
  }
}

void Client::init(const std::vector<std::span<const float>>& params) {
  Impl& c = *impl_;
  c.checkTensors(params, "init");
  std::vector<std::vector<float>> payloads;
  for (int s = 0; s < c.servers(); ++s) payloads.push_back(c.gather(params, s));
  c.exchange(Op::kInit, payloads, 0.0, nullptr);
}

void Client::push(const std::vector<std::span<const float>>& grads, double lr) {
  Impl& c = *impl_;
  c.checkTensors(grads, "push");
  std::vector<std::vector<float>> payloads;
  for (int s = 0; s < c.servers(); ++s) {
    payloads.push_back(c.gather(grads, s));
    c.bytesPushed += payloads.back().size() * sizeof(float);
  }
  c.exchange(Op::kPush, payloads, lr, nullptr);
  ++c.clock;
}

void Client::pull(const std::vector<std::span<float>>& params) {
  Impl& c = *impl_;
  c.checkTensors(params, "pull");
  const auto t0 = Clock::now();
  std::vector<std::vector<float>> got(static_cast<size_t>(c.servers()));
  try {
    c.exchange(Op::kPull, {}, 0.0, &got);
  } catch (...) {
    c.pullWait += std::chrono::duration<double>(Clock::now() - t0).count();
    throw;
  }
  for (int s = 0; s < c.servers(); ++s) c.scatter(got[static_cast<size_t>(s)], params, s);
  c.pullWait += std::chrono::duration<double>(Clock::now() - t0).count();
}

void Client::bye() {
  Impl& c = *impl_;
  if (c.saidBye) return;
  c.saidBye = true;
  c.exchange(Op::kBye, {}, 0.0, nullptr);
}

int64_t Client::clock() const { return impl_->clock; }
const std::vector<int64_t>& Client::versions() const { return impl_->versions; }
double Client::pullWaitSeconds() const { return impl_->pullWait; }
uint64_t Client::bytesPushed() const { return impl_->bytesPushed; }

}  // namespace chorus::ps
