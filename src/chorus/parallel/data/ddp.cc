// DistributedDataParallel's core: buckets, gradient hooks, the end-of-backward callback, the
// construction-time checks and broadcasts, and join() for uneven inputs. See ddp.h.
#include "chorus/parallel/data/ddp.h"

#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>

#include <algorithm>
#include <limits>
#include <mutex>
#include <sstream>
#include <unordered_set>

#include "chorus/common/error.h"
#include "chorus/common/logging.h"
#include "chorus/parallel/tensor_view.h"

namespace chorus::parallel::detail {

using Clock = std::chrono::steady_clock;

struct DDPCore::Param {
  std::string name;
  torch::Tensor tensor;
  size_t bucket = 0;
  int64_t offset = 0;  // elements into the bucket's buffer
  std::shared_ptr<torch::autograd::Node> accumulator;
  uintptr_t hookKey = 0;
  bool ready = false;
};

struct DDPCore::Bucket {
  GradBucket grad;
  std::vector<size_t> params;
  size_t pending = 0;  // parameters not yet ready in this backward pass
  std::unique_ptr<HookWork> work;
};

namespace {

std::string shapeOf(const torch::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

// A tensor sharing `flat`'s storage at `offset` with `like`'s shape. Not an autograd view, so
// optimizers may detach_() and zero_() it (Optimizer::zero_grad does).
torch::Tensor aliasInto(const torch::Tensor& flat, int64_t offset, const torch::Tensor& like) {
  torch::NoGradGuard noGrad;
  return torch::empty({0}, flat.options())
      .set_(flat.storage(), flat.storage_offset() + offset, like.sizes(), c10::contiguous_strides(like.sizes()));
}

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Broadcasts tensors from root, one flat message per dtype.
void broadcastTensors(comm::ProcessGroup& group, const std::vector<torch::Tensor>& tensors, int root) {
  if (group.size() == 1 || tensors.empty()) return;
  torch::NoGradGuard noGrad;
  std::vector<at::ScalarType> types;
  for (const auto& t : tensors) {
    if (std::find(types.begin(), types.end(), t.scalar_type()) == types.end()) types.push_back(t.scalar_type());
  }
  for (auto type : types) {
    std::vector<torch::Tensor> same;
    for (const auto& t : tensors) {
      if (t.scalar_type() == type) same.push_back(t.reshape({-1}));
    }
    torch::Tensor flat = torch::cat(same).contiguous();
    BufferView v = viewOf(flat);
    comm::BroadcastOptions o;
    o.data = v.data;
    o.count = v.count;
    o.dtype = v.dtype;
    o.root = root;
    group.broadcast(o);
    int64_t off = 0;
    for (const auto& t : tensors) {
      if (t.scalar_type() != type) continue;
      t.copy_(flat.narrow(0, off, t.numel()).view(t.sizes()));
      off += t.numel();
    }
  }
}

}  // namespace

DDPCore::DDPCore(torch::nn::Module& module, std::shared_ptr<comm::ProcessGroup> group, DDPOptions opts)
    : module_(module), group_(std::move(group)), opts_(std::move(opts)) {
  if (!group_) throw InvalidArgument("DistributedDataParallel needs a process group (got nullptr)");
  if (opts_.bucketCapBytes == 0 || opts_.firstBucketCapBytes == 0) {
    throw InvalidArgument("DDPOptions::bucketCapBytes and firstBucketCapBytes must be > 0");
  }
  if (!opts_.hook) opts_.hook = allreduceHook(group_->defaultAlgo());

  for (auto& item : module_.named_parameters(/*recurse=*/true)) {
    if (!item.value().requires_grad()) continue;
    if (!item.value().device().is_cpu()) {
      throw InvalidArgument(str("DistributedDataParallel: parameter '", item.key(),
                                "' is on ", item.value().device().str(), "; chorus DDP reduces host memory, so keep the "
                                "model on the CPU"));
    }
    auto p = std::make_unique<Param>();
    p->name = item.key();
    p->tensor = item.value();
    params_.push_back(std::move(p));
  }
  for (auto& b : module_.named_buffers(/*recurse=*/true)) buffers_.push_back(b.value());
  checkSameModel();
  broadcastState(/*root=*/0, /*params=*/true, /*buffers=*/true);

  // Buckets start in reverse registration order; after the second synchronized backward pass
  // they are rebuilt from the order and the times the gradients actually became ready.
  std::vector<size_t> reverse(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) reverse[i] = params_.size() - 1 - i;
  applyLayout(packLayout(reverse, {}));
  readyAt_.assign(params_.size(), Clock::time_point{});
  rebuild_ = opts_.rebuildBuckets && !opts_.unevenInputs;

  for (size_t i = 0; i < params_.size(); ++i) {
    Param& p = *params_[i];
    p.accumulator = torch::autograd::impl::grad_accumulator(p.tensor);
    p.hookKey = p.accumulator->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
        [this, i](const torch::autograd::variable_list& outputs, const torch::autograd::variable_list&) {
          onGradReady(i);
          return outputs;
        }));
  }
}

DDPCore::~DDPCore() {
  abandonBackward();  // collectives still in flight write into our buckets
  for (auto& p : params_) {
    if (p->accumulator) p->accumulator->del_post_hook(p->hookKey);
  }
}

// Packs parameters, in `order`, into buckets: one open bucket per dtype, closed when the next
// parameter would pass the cap (a parameter larger than the cap gets its own). With ready
// times, a bucket also closes where the next gradient comes later than the bucket's estimated
// all-reduce would take, so what is ready goes out instead of waiting.
std::vector<std::vector<size_t>> DDPCore::packLayout(const std::vector<size_t>& order,
                                                     const std::vector<Clock::time_point>& readyAt) const {
  constexpr double kLatency = 20e-6, kBytesPerSecond = 2e9;  // conservative for shm under load
  std::vector<std::pair<at::ScalarType, std::vector<size_t>>> open;  // dtype -> params
  std::vector<size_t> openBytes;
  std::vector<std::vector<size_t>> layout;
  for (size_t n = 0; n < order.size(); ++n) {
    const size_t i = order[n];
    const auto& t = params_[i]->tensor;
    size_t bytes = static_cast<size_t>(t.numel()) * t.element_size();
    size_t k = 0;
    while (k < open.size() && open[k].first != t.scalar_type()) ++k;
    if (k == open.size()) {
      open.push_back({t.scalar_type(), {}});
      openBytes.push_back(0);
    }
    const size_t cap = layout.empty() ? std::min(opts_.firstBucketCapBytes, opts_.bucketCapBytes) : opts_.bucketCapBytes;
    bool close = !open[k].second.empty() && openBytes[k] + bytes > cap;
    if (!close && !open[k].second.empty() && !readyAt.empty()) {
      double gap = seconds(readyAt[i] - readyAt[open[k].second.back()]);
      close = gap > kLatency + static_cast<double>(openBytes[k]) / kBytesPerSecond;
    }
    if (close) {
      layout.push_back(std::move(open[k].second));
      open[k].second.clear();
      openBytes[k] = 0;
    }
    open[k].second.push_back(i);
    openBytes[k] += bytes;
  }
  for (auto& o : open) {
    if (!o.second.empty()) layout.push_back(std::move(o.second));
  }
  return layout;
}

// Makes the buckets of `layout` (lists of parameter indices), moving each gradient's current
// value into its new place.
void DDPCore::applyLayout(const std::vector<std::vector<size_t>>& layout) {
  std::vector<std::unique_ptr<Bucket>> buckets;
  for (size_t bi = 0; bi < layout.size(); ++bi) {
    auto b = std::make_unique<Bucket>();
    int64_t total = 0;
    for (size_t pi : layout[bi]) total += params_[pi]->tensor.numel();
    b->grad.index = bi;
    b->grad.isLast = bi + 1 == layout.size();
    b->grad.buffer = torch::zeros({total}, params_[layout[bi][0]]->tensor.options().requires_grad(false));
    int64_t off = 0;
    for (size_t pi : layout[bi]) {
      Param& p = *params_[pi];
      p.bucket = bi;
      p.offset = off;
      off += p.tensor.numel();
      b->grad.names.push_back(p.name);
      b->grad.shapes.push_back(p.tensor.sizes().vec());
      b->grad.offsets.push_back(p.offset);
      installGradView(p, b->grad.buffer);
    }
    b->params = layout[bi];
    buckets.push_back(std::move(b));
  }
  buckets_ = std::move(buckets);
}

// After the second synchronized pass: rank 0's ready order and times decide the layout, and
// every rank takes it (flattened as {buckets, size0, params of 0..., size1, ...}).
void DDPCore::rebuildBuckets() {
  rebuild_ = false;
  std::vector<size_t> order(params_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  // Ready order; parameters that got no gradient go last, in reverse registration order.
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    bool ra = readyAt_[a] != Clock::time_point{}, rb = readyAt_[b] != Clock::time_point{};
    if (ra != rb) return ra;
    if (ra) return readyAt_[a] < readyAt_[b];
    return a > b;
  });
  std::vector<std::vector<size_t>> layout = packLayout(order, readyAt_);
  std::vector<int64_t> flat(1 + 2 * params_.size(), 0);
  size_t n = 0;
  flat[n++] = static_cast<int64_t>(layout.size());
  for (const auto& b : layout) {
    flat[n++] = static_cast<int64_t>(b.size());
    for (size_t i : b) flat[n++] = static_cast<int64_t>(i);
  }
  if (group_->size() > 1) {
    comm::BroadcastOptions o;
    o.data = flat.data();
    o.count = flat.size();
    o.dtype = DType::kInt64;
    group_->broadcast(o);
  }
  layout.assign(static_cast<size_t>(flat[0]), {});
  n = 1;
  for (auto& b : layout) {
    b.resize(static_cast<size_t>(flat[n++]));
    for (auto& i : b) i = static_cast<size_t>(flat[n++]);
  }
  applyLayout(layout);
}

// Rank 0 sends its parameter list (names and shapes); each rank compares, and all agree on
// the first index that differs anywhere, so every rank throws the same error.
void DDPCore::checkSameModel() {
  if (group_->size() == 1) return;
  std::string mine;
  for (auto& p : module_.named_parameters(true)) {
    mine += str(p.key(), ' ', shapeOf(p.value()), ' ', c10::toString(p.value().scalar_type()),
                p.value().requires_grad() ? "" : " frozen", '\n');
  }
  for (auto& b : module_.named_buffers(true)) {
    mine += str(b.key(), ' ', shapeOf(b.value()), ' ', c10::toString(b.value().scalar_type()), " buffer\n");
  }
  uint64_t len = mine.size();
  comm::BroadcastOptions lo;
  lo.data = &len;
  lo.count = 1;
  lo.dtype = DType::kInt64;
  group_->broadcast(lo);
  std::string root(len, '\0');
  if (group_->rank() == 0) root = mine;
  comm::BroadcastOptions so;
  so.data = root.data();
  so.count = len;
  so.dtype = DType::kUInt8;
  group_->broadcast(so);

  auto lines = [](const std::string& s) {
    std::vector<std::string> v;
    std::istringstream in(s);
    for (std::string l; std::getline(in, l);) v.push_back(l);
    return v;
  };
  std::vector<std::string> a = lines(root), b = lines(mine);
  int64_t first = std::numeric_limits<int64_t>::max();
  for (size_t i = 0; i < std::max(a.size(), b.size()); ++i) {
    if (i >= a.size() || i >= b.size() || a[i] != b[i]) {
      first = static_cast<int64_t>(i);
      break;
    }
  }
  int64_t agreed = first;
  comm::AllreduceOptions ro;
  ro.data = &agreed;
  ro.count = 1;
  ro.dtype = DType::kInt64;
  ro.op = ReduceOp::kMin;
  group_->allreduce(ro);
  if (agreed == std::numeric_limits<int64_t>::max()) return;
  auto at = [&](const std::vector<std::string>& v) {
    return agreed < static_cast<int64_t>(v.size()) ? "'" + v[agreed] + "'" : std::string("(no parameter)");
  };
  if (first == agreed) {
    throw MismatchError(str("DistributedDataParallel: rank ", group_->rank(), "'s parameter #", agreed, " is ", at(b),
                            " but rank 0's is ", at(a),
                            " (name shape dtype); every rank must build the same model before wrapping it"));
  }
  throw MismatchError(str("DistributedDataParallel: another rank's parameter #", agreed, " differs from rank 0's ",
                          at(a), " (name shape dtype); every rank must build the same model before wrapping it"));
}

void DDPCore::broadcastState(int root, bool params, bool buffers) {
  std::vector<torch::Tensor> ts;
  if (params) {
    for (const auto& p : params_) ts.push_back(p->tensor);
  }
  if (buffers) ts.insert(ts.end(), buffers_.begin(), buffers_.end());
  // Parameters that need no gradient are part of the model too.
  if (params) {
    for (auto& item : module_.named_parameters(true)) {
      if (!item.value().requires_grad()) ts.push_back(item.value());
    }
  }
  broadcastTensors(*group_, ts, root);
}

// Points p's .grad() into its bucket, keeping what it held (accumulated gradients).
void DDPCore::installGradView(Param& p, const torch::Tensor& flat) {
  torch::NoGradGuard noGrad;
  torch::Tensor view = aliasInto(flat, p.offset, p.tensor);
  const torch::Tensor& g = p.tensor.grad();
  if (g.defined()) {
    view.copy_(g);
  } else {
    view.zero_();
  }
  p.tensor.mutable_grad() = view;
}

bool DDPCore::gradIsView(const Param& p) const {
  const torch::Tensor& g = p.tensor.grad();
  const torch::Tensor& flat = buckets_[p.bucket]->grad.buffer;
  return g.defined() && g.data_ptr() == static_cast<char*>(flat.data_ptr()) + p.offset * flat.element_size() &&
         g.sizes() == p.tensor.sizes() && g.is_contiguous();
}

void DDPCore::beforeForward(bool training) {
  if (inBackward_) abandonBackward();
  for (auto& p : params_) {
    if (!gradIsView(*p)) installGradView(*p, buckets_[p->bucket]->grad.buffer);
  }
  if (!training) return;
  int root = opts_.unevenInputs ? presence(/*active=*/true) : 0;  // ranks that joined no longer lead
  if (opts_.broadcastBuffers) broadcastState(root, /*params=*/false, /*buffers=*/true);
}

// Walks the autograd graph from the outputs; parameters whose accumulator it never reaches
// get no gradient in this backward pass.
void DDPCore::afterForward(const std::vector<torch::Tensor>& outputs) {
  unused_.clear();
  if (!opts_.findUnusedParameters) return;
  std::unordered_set<torch::autograd::Node*> seen;
  std::vector<torch::autograd::Node*> stack;
  for (const auto& t : outputs) {
    if (t.defined() && t.grad_fn()) stack.push_back(t.grad_fn().get());
  }
  if (stack.empty()) {
    // A result DDP cannot look into (a struct, a pair): count nothing unused rather than
    // everything; buckets of parameters that get no gradient then start after the pass.
    if (!warnedOpaque_) {
      warnedOpaque_ = true;
      CHORUS_WARN("DistributedDataParallel: findUnusedParameters found no tensor with a gradient function in "
                  "the forward's result (a tensor, a vector of tensors or a tuple is searched); parameters "
                  "without a gradient are handled after the backward pass instead");
    }
    return;
  }
  while (!stack.empty()) {
    torch::autograd::Node* n = stack.back();
    stack.pop_back();
    if (!seen.insert(n).second) continue;
    for (const auto& e : n->next_edges()) {
      if (e.function) stack.push_back(e.function.get());
    }
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!seen.count(params_[i]->accumulator.get())) unused_.push_back(i);
  }
}

void DDPCore::onGradReady(size_t index) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!sync_) return;  // noSync: gradients only accumulate in the buckets
  if (!inBackward_) startBackward();
  Param& p = *params_[index];
  if (!gradIsView(p)) installGradView(p, buckets_[p.bucket]->grad.buffer);  // autograd replaced it
  if (rebuild_ && stats_.syncs == 1) readyAt_[index] = Clock::now();
  if (p.ready) {
    // Counted unused after the forward (its bucket may be on the wire already), yet autograd
    // produced a gradient: it was used outside ddp.forward (a regularizer on the weights).
    throw Error(str("DistributedDataParallel: parameter '", p.name, "' got a gradient in this backward pass but "
                    "was not reached from ddp.forward's outputs, so findUnusedParameters had counted it "
                    "unused and its bucket may already be reduced. Compute everything that uses the "
                    "parameters inside the module's forward, or turn findUnusedParameters off"));
  }
  markReady(p);
  launchReadyBuckets();
}

void DDPCore::startBackward() {
  inBackward_ = true;
  stats_.backwardStart = Clock::now();
  nextBucket_ = 0;
  for (auto& p : params_) p->ready = false;
  for (auto& b : buckets_) {
    b->pending = b->params.size();
    b->work.reset();
  }
  for (size_t i : unused_) markReady(*params_[i]);
  unused_.clear();
  torch::autograd::Engine::get_default_engine().queue_callback([this] { finishBackward(); });
}

void DDPCore::markReady(Param& p) {
  if (p.ready) return;
  p.ready = true;
  --buckets_[p.bucket]->pending;
}

// Buckets start strictly in order, so every rank issues the same collectives in the same order.
void DDPCore::launchReadyBuckets() {
  while (nextBucket_ < buckets_.size() && buckets_[nextBucket_]->pending == 0) launch(*buckets_[nextBucket_++]);
}

void DDPCore::launch(Bucket& b) { b.work = opts_.hook->start(*group_, b.grad); }

void DDPCore::finishBackward() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.backwardEnd = Clock::now();
  if (nextBucket_ < buckets_.size()) {
    std::vector<std::string> missing;
    for (auto& p : params_) {
      if (!p->ready) missing.push_back(p->name);
    }
    if (!warnedLate_ && !missing.empty()) {
      warnedLate_ = true;
      CHORUS_WARN("DistributedDataParallel: ", missing.size(), " parameter(s) got no gradient in this backward pass (first: '",
                  missing[0], "'); their buckets were reduced after it ended, without overlap. Set "
                  "findUnusedParameters (ddp.find_unused) to start them during the pass");
    }
    while (nextBucket_ < buckets_.size()) launch(*buckets_[nextBucket_++]);
  }
  inBackward_ = false;
  stats_.spans.clear();
  stats_.commSeconds = stats_.overlapSeconds = 0;
  stats_.bytesReduced = 0;
  for (auto& b : buckets_) {
    try {
      b->work->wait();
    } catch (...) {
      abandonBackward();  // the later buckets' collectives still hold our buffers
      throw;
    }
    stats_.bytesReduced += static_cast<uint64_t>(b->grad.buffer.numel()) * b->grad.buffer.element_size();
    Clock::time_point start = Clock::time_point::max(), end = Clock::time_point::min();
    for (const auto& w : b->work->works()) {
      auto t = w->timing();
      if (t.finished == Clock::time_point{}) continue;
      start = std::min(start, t.started);
      end = std::max(end, t.finished);
    }
    b->work.reset();
    if (start == Clock::time_point::max()) continue;
    stats_.spans.push_back({b->grad.index, start, end});
    stats_.commSeconds += seconds(end - start);
    auto lo = std::max(start, stats_.backwardStart), hi = std::min(end, stats_.backwardEnd);
    if (hi > lo) stats_.overlapSeconds += seconds(hi - lo);
  }
  stats_.waitSeconds = seconds(Clock::now() - stats_.backwardEnd);
  ++stats_.syncs;
  if (rebuild_ && stats_.syncs == 2) rebuildBuckets();
}

// A backward pass that never reached its end (an exception in the middle): let the started
// collectives finish, since their buffers are ours, and forget the pass.
void DDPCore::abandonBackward() {
  for (auto& b : buckets_) {
    if (!b->work) continue;
    try {
      b->work->wait();
    } catch (...) {
    }
    b->work.reset();
  }
  inBackward_ = false;
}

// Uneven inputs, one all-reduce (min) per training forward: the lowest rank still stepping
// (size() when none is), and 0 when any of them syncs gradients this step.
int DDPCore::presence(bool active) {
  int64_t v[2] = {active ? group_->rank() : group_->size(), active && sync_ ? 0 : 1};
  comm::AllreduceOptions o;
  o.data = v;
  o.count = 2;
  o.dtype = DType::kInt64;
  o.op = ReduceOp::kMin;
  group_->allreduce(o);
  lastSyncing_ = v[1] == 0 ? 1 : 0;
  return static_cast<int>(v[0]);
}

void DDPCore::join() {
  if (!opts_.unevenInputs) {
    throw InvalidArgument("DistributedDataParallel::join() needs DDPOptions::unevenInputs = true on every rank");
  }
  if (inBackward_) abandonBackward();
  // Shadow the steps the other ranks still run: their presence all-reduce, buffer broadcast
  // and (when they sync) every bucket, with zero gradients from this rank.
  for (int root; (root = presence(/*active=*/false)) < group_->size();) {
    if (opts_.broadcastBuffers) broadcastState(root, false, true);
    if (lastSyncing_ == 0) continue;
    for (auto& b : buckets_) {
      b->grad.buffer.zero_();
      auto w = opts_.hook->start(*group_, b->grad);
      w->wait();
    }
  }
  for (auto& b : buckets_) b->grad.buffer.zero_();
  // Everyone has joined: the rank that synced the most steps (ties: the highest rank) has the
  // weights the optimizer produced last; it sends them to all.
  int64_t key = (stats_.syncs << 20) | group_->rank();
  comm::AllreduceOptions o;
  o.data = &key;
  o.count = 1;
  o.dtype = DType::kInt64;
  o.op = ReduceOp::kMax;
  group_->allreduce(o);
  broadcastState(static_cast<int>(key & ((1 << 20) - 1)), true, true);
}

std::vector<std::vector<std::string>> DDPCore::bucketNames() const {
  std::vector<std::vector<std::string>> v;
  for (const auto& b : buckets_) v.push_back(b->grad.names);
  return v;
}

}  // namespace chorus::parallel::detail
