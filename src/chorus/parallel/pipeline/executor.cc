// The pipeline executor (see executor.h).
#include "chorus/parallel/pipeline/executor.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <deque>
#include <mutex>
#include <optional>
#include <set>
#include <utility>

#include "chorus/common/error.h"
#include "chorus/parallel/pipeline/weight_grad.h"

namespace chorus::parallel {

using Clock = std::chrono::steady_clock;

const char* PipeSpan::name(Kind k) {
  switch (k) {
    case Kind::kForward: return "forward";
    case Kind::kBackward: return "backward";
    case Kind::kBackwardInput: return "backward input";
    case Kind::kBackwardWeight: return "backward weight";
    case Kind::kWaitActivation: return "wait activation";
    case Kind::kWaitGradient: return "wait gradient";
    case Kind::kWaitSend: return "wait send";
    case Kind::kStep: return "optimizer step";
  }
  return "?";
}

// What this rank keeps for one (chunk, micro-batch) between its actions.
struct PipelineExecutor::Unit {
  TensorWorkPtr inputWork, gradWork;  // posted receives
  torch::Tensor inputBuffer, gradBuffer;  // the pooled buffers they fill (undefined: fresh tensors)
  torch::Tensor input;   // the forward's input (a leaf requiring grad when received and floating point)
  torch::Tensor output;  // the chunk's output, until its backward
  torch::Tensor loss;    // the last virtual stage's loss, until its backward
  torch::Tensor gradOut;
  torch::Tensor gradIn;  // input.grad() after the backward, until sent
  std::shared_ptr<WeightGradStore> store;
  bool held = false;  // forward state kept (counts towards peakStored)
  at::Tensor rngState;  // recompute: the CPU generator's state before the forward
};

namespace {

// One chunk's weights under an asynchronous schedule (executor.h, "Weight versions").
struct ChunkWeights {
  std::vector<torch::Tensor> params;  // the module's parameters; their data is swapped
  std::vector<torch::Tensor> latest;  // the latest version, which updates change in place
  std::map<int64_t, std::vector<torch::Tensor>> stash;  // version -> a copy of it

  void use(const std::vector<torch::Tensor>& data) {
    for (size_t k = 0; k < params.size(); ++k) params[k].set_data(data[k]);
  }
  void keep(int64_t version) {
    if (stash.count(version)) return;
    std::vector<torch::Tensor> copy;
    copy.reserve(latest.size());
    for (const auto& t : latest) copy.push_back(t.clone());
    stash.emplace(version, std::move(copy));
  }
  // Runs the caller's update on the latest weights. An in-place change of a parameter bumps its
  // version counter, which autograd checks when a graph in flight unpacks the parameter it
  // saved; those graphs run on their stashed copies (or, without stashing, deliberately on the
  // latest weights), so the update runs under fresh counters and the old ones are put back.
  void update(const std::function<void(int)>& fn, int chunk) {
    use(latest);
    std::vector<c10::VariableVersion> saved;
    saved.reserve(params.size());
    for (auto& p : params) {
      saved.push_back(p.unsafeGetTensorImpl()->version_counter());
      p.unsafeGetTensorImpl()->set_version_counter(c10::VariableVersion(saved.back().current_version()));
    }
    try {
      fn(chunk);
    } catch (...) {
      for (size_t k = 0; k < params.size(); ++k) params[k].unsafeGetTensorImpl()->set_version_counter(saved[k]);
      throw;
    }
    for (size_t k = 0; k < params.size(); ++k) params[k].unsafeGetTensorImpl()->set_version_counter(saved[k]);
  }
};

}  // namespace

struct PipelineExecutor::Impl {
  Impl(std::shared_ptr<comm::ProcessGroup> g, MetaMode meta) : p2p(std::move(g), P2POptions{meta, Millis{0}}) {}
  TensorP2P p2p;
  // Recycled receive buffers, per channel (0 activation / 1 gradient, sending virtual stage).
  std::map<std::pair<int, int>, std::vector<torch::Tensor>> pools;
  // Channels between two chunks of this rank.
  std::map<std::pair<int, int>, std::deque<torch::Tensor>> local;
  std::vector<TensorWorkPtr> sends;

  // What lasts from one call to the next in stream mode (within one call otherwise): the
  // (chunk, micro-batch) pairs in flight, and under an asynchronous schedule each chunk's
  // weights, the version each forward in flight used, and (vertical sync) the version the
  // first stage uses for each micro-batch this rank has not forwarded yet.
  std::map<std::pair<int, int>, Unit> units;
  int held = 0;
  std::vector<ChunkWeights> weights;
  std::map<std::pair<int, int>, int64_t> forwardVersion;
  std::map<int, int64_t> firstStageVersion;
  // Stream mode: the next segment, and how far the first stage's versions are known
  // (segments of rank 0's actions walked, and its version after them).
  int64_t segment = 0;
  int64_t walked = 0;
  int64_t walkedVersion = 0;
};

PipelineExecutor::PipelineExecutor(std::shared_ptr<comm::ProcessGroup> pp, PipeSchedule schedule, PipelineOptions opts)
    : pp_(std::move(pp)), schedule_(std::move(schedule)), opts_(opts) {
  if (!pp_) throw InvalidArgument("PipelineExecutor needs the pipeline process group; got nullptr");
  if (pp_->size() != schedule_.stages)
    throw InvalidArgument(chorus::str("PipelineExecutor: the pipeline group has ", pp_->size(), " ranks but schedule \"",
                                      schedule_.name, "\" has ", schedule_.stages,
                                      " stages; make the schedule for the group's size"));
  checkSchedule(schedule_);
  const uint64_t lastTag = static_cast<uint64_t>(opts_.tag) + 2 * static_cast<uint64_t>(schedule_.virtualStages());
  if (lastTag >= TensorP2P::kHeaderTagBit)
    throw InvalidArgument(chorus::str("PipelineExecutor: tags ", opts_.tag, " .. ", lastTag, " reach the header bit ",
                                      TensorP2P::kHeaderTagBit, "; use a smaller PipelineOptions::tag"));
  if (opts_.verticalSync && (!opts_.weightStashing || !schedule_.asynchronous() || schedule_.chunks != 1))
    throw InvalidArgument(chorus::str("PipelineExecutor: vertical sync is for an asynchronous schedule (pipedream, 2bw) ",
                                      "of one chunk per rank with weight stashing on; schedule \"", schedule_.name,
                                      "\", ", schedule_.chunks, " chunk(s), stashing ", opts_.weightStashing ? "on" : "off"));
  rank_ = pp_->rank();
  impl_ = std::make_unique<Impl>(pp_, opts_.meta);
  versions_.assign(static_cast<size_t>(schedule_.chunks), 0);
}


PipelineExecutor::~PipelineExecutor() {
  // Sends still posted (a run that failed) keep their tensors; wait for them briefly.
  if (!impl_) return;
  for (auto& w : impl_->sends) {
    try {
      w->wait();
    } catch (...) {
    }
  }
}

PipelineRun PipelineExecutor::run(const Step& step) {
  if (!streaming()) return execute(schedule_.ranks[static_cast<size_t>(rank_)], step, 0, Mode::kWhole);
  const int64_t k = impl_->segment;
  PipelineRun out = execute(asyncSegment(schedule_, rank_, k), step, static_cast<int>(k) * schedule_.microBatches,
                            Mode::kSegment);
  impl_->segment = k + 1;
  return out;
}

PipelineRun PipelineExecutor::flush(const Step& step) {
  if (!streaming() || impl_->segment == 0) return PipelineRun{};
  const int64_t k = impl_->segment;
  PipelineRun out = execute(asyncDrain(schedule_, rank_, k), step, static_cast<int>(k) * schedule_.microBatches,
                            Mode::kDrain);
  impl_->segment = 0;
  return out;
}

int64_t PipelineExecutor::segmentsInFlight() const { return streaming() ? impl_->segment : 0; }

PipelineRun PipelineExecutor::execute(const std::vector<PipeAction>& actions, const Step& step, int offset, Mode mode) {
  const PipeSchedule& s = schedule_;
  const int m = s.microBatches, last = s.virtualStages() - 1;
  Impl& im = *impl_;
  // A whole run and a stream's drain end with nothing in flight; a stream's segment keeps
  // the micro-batches whose backward comes in a later call.
  const bool ends = mode != Mode::kSegment;
  if (!step.forward) throw InvalidArgument("PipelineExecutor::run: Step::forward is required");
  for (int c = 0; c < s.chunks && mode != Mode::kDrain; ++c) {
    const int vs = s.virtualStage(rank_, c);
    if (vs == 0 && !step.input)
      throw InvalidArgument("PipelineExecutor::run: this rank holds the first virtual stage and needs Step::input");
    if (vs == last && !step.loss)
      throw InvalidArgument("PipelineExecutor::run: this rank holds the last virtual stage and needs Step::loss");
  }
  const bool async = s.asynchronous();
  if (async && (!step.parameters || !step.update))
    throw InvalidArgument(chorus::str("PipelineExecutor::run: asynchronous schedule \"", s.name,
                                      "\" needs Step::parameters and Step::update"));
  using Key = std::pair<int, int>;  // (chunk, micro-batch)
  auto key = [](const PipeAction& a) { return Key{a.chunk, a.microBatch}; };
  // Which micro-batches' backward this rank splits into B and W.
  std::set<Key> split;
  for (const PipeAction& a : actions)
    if (a.op == PipeOp::kBackwardInput) split.insert(key(a));
  auto unit = [&](const PipeAction& a) -> Unit& { return im.units[key(a)]; };
  // The callbacks number the micro-batches of their call from 0.
  auto local = [&](int microBatch) { return microBatch - offset; };
  PipelineRun out;
  for (int c = 0; c < s.chunks && mode != Mode::kDrain; ++c)
    if (s.virtualStage(rank_, c) == last) out.losses.assign(static_cast<size_t>(m), 0.0);
  out.peakStored = im.held;

  // Asynchronous schedules: each chunk's weights (taken at a run's or a stream's start) and,
  // with vertical sync, the version the first stage uses for each micro-batch: its version at
  // the start plus the updates it makes before that forward (every rank starts a run, and a
  // stream, at the same version: each makes the same number of updates in one). A stream
  // looks far enough ahead to know every version a later forward of this rank will ask for.
  if (async && im.weights.empty()) {
    for (int c = 0; c < s.chunks; ++c) {
      ChunkWeights w;
      w.params = step.parameters(c);
      for (const auto& t : w.params) {
        if (!t.defined()) throw InvalidArgument(chorus::str("PipelineExecutor: Step::parameters(", c, ") returned an undefined tensor"));
        w.latest.push_back(t.variable_data());
      }
      im.weights.push_back(std::move(w));
    }
  }
  if (async && opts_.verticalSync) {
    auto walk = [&](const std::vector<PipeAction>& rank0, int64_t& v) {
      for (const PipeAction& a : rank0) {
        if (a.op == PipeOp::kWeightUpdate) ++v;
        if (a.op == PipeOp::kForward) im.firstStageVersion[a.microBatch] = v;
      }
    };
    if (mode == Mode::kWhole) {
      int64_t v = versions_[0];
      walk(s.ranks[0], v);
    } else if (mode == Mode::kSegment) {
      if (im.segment == 0) {
        im.walked = 0;
        im.walkedVersion = versions_[0];
      }
      while (im.walked * m < static_cast<int64_t>(offset) + m + s.stages) walk(asyncSegment(s, 0, im.walked++), im.walkedVersion);
    }
  }
  auto liveVersions = [&](int c) {
    const ChunkWeights& w = im.weights[static_cast<size_t>(c)];
    return static_cast<int>(w.stash.size()) + (w.stash.count(versions_[static_cast<size_t>(c)]) ? 0 : 1);
  };
  // Drops the stashed versions of chunk c that no micro-batch in flight, nor (vertical sync)
  // a later forward, will use.
  auto prune = [&](int c) {
    ChunkWeights& w = im.weights[static_cast<size_t>(c)];
    for (auto it = w.stash.begin(); it != w.stash.end();) {
      bool needed = false;
      for (const auto& [k, v] : im.forwardVersion) needed = needed || (k.first == c && v == it->first);
      for (const auto& [mb, v] : im.firstStageVersion) needed = needed || v == it->first;
      it = needed ? std::next(it) : w.stash.erase(it);
    }
  };
  // The parameters hold the latest weights between calls; a finished run drops the copies.
  auto restoreLatest = [&](bool drop) {
    for (auto& w : im.weights) {
      w.use(w.latest);
      if (drop) w.stash.clear();
    }
    if (drop) {
      im.weights.clear();
      im.forwardVersion.clear();
      im.firstStageVersion.clear();
    }
  };
  auto span = [&](PipeSpan::Kind k, int chunk, int mb, Clock::time_point t0) {
    const Clock::time_point t1 = Clock::now();
    const double sec = std::chrono::duration<double>(t1 - t0).count();
    const bool wait = k == PipeSpan::Kind::kWaitActivation || k == PipeSpan::Kind::kWaitGradient ||
                      k == PipeSpan::Kind::kWaitSend;
    (wait ? out.waitSeconds : out.computeSeconds) += sec;
    if (opts_.recordSpans) out.spans.push_back({k, chunk, mb, t0, t1});
  };
  auto what = [&](const char* kind, const PipeAction& a) {
    return chorus::str(kind, " of micro-batch ", a.microBatch, " (virtual stage ", s.virtualStage(rank_, a.chunk), ")");
  };
  auto tagOf = [&](int kind, int fromVs) { return opts_.tag + 2 * static_cast<uint32_t>(fromVs) + kind; };

  // Posts the receive of action i (recvA or recvG) unless posted; local channels need none.
  auto post = [&](const PipeAction& a) {
    Unit& u = unit(a);
    const int vs = s.virtualStage(rank_, a.chunk);
    const bool activation = a.op == PipeOp::kRecvActivation;
    TensorWorkPtr& work = activation ? u.inputWork : u.gradWork;
    if (work) return;
    // A gradient comes only for a floating-point output, known once the forward has run.
    if (!activation && (!u.output.defined() || !u.output.is_floating_point())) return;
    const int from = activation ? vs - 1 : vs + 1;
    const int peer = s.rankOf(from);
    if (peer == rank_) return;
    const uint32_t tag = tagOf(activation ? 0 : 1, from);
    auto& pool = im.pools[{activation ? 0 : 1, from}];
    std::optional<TensorMeta> agreed = im.p2p.agreedRecv(peer, tag);
    const std::string label = what(activation ? "activation" : "gradient", a);
    if (agreed && !pool.empty()) {
      torch::Tensor buf = std::move(pool.back());
      pool.pop_back();
      (activation ? u.inputBuffer : u.gradBuffer) = buf;
      work = im.p2p.recvIntoAsync(buf, peer, tag, label);
      ++out.reusedBuffers;
    } else {
      work = im.p2p.recvAsync(peer, tag, label);
    }
  };
  // Posts the receives between action i and the second compute action after it.
  auto postAhead = [&](size_t i) {
    int computes = 0;
    for (size_t j = i; j < actions.size() && computes < 2; ++j) {
      const PipeOp op = actions[j].op;
      if (op == PipeOp::kRecvActivation || op == PipeOp::kRecvGradient) post(actions[j]);
      if (op == PipeOp::kForward || op == PipeOp::kBackward || op == PipeOp::kBackwardInput ||
          op == PipeOp::kBackwardWeight)
        ++computes;
    }
  };
  auto recycle = [&](int kind, int from, torch::Tensor& buf) {
    // Only a buffer nothing else refers to any more (autograd released it) goes back.
    if (buf.defined() && buf.storage().use_count() == 1) im.pools[{kind, from}].push_back(buf);
    buf = torch::Tensor();
  };
  // Frees what the micro-batch kept; its unit is gone afterwards.
  auto release = [&](const PipeAction& a, Unit& u) {
    const int vs = s.virtualStage(rank_, a.chunk);
    u.input = u.output = u.loss = u.gradOut = torch::Tensor();
    u.store.reset();
    recycle(0, vs - 1, u.inputBuffer);
    recycle(1, vs + 1, u.gradBuffer);
    if (u.held) --im.held;
    im.units.erase(key(a));
  };
  // Recompute: the forward again, with autograd, under the generator state of the first run;
  // the generator then goes back to where this rank's sequence of forwards had left it.
  auto recomputeForward = [&](const PipeAction& a, Unit& u) {
    const int vs = s.virtualStage(rank_, a.chunk);
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    at::Tensor now;
    {
      std::lock_guard<std::mutex> lock(gen.mutex());
      now = gen.get_state();
      gen.set_state(u.rngState);
    }
    torch::Tensor y;
    try {
      if (u.store) {
        WeightGradScope scope(u.store);
        y = step.forward(a.chunk, u.input);
      } else {
        y = step.forward(a.chunk, u.input);
      }
      if (vs == last) u.loss = step.loss(y, local(a.microBatch)).reshape({});
    } catch (...) {
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(now);
      throw;
    }
    {
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(now);
    }
    u.output = y;
    ++out.recomputedForwards;
  };
  auto backward = [&](const PipeAction& a, Unit& u, bool deferWeights) {
    const int vs = s.virtualStage(rank_, a.chunk);
    if (opts_.recompute) recomputeForward(a, u);
    if (deferWeights) u.store->setDeferring(true);
    try {
      if (vs == last) {
        u.loss.backward();
      } else if (u.output.requires_grad()) {
        if (!u.gradOut.defined())
          throw InvalidArgument(chorus::str("PipelineExecutor: ", what("backward", a), " has no output gradient"));
        u.output.backward(u.gradOut);
      }
    } catch (...) {
      if (deferWeights) u.store->setDeferring(false);
      throw;
    }
    if (deferWeights) u.store->setDeferring(false);
    if (vs > 0 && u.input.requires_grad()) {
      u.gradIn = u.input.grad();
      if (!u.gradIn.defined()) u.gradIn = torch::zeros_like(u.input);
    }
    u.output = u.loss = u.gradOut = torch::Tensor();
  };

  // A failure mid-schedule may leave receives posted into this step's buffers (and sends
  // reading from them). Before they are freed, the transport is closed so that nothing touches
  // them again; the other stages then fail naming this rank.
  auto abandon = [&](const std::string& why) {
    bool pending = !im.sends.empty();
    for (const auto& [k, u] : im.units) pending = pending || u.inputWork || u.gradWork;
    if (pending) pp_->abort(why);
    im.sends.clear();
    im.units.clear();
    im.held = 0;
    restoreLatest(true);
  };
  try {
  postAhead(0);
  for (size_t i = 0; i < actions.size(); ++i) {
    const PipeAction& a = actions[i];
    const Clock::time_point t0 = Clock::now();
    switch (a.op) {
      case PipeOp::kRecvActivation:
      case PipeOp::kRecvGradient: {
        Unit& u = unit(a);
        const bool activation = a.op == PipeOp::kRecvActivation;
        const int vs = s.virtualStage(rank_, a.chunk);
        const int from = activation ? vs - 1 : vs + 1;
        torch::Tensor t;
        if (!activation && !u.output.is_floating_point()) {
          // An integer output has no gradient; its receiver skips the send too.
        } else if (s.rankOf(from) == rank_) {
          auto& q = im.local[{activation ? 0 : 1, from}];
          CHORUS_CHECK(!q.empty(), "a local channel is empty at its receive (the schedule was checked)");
          t = std::move(q.front());
          q.pop_front();
        } else {
          post(a);
          TensorWorkPtr& work = activation ? u.inputWork : u.gradWork;
          t = work->wait();
          work.reset();
          // A fresh receive's tensor becomes a buffer the channel can recycle once released.
          torch::Tensor& buffer = activation ? u.inputBuffer : u.gradBuffer;
          if (!buffer.defined()) buffer = t;
        }
        if (activation) {
          u.input = t.is_floating_point() ? t.detach().requires_grad_(true) : t;
        } else {
          u.gradOut = t;
        }
        span(activation ? PipeSpan::Kind::kWaitActivation : PipeSpan::Kind::kWaitGradient, a.chunk, a.microBatch, t0);
        break;
      }
      case PipeOp::kForward: {
        postAhead(i + 1);
        Unit& u = unit(a);
        const int vs = s.virtualStage(rank_, a.chunk);
        if (vs == 0) {
          u.input = step.input(local(a.microBatch));
          if (!u.input.defined())
            throw InvalidArgument(chorus::str("PipelineExecutor: Step::input(", local(a.microBatch), ") returned no tensor"));
        }
        if (async) {
          ChunkWeights& w = im.weights[static_cast<size_t>(a.chunk)];
          const int64_t current = versions_[static_cast<size_t>(a.chunk)];
          int64_t v = current;
          if (opts_.verticalSync) {
            auto first = im.firstStageVersion.find(a.microBatch);
            CHORUS_CHECK(first != im.firstStageVersion.end(), "the first stage's version of micro-batch ", a.microBatch,
                         " is unknown");
            v = first->second;
            im.firstStageVersion.erase(first);
          }
          if (opts_.weightStashing) {
            if (v == current) w.keep(v);
            CHORUS_CHECK(w.stash.count(v), "weight version ", v, " of micro-batch ", a.microBatch,
                         " was not kept (current ", current, ")");
            w.use(w.stash.at(v));
          } else {
            w.use(w.latest);
          }
          im.forwardVersion[key(a)] = v;
          out.peakWeightVersions = std::max(out.peakWeightVersions, liveVersions(a.chunk));
        }
        torch::Tensor y;
        const bool splits = split.count(key(a)) > 0;
        if (splits) u.store = std::make_shared<WeightGradStore>();
        if (opts_.recompute) {
          // No graph now: the backward builds it again (recomputeForward).
          at::Generator gen = at::detail::getDefaultCPUGenerator();
          {
            std::lock_guard<std::mutex> lock(gen.mutex());
            u.rngState = gen.get_state();
          }
          torch::NoGradGuard noGrad;
          y = step.forward(a.chunk, u.input);
        } else if (splits) {
          WeightGradScope scope(u.store);
          y = step.forward(a.chunk, u.input);
        } else {
          y = step.forward(a.chunk, u.input);
        }
        if (!y.defined())
          throw InvalidArgument(chorus::str("PipelineExecutor: Step::forward(", a.chunk, ", ..) returned no tensor"));
        if (vs == last) {
          std::optional<torch::NoGradGuard> noGrad;
          if (opts_.recompute) noGrad.emplace();
          torch::Tensor loss = step.loss(y, local(a.microBatch));
          if (!loss.defined() || loss.numel() != 1)
            throw InvalidArgument(chorus::str("PipelineExecutor: Step::loss for micro-batch ", local(a.microBatch),
                                              " must return a scalar tensor"));
          u.loss = loss.reshape({});
          out.losses[static_cast<size_t>(local(a.microBatch))] = u.loss.detach().to(torch::kDouble).item<double>();
        }
        u.output = y;
        u.held = true;
        out.peakStored = std::max(out.peakStored, ++im.held);
        span(PipeSpan::Kind::kForward, a.chunk, a.microBatch, t0);
        break;
      }
      case PipeOp::kSendActivation:
      case PipeOp::kSendGradient: {
        Unit& u = unit(a);
        const bool activation = a.op == PipeOp::kSendActivation;
        const int vs = s.virtualStage(rank_, a.chunk);
        const int to = activation ? vs + 1 : vs - 1;
        torch::Tensor t = activation ? u.output.detach() : u.gradIn;
        if (!activation) u.gradIn = torch::Tensor();
        // An integer input has no gradient: the sender of the activation knows the dtype and
        // skips the receive too.
        const bool skip = !activation && !u.input.is_floating_point();
        if (!skip) {
          if (!activation && !t.defined()) t = torch::zeros_like(u.input);
          if (s.rankOf(to) == rank_) {
            im.local[{activation ? 0 : 1, vs}].push_back(t);
          } else {
            im.sends.push_back(im.p2p.sendAsync(t, s.rankOf(to), tagOf(activation ? 0 : 1, vs),
                                                what(activation ? "activation" : "gradient", a)));
          }
        }
        // The input is no longer needed once its gradient has gone (a whole backward); a
        // split one keeps it until W.
        if (!activation && !split.count(key(a))) release(a, u);
        break;
      }
      case PipeOp::kBackward:
      case PipeOp::kBackwardInput: {
        postAhead(i + 1);
        Unit& u = unit(a);
        if (async) {
          ChunkWeights& w = im.weights[static_cast<size_t>(a.chunk)];
          const int64_t forwardV = im.forwardVersion.at(key(a));
          const int64_t v = opts_.weightStashing ? forwardV : versions_[static_cast<size_t>(a.chunk)];
          w.use(opts_.weightStashing ? w.stash.at(v) : w.latest);
          out.weightUses.push_back({a.chunk, a.microBatch, forwardV, v});
          backward(a, u, a.op == PipeOp::kBackwardInput);
          im.forwardVersion.erase(key(a));
          prune(a.chunk);
        } else {
          backward(a, u, a.op == PipeOp::kBackwardInput);
        }
        const int vs = s.virtualStage(rank_, a.chunk);
        // The first virtual stage sends no gradient: its state goes now (whole backward).
        if (vs == 0 && a.op == PipeOp::kBackward) release(a, u);
        span(a.op == PipeOp::kBackward ? PipeSpan::Kind::kBackward : PipeSpan::Kind::kBackwardInput, a.chunk,
             a.microBatch, t0);
        break;
      }
      case PipeOp::kBackwardWeight: {
        postAhead(i + 1);
        Unit& u = unit(a);
        if (u.store) u.store->flush();
        release(a, u);
        span(PipeSpan::Kind::kBackwardWeight, a.chunk, a.microBatch, t0);
        break;
      }
      case PipeOp::kWeightUpdate: {
        ChunkWeights& w = im.weights[static_cast<size_t>(a.chunk)];
        int64_t& current = versions_[static_cast<size_t>(a.chunk)];
        // Vertical sync: a later forward may still need the version about to be replaced.
        if (opts_.verticalSync) {
          for (const auto& [mb, v] : im.firstStageVersion)
            if (v == current) w.keep(current);
        }
        w.update(step.update, a.chunk);
        ++current;
        prune(a.chunk);
        out.peakWeightVersions = std::max(out.peakWeightVersions, liveVersions(a.chunk));
        span(PipeSpan::Kind::kStep, a.chunk, a.microBatch, t0);
        break;
      }
      case PipeOp::kOptimizerStep: {
        // Pending sends carry activations and input gradients, not weights: the step need not
        // wait for them.
        if (step.optimizerStep) step.optimizerStep();
        span(PipeSpan::Kind::kStep, -1, -1, t0);
        break;
      }
    }
  }
  restoreLatest(ends);
  if (ends) {
    const Clock::time_point w0 = Clock::now();
    for (auto& w : im.sends) w->wait();
    im.sends.clear();
    if (opts_.recordSpans && !out.spans.empty()) span(PipeSpan::Kind::kWaitSend, -1, -1, w0);
    CHORUS_CHECK(im.units.empty() && im.held == 0, "micro-batches left in flight at the end of the run");
  } else {
    // A stream does not wait for its sends: the last gradients of a segment are received in
    // the next one. Those finished are dropped, so the list stays short.
    std::erase_if(im.sends, [](const TensorWorkPtr& w) { return w->test(); });
  }
  } catch (const std::exception& e) {
    abandon(chorus::str("pipeline stage ", rank_, " failed mid-schedule (", e.what(), ")"));
    throw;
  } catch (...) {
    abandon(chorus::str("pipeline stage ", rank_, " failed mid-schedule"));
    throw;
  }
  return out;
}

}  // namespace chorus::parallel
