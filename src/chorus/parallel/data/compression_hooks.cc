#include "chorus/parallel/data/compression_hooks.h"

#include <condition_variable>
#include <deque>
#include <functional>
#include <thread>

#include "chorus/common/error.h"
#include "chorus/compress/compressed_allreduce.h"
#include "chorus/parallel/compress_adapter.h"
#include "chorus/parallel/tensor_view.h"

namespace chorus::parallel {
namespace {

using Clock = std::chrono::steady_clock;

// One queued bucket: a comm::Work, so DDP's statistics see when it ran.
class Job : public comm::Work {
 public:
  std::function<void()> fn;
  void run() {
    {
      std::lock_guard<std::mutex> l(mu_);
      timing_.started = Clock::now();
    }
    std::exception_ptr e;
    try {
      fn();
    } catch (...) {
      e = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      timing_.finished = Clock::now();
      error_ = e;
      done_ = true;
    }
    cv_.notify_all();
  }
  bool test() override {
    std::lock_guard<std::mutex> l(mu_);
    if (done_ && error_) std::rethrow_exception(error_);
    return done_;
  }
  void wait() override {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return done_; });  // each collective inside has its own timeout
    if (error_) std::rethrow_exception(error_);
  }
  Timing timing() const override {
    std::lock_guard<std::mutex> l(mu_);
    return timing_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
  Timing timing_;
};

// Runs jobs one at a time in queue order on its own thread.
class SerialRunner {
 public:
  ~SerialRunner() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  std::shared_ptr<Job> submit(std::function<void()> fn) {
    auto job = std::make_shared<Job>();
    job->fn = std::move(fn);
    {
      std::lock_guard<std::mutex> l(mu_);
      queue_.push_back(job);
      if (!thread_.joinable()) thread_ = std::thread([this] { loop(); });
    }
    cv_.notify_all();
    return job;
  }

 private:
  void loop() {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        job = queue_.front();
        queue_.pop_front();
      }
      job->run();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool stop_ = false;
  std::thread thread_;
};

class JobWork : public HookWork {
 public:
  explicit JobWork(std::shared_ptr<Job> j) : job_(std::move(j)) {}
  void wait() override { job_->wait(); }
  std::vector<comm::WorkPtr> works() const override { return {job_}; }

 private:
  std::shared_ptr<Job> job_;
};

uint64_t mix(uint64_t a, uint64_t b) { return (a ^ (b + 0x9E3779B97F4A7C15ull + (a << 6) + (a >> 2))) * 0xBF58476D1CE4E5B9ull; }

void allreduceAvg(comm::ProcessGroup& g, torch::Tensor& t) {
  if (g.size() == 1 || t.numel() == 0) return;
  BufferView v = viewOf(t);
  comm::AllreduceOptions o;
  o.data = v.data;
  o.count = v.count;
  o.dtype = v.dtype;
  o.op = ReduceOp::kAvg;
  g.allreduce(o);
}

// True while the bucket is in its dense warm-up; counts the call.
bool denseWarmup(compress::CodecState& st, int64_t denseSteps) {
  double& calls = st.scalars["calls"];
  calls += 1;
  return calls <= static_cast<double>(denseSteps);
}

class CodecHook : public StatefulHook {
 public:
  CodecHook(std::shared_ptr<compress::Codec> codec, uint64_t seed, int64_t denseSteps, CompressionScope scope)
      : StatefulHook(scope), codec_(std::move(codec)), seed_(seed), denseSteps_(denseSteps) {
    if (!codec_) throw InvalidArgument("codecHook: codec is nullptr");
  }
  std::unique_ptr<HookWork> start(comm::ProcessGroup& group, GradBucket& bucket) override {
    bool fresh = false;
    compress::CodecState* st = &stateOf(bucket.index, &fresh);
    if (fresh) st->rngState = codecRngSeed(seed_, bucket.index, group.rank());
    // Where each parameter ends in the bucket, for the layer-wise codecs. The bucket's previous
    // job has finished: DDP waits for every bucket before the next backward starts.
    st->segments.clear();
    for (size_t i = 0; i < bucket.offsets.size(); ++i) {
      int64_t numel = 1;
      for (int64_t d : bucket.shapes[i]) numel *= d;
      st->segments.push_back(bucket.offsets[i] + numel);
    }
    if (!st->segments.empty() && st->segments.back() != bucket.buffer.numel()) st->segments.clear();
    torch::Tensor buffer = bucket.buffer;
    comm::ProcessGroup* g = &group;
    return std::make_unique<JobWork>(runner_.submit([this, g, buffer, st]() mutable {
      compress::CompressedResult r;
      if (denseWarmup(*st, denseSteps_)) {
        allreduceAvg(*g, buffer);
        r.messageBytes = r.denseBytes = static_cast<uint64_t>(buffer.numel()) * 4;
      } else if (!averageAcrossHosts(*g, buffer, [&](comm::ProcessGroup& across, torch::Tensor& b) {
                   r = compress::compressedAllreduce(across, *codec_, mutableFloatSpan(b, "codecHook"), *st);
                 })) {
        r.messageBytes = 0;  // this host's first rank sent its message across
        r.denseBytes = static_cast<uint64_t>(buffer.numel()) * 4;
      }
      recordBytes(r.messageBytes, r.denseBytes);
    }));
  }
  std::string name() const override { return codec_->name(); }

 private:
  std::shared_ptr<compress::Codec> codec_;
  uint64_t seed_;
  int64_t denseSteps_;
  SerialRunner runner_;  // joined before the base class's states go
};

class PowerSgdHook : public StatefulHook {
 public:
  PowerSgdHook(int64_t rank, uint64_t seed, int64_t denseSteps, CompressionScope scope)
      : StatefulHook(scope), rank_(rank), seed_(seed), denseSteps_(denseSteps) {
    if (rank < 1) throw InvalidArgument(str("powerSgdHook: rank must be >= 1, not ", rank));
  }
  std::unique_ptr<HookWork> start(comm::ProcessGroup& group, GradBucket& bucket) override {
    compress::CodecState* st = &stateOf(bucket.index);
    comm::ProcessGroup* g = &group;
    GradBucket b = bucket;  // tensors are shared; names and shapes copied
    return std::make_unique<JobWork>(runner_.submit([this, g, b, st] {
      torch::NoGradGuard noGrad;
      if (denseWarmup(*st, denseSteps_)) {
        torch::Tensor all = b.buffer;
        allreduceAvg(*g, all);
        recordBytes(static_cast<uint64_t>(all.numel()) * 4, static_cast<uint64_t>(all.numel()) * 4);
        return;
      }
      torch::Tensor buf = b.buffer;
      if (!averageAcrossHosts(*g, buf, [&](comm::ProcessGroup& across, torch::Tensor&) { reduce(across, b, *st); })) {
        recordBytes(0, static_cast<uint64_t>(buf.numel()) * 4);  // this host's first rank sent the factors
      }
    }));
  }
  std::string name() const override { return str("powersgd-", rank_); }

 private:
  // PowerSGD of bucket b over g (the whole group, or the hosts' first ranks).
  void reduce(comm::ProcessGroup& g, const GradBucket& b, compress::CodecState& st) {
    const torch::Tensor& buf = b.buffer;
    struct Mat {
      torch::Tensor view, res, m, p, q;  // view: the gradient as n x m inside the buffer
    };
    std::vector<Mat> mats;
    std::vector<torch::Tensor> dense;
    for (size_t i = 0; i < b.shapes.size(); ++i) {
      const auto& shape = b.shapes[i];
      int64_t numel = 1;
      for (auto d : shape) numel *= d;
      torch::Tensor flat = buf.narrow(0, b.offsets[i], numel);
      int64_t n = shape.empty() ? 1 : shape[0], m = n == 0 ? 0 : numel / n;
      // Worth it only where rank*(n+m) is well below n*m.
      if (shape.size() < 2 || rank_ * (n + m) * 2 > n * m) {
        dense.push_back(flat);
        continue;
      }
      Mat mat;
      mat.view = flat.view({n, m});
      // The state's float32 buffers, viewed as matrices (the views share their storage).
      torch::Tensor res = bufferOf(st, str("residual.", i), {n, m});
      const std::string qName = str("q.", i);
      auto qIt = st.buffers.find(qName);
      const bool haveQ = qIt != st.buffers.end() && qIt->second.size() == static_cast<size_t>(m * rank_);
      torch::Tensor q = bufferOf(st, qName, {m, rank_});
      if (!haveQ) {
        auto gen = at::detail::createCPUGenerator(mix(seed_, mix(b.index, i)));
        q.copy_(torch::randn({m, rank_}, gen, buf.options()));  // the same on every rank
      }
      mat.res = res;
      mat.m = mat.view + res;
      mat.q = q;
      mats.push_back(mat);
    }
    uint64_t bytes = 0;
    // P = M Q for every matrix, all-reduced together.
    if (!mats.empty()) {
      std::vector<torch::Tensor> ps;
      for (auto& mt : mats) ps.push_back(torch::matmul(mt.m, mt.q).reshape({-1}));
      torch::Tensor pAll = torch::cat(ps);
      bytes += static_cast<uint64_t>(pAll.numel()) * 4;
      allreduceAvg(g, pAll);
      int64_t off = 0;
      std::vector<torch::Tensor> qs;
      for (auto& mt : mats) {
        int64_t n = mt.m.size(0);
        torch::Tensor p = pAll.narrow(0, off, n * rank_).view({n, rank_});
        off += n * rank_;
        mt.p = std::get<0>(at::linalg_qr(p));  // orthonormal columns
        qs.push_back(torch::matmul(mt.m.t(), mt.p).reshape({-1}));
      }
      torch::Tensor qAll = torch::cat(qs);
      bytes += static_cast<uint64_t>(qAll.numel()) * 4;
      allreduceAvg(g, qAll);
      off = 0;
      for (size_t k = 0; k < mats.size(); ++k) {
        auto& mt = mats[k];
        int64_t m = mt.m.size(1);
        torch::Tensor q = qAll.narrow(0, off, m * rank_).view({m, rank_});
        off += m * rank_;
        mt.q.copy_(q);  // warm start for the next step
        torch::Tensor approx = torch::matmul(mt.p, q.t());
        mt.res.copy_(mt.m - approx);  // error feedback: what the approximation missed
        mt.view.copy_(approx);
      }
    }
    if (!dense.empty()) {
      torch::Tensor d = torch::cat(dense);
      bytes += static_cast<uint64_t>(d.numel()) * 4;
      allreduceAvg(g, d);
      int64_t off = 0;
      for (auto& t : dense) {
        t.copy_(d.narrow(0, off, t.numel()));
        off += t.numel();
      }
    }
    recordBytes(bytes, static_cast<uint64_t>(buf.numel()) * 4);
  }

  int64_t rank_;
  uint64_t seed_;
  int64_t denseSteps_;
  SerialRunner runner_;  // joined before the base class's states go
};

}  // namespace

compress::CodecState& StatefulHook::stateOf(size_t index, bool* fresh) {
  std::lock_guard<std::mutex> l(mu_);
  auto [it, inserted] = states_.try_emplace(index);
  if (fresh) *fresh = inserted;
  return it->second;
}

void StatefulHook::recordBytes(uint64_t message, uint64_t dense) {
  std::lock_guard<std::mutex> l(mu_);
  messageBytes_ = message;
  denseBytes_ = dense;
}

uint64_t StatefulHook::lastMessageBytes() const {
  std::lock_guard<std::mutex> l(mu_);
  return messageBytes_;
}

uint64_t StatefulHook::lastDenseBytes() const {
  std::lock_guard<std::mutex> l(mu_);
  return denseBytes_;
}

bool StatefulHook::averageAcrossHosts(comm::ProcessGroup& g, torch::Tensor& buffer,
                                      const std::function<void(comm::ProcessGroup&, torch::Tensor&)>& compressed) {
  if (scope_ == CompressionScope::kAll || !g.links().hierarchical()) {
    compressed(g, buffer);
    return true;
  }
  auto it = tiers_.find(&g);
  if (it == tiers_.end()) {
    const int host = g.hostOf(g.rank());
    bool first = true;
    for (int r = 0; r < g.rank(); ++r) first = first && g.hostOf(r) != host;
    Tiers t;
    t.host = g.split(host, g.rank());
    t.leaders = g.split(first ? 0 : -1, g.rank());
    it = tiers_.emplace(&g, std::move(t)).first;
  }
  const Tiers& t = it->second;
  BufferView v = viewOf(buffer);
  comm::ReduceOptions sum;
  sum.data = v.data;
  sum.count = v.count;
  sum.dtype = v.dtype;
  sum.op = ReduceOp::kSum;
  sum.root = 0;
  t.host->reduce(sum);
  if (t.leaders) {
    compressed(*t.leaders, buffer);  // the hosts' average of their sums
    buffer.mul_(static_cast<double>(t.leaders->size()) / static_cast<double>(g.size()));
  }
  comm::BroadcastOptions out;
  out.data = v.data;
  out.count = v.count;
  out.dtype = v.dtype;
  out.root = 0;
  t.host->broadcast(out);
  return t.leaders != nullptr;
}

uint64_t codecRngSeed(uint64_t seed, size_t bucket, int rank) {
  return mix(mix(seed, bucket), static_cast<uint64_t>(rank));
}

CompressionScope parseCompressionScope(const std::string& name) {
  if (name == "all") return CompressionScope::kAll;
  if (name == "inter-host") return CompressionScope::kInterHost;
  throw InvalidArgument(str("unknown compression scope '", name, "'; use all or inter-host"));
}

std::shared_ptr<StatefulHook> codecHook(std::shared_ptr<compress::Codec> codec, uint64_t seed, int64_t denseSteps,
                                        CompressionScope scope) {
  return std::make_shared<CodecHook>(std::move(codec), seed, denseSteps, scope);
}

std::shared_ptr<StatefulHook> powerSgdHook(int64_t rank, uint64_t seed, int64_t denseSteps, CompressionScope scope) {
  return std::make_shared<PowerSgdHook>(rank, seed, denseSteps, scope);
}

}  // namespace chorus::parallel
