// Layer-wise stages: the partition, and one batch's forward and backward across the stages.
//
// Timeline of one step on 3 stages (F forward, B backward, . waiting):
//
//   stage 0  F0 ....................... B0
//   stage 1  .. F1 ............... B1 ..
//   stage 2  ..... F2 loss B2 ..........
//
// Each stage is busy for its own F and B and idle otherwise: with S equal stages the idle
// fraction is (S - 1) / S. The spans make that visible; pipeline schedules fill it with
// micro-batches.
//
// Sends are asynchronous (the next stage may still be in its previous step's backward), so a
// stage waits for its own earlier sends only before it posts the next one on the other stream
// or its next forward; by then the peer has nearly always taken them.
#include "chorus/parallel/pipeline/layerwise.h"

#include <algorithm>
#include <limits>

#include "chorus/common/error.h"
#include "chorus/common/logging.h"

namespace chorus::parallel {

namespace {

using SteadyClock = std::chrono::steady_clock;

std::string listOf(const std::vector<int>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

// Whether an activation of this dtype has a gradient to send back.
bool carriesGradient(const torch::Tensor& t) { return t.defined() && (t.is_floating_point() || t.is_complex()); }

// A holder for a stage's layers, so they have names, parameters and train()/eval().
class StageModule : public torch::nn::Module {
 public:
  explicit StageModule(int stage) : torch::nn::Module("LayerwiseStage" + std::to_string(stage)) {}
  void add(const std::string& name, const std::shared_ptr<torch::nn::Module>& m) { register_module(name, m); }
};

}  // namespace

// ---- Partitions ----

namespace {
void checkStageCount(size_t layers, int stages) {
  if (stages < 1) throw InvalidArgument(chorus::str("a layer-wise split needs at least one stage; got ", stages));
  if (static_cast<size_t>(stages) > layers) {
    throw InvalidArgument(chorus::str("a layer-wise split over ", stages, " stages needs at least ", stages,
                                      " layers (one per stage), and the model has ", layers,
                                      "; run on fewer ranks or split the model into more layers"));
  }
}
}  // namespace

std::vector<int> choosePartition(const std::vector<int>& given, const std::function<std::vector<int64_t>()>& costs,
                                 size_t layers, int stages, double tolerance) {
  if (!given.empty()) {
    checkPartition(given, layers, stages);
    return given;
  }
  checkStageCount(layers, stages);
  const std::vector<int64_t> c = costs();
  if (c.size() != layers) {
    throw InvalidArgument(chorus::str("LayerwiseOptions::layerCosts has ", c.size(), " costs for ", layers,
                                      " layers; give one per layer, or none"));
  }
  return balancedPartition(c, stages, tolerance);
}

void checkPartition(const std::vector<int>& counts, size_t layers, int stages) {
  checkStageCount(layers, stages);
  if (counts.size() != static_cast<size_t>(stages)) {
    throw InvalidArgument(chorus::str("the partition ", listOf(counts), " has ", counts.size(), " entries for ", stages,
                                      " stages; give one layer count per stage (or none for the balanced default)"));
  }
  int64_t sum = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] < 1) {
      throw InvalidArgument(chorus::str("the partition ", listOf(counts), " gives stage ", i, " ", counts[i],
                                        " layers; every stage needs at least one"));
    }
    sum += counts[i];
  }
  if (sum != static_cast<int64_t>(layers)) {
    throw InvalidArgument(chorus::str("the partition ", listOf(counts), " covers ", sum, " layers and the model has ",
                                      layers, "; the layer counts must sum to ", layers));
  }
}

// Two dynamic programs over split points (O(S L^2), for L in the hundreds at most): the
// first finds the smallest possible largest stage cost (widened by the tolerance); the second,
// among the splits that keep every stage within it, the least sum of squared layer counts (the most even counts, so
// layers without parameters spread out). The split is read back from the last stage, taking
// the shortest last stage that reaches the optimum each time.
std::vector<int> balancedPartition(const std::vector<int64_t>& costs, int stages, double tolerance) {
  const size_t L = costs.size();
  checkStageCount(L, stages);
  if (!(tolerance >= 0)) throw InvalidArgument(chorus::str("balancedPartition: tolerance ", tolerance, " must be >= 0"));
  std::vector<int64_t> prefix(L + 1, 0);
  for (size_t i = 0; i < L; ++i) {
    if (costs[i] < 0) throw InvalidArgument(chorus::str("layer ", i, " has a negative cost ", costs[i]));
    prefix[i + 1] = prefix[i] + costs[i];
  }
  const auto S = static_cast<size_t>(stages);
  constexpr int64_t kInf = std::numeric_limits<int64_t>::max();
  auto cost = [&](size_t j, size_t i) { return prefix[i] - prefix[j]; };  // layers [j, i)

  // best[s][i]: the least largest cost of s stages over the first i layers.
  std::vector<std::vector<int64_t>> best(S + 1, std::vector<int64_t>(L + 1, kInf));
  for (size_t i = 1; i <= L; ++i) best[1][i] = cost(0, i);
  for (size_t s = 2; s <= S; ++s) {
    for (size_t i = s; i <= L; ++i) {
      for (size_t j = s - 1; j < i; ++j) best[s][i] = std::min(best[s][i], std::max(best[s - 1][j], cost(j, i)));
    }
  }
  int64_t cap = best[S][L];
  if (tolerance > 0) {
    const double widened = static_cast<double>(cap) * (1 + tolerance);
    cap = widened >= static_cast<double>(kInf) ? kInf - 1 : static_cast<int64_t>(widened);
  }

  // squares[s][i]: the least sum of squared counts of s stages over the first i layers, each
  // within cap (kInf: none).
  auto sq = [](size_t n) { return static_cast<int64_t>(n * n); };
  std::vector<std::vector<int64_t>> squares(S + 1, std::vector<int64_t>(L + 1, kInf));
  for (size_t i = 1; i <= L; ++i) {
    if (cost(0, i) <= cap) squares[1][i] = sq(i);
  }
  for (size_t s = 2; s <= S; ++s) {
    for (size_t i = s; i <= L; ++i) {
      for (size_t j = s - 1; j < i; ++j) {
        if (squares[s - 1][j] == kInf || cost(j, i) > cap) continue;
        squares[s][i] = std::min(squares[s][i], squares[s - 1][j] + sq(i - j));
      }
    }
  }

  std::vector<int> counts(S);
  size_t i = L;
  for (size_t s = S; s >= 2; --s) {
    size_t pick = 0;
    for (size_t j = i - 1; j >= s - 1; --j) {
      if (squares[s - 1][j] != kInf && cost(j, i) <= cap && squares[s - 1][j] + sq(i - j) == squares[s][i]) {
        pick = j;
        break;
      }
    }
    CHORUS_CHECK(pick > 0, "no split point for stage ", s - 1);
    counts[s - 1] = static_cast<int>(i - pick);
    i = pick;
  }
  counts[0] = static_cast<int>(i);
  return counts;
}

std::vector<int64_t> parameterCounts(const std::vector<torch::nn::AnyModule>& layers) {
  std::vector<int64_t> counts;
  counts.reserve(layers.size());
  for (const auto& l : layers) {
    int64_t n = 0;
    if (!l.is_empty()) {
      for (const auto& p : l.ptr()->parameters()) n += p.numel();
    }
    counts.push_back(n);
  }
  return counts;
}

// ---- StageSpan ----

const char* StageSpan::name(Kind k) {
  switch (k) {
    case Kind::kForward: return "forward";
    case Kind::kBackward: return "backward";
    case Kind::kWaitActivation: return "wait activation";
    case Kind::kWaitGradient: return "wait gradient";
    case Kind::kWaitSend: return "wait send";
  }
  return "?";
}

// ---- LayerwiseStage ----

namespace {
std::shared_ptr<comm::ProcessGroup> requireGroup(std::shared_ptr<comm::ProcessGroup> g) {
  if (!g) throw InvalidArgument("a layer-wise stage needs its pipeline group; got nullptr");
  return g;
}
}  // namespace

LayerwiseStage::LayerwiseStage(std::shared_ptr<comm::ProcessGroup> group, std::vector<torch::nn::AnyModule> layers,
                               LayerwiseOptions opts)
    : group_(requireGroup(std::move(group))),
      opts_(std::move(opts)),
      p2p_(group_, P2POptions{opts_.meta, Millis(0)}),
      numLayers_(layers.size()) {
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i].is_empty()) throw InvalidArgument(chorus::str("layer ", i, " of the layer-wise model is empty"));
  }
  setup([&] { return parameterCounts(layers); });
  std::vector<torch::nn::AnyModule> local(layers.begin() + static_cast<std::ptrdiff_t>(begin_),
                                          layers.begin() + static_cast<std::ptrdiff_t>(begin_ + partition_[stage_]));
  layers.clear();  // drop this rank's references to the other stages' layers
  adopt(std::move(local));
}

namespace {
std::vector<torch::nn::AnyModule> layersOf(const torch::nn::Sequential& model) {
  if (!model) throw InvalidArgument("a layer-wise stage got an empty Sequential holder");
  return std::vector<torch::nn::AnyModule>(model->begin(), model->end());
}
LayerwiseOptions withSequentialNames(const torch::nn::Sequential& model, LayerwiseOptions opts) {
  if (opts.names.empty() && model) {
    for (const auto& child : model->named_children()) opts.names.push_back(child.key());
  }
  return opts;
}
}  // namespace

LayerwiseStage::LayerwiseStage(std::shared_ptr<comm::ProcessGroup> group, const torch::nn::Sequential& model,
                               LayerwiseOptions opts)
    : LayerwiseStage(std::move(group), layersOf(model), withSequentialNames(model, std::move(opts))) {}

LayerwiseStage::LayerwiseStage(std::shared_ptr<comm::ProcessGroup> group, size_t numLayers, const LayerBuilder& build,
                               LayerwiseOptions opts)
    : group_(requireGroup(std::move(group))),
      opts_(std::move(opts)),
      p2p_(group_, P2POptions{opts_.meta, Millis(0)}),
      numLayers_(numLayers) {
  if (!build) throw InvalidArgument("a layer-wise stage's builder is empty");
  setup([&] {
    if (!opts_.layerCosts.empty()) return opts_.layerCosts;
    std::vector<int64_t> costs;
    for (size_t i = 0; i < numLayers_; ++i) costs.push_back(parameterCounts({build(i)})[0]);
    return costs;
  });
  std::vector<torch::nn::AnyModule> local;
  for (size_t i = begin_; i < begin_ + static_cast<size_t>(partition_[stage_]); ++i) {
    local.push_back(build(i));
    if (local.back().is_empty()) throw InvalidArgument(chorus::str("the builder returned an empty module for layer ", i));
  }
  adopt(std::move(local));
}

void LayerwiseStage::setup(const std::function<std::vector<int64_t>()>& costs) {
  stage_ = group_->rank();
  const int stages = group_->size();
  if (!opts_.names.empty() && opts_.names.size() != numLayers_) {
    throw InvalidArgument(chorus::str("LayerwiseOptions::names has ", opts_.names.size(), " names for ", numLayers_,
                                      " layers; give one per layer of the whole model, or none"));
  }
  if (opts_.tag >= TensorP2P::kHeaderTagBit - 1) {
    throw InvalidArgument(chorus::str("LayerwiseOptions::tag ", opts_.tag, " must be below ", TensorP2P::kHeaderTagBit - 1));
  }
  partition_ = choosePartition(opts_.partition, costs, numLayers_, stages,
                               opts_.layerCosts.empty() ? 0.0 : opts_.costTolerance);
  begin_ = 0;
  for (int s = 0; s < stage_; ++s) begin_ += static_cast<size_t>(partition_[static_cast<size_t>(s)]);
}

void LayerwiseStage::adopt(std::vector<torch::nn::AnyModule> local) {
  auto module = std::make_shared<StageModule>(stage_);
  for (size_t k = 0; k < local.size(); ++k) {
    const size_t i = begin_ + k;
    module->add(opts_.names.empty() ? std::to_string(i) : opts_.names[i], local[k].ptr());
  }
  layers_ = std::move(local);
  module_ = std::move(module);
}

LayerwiseStage::~LayerwiseStage() {
  try {
    waitSends();
  } catch (const std::exception& e) {
    CHORUS_WARN("layer-wise stage ", stage_, ": a send had not finished when the stage was destroyed: ", e.what());
  }
}

void LayerwiseStage::record(StageSpan::Kind kind, SteadyClock::time_point start) {
  if (!opts_.recordSpans) return;
  if (spans_.size() >= kMaxSpans) spans_.erase(spans_.begin(), spans_.begin() + static_cast<std::ptrdiff_t>(kMaxSpans / 2));
  spans_.push_back(StageSpan{kind, step_, start, SteadyClock::now()});
}

void LayerwiseStage::waitSends() {
  if (pendingSends_.empty()) return;
  const auto t0 = SteadyClock::now();
  bool blocked = false;
  // Drop each as it finishes, so a failed one is not waited for again by the destructor.
  while (!pendingSends_.empty()) {
    TensorWorkPtr w = pendingSends_.front();
    pendingSends_.erase(pendingSends_.begin());
    if (!w->test()) {
      blocked = true;
      w->wait();
    }
  }
  if (blocked) record(StageSpan::Kind::kWaitSend, t0);
}

void LayerwiseStage::flush() { waitSends(); }

std::vector<StageSpan> LayerwiseStage::takeSpans() {
  std::vector<StageSpan> out;
  out.swap(spans_);
  return out;
}

torch::Tensor LayerwiseStage::runLayers(const torch::Tensor& x) {
  torch::Tensor y = x;
  for (auto& layer : layers_) y = layer.forward(y);
  return y;
}

torch::Tensor LayerwiseStage::forward(const torch::Tensor& input) {
  const std::string who = chorus::str("layer-wise stage ", stage_, " of ", stages());
  if (isFirst() && !input.defined()) {
    throw InvalidArgument(chorus::str(who, ": forward needs the model's input on the first stage"));
  }
  if (!isFirst() && input.defined()) {
    throw InvalidArgument(chorus::str(who, ": only the first stage takes an input; call forward() with none here (its "
                                           "input comes from stage ", stage_ - 1, ")"));
  }
  waitSends();
  ++step_;
  input_ = torch::Tensor();
  output_ = torch::Tensor();
  torch::Tensor x = input;
  if (!isFirst()) {
    const auto t0 = SteadyClock::now();
    x = p2p_.recv(stage_ - 1, activationTag(), chorus::str("the activation into stage ", stage_));
    record(StageSpan::Kind::kWaitActivation, t0);
    if (carriesGradient(x)) x.requires_grad_(true);
    input_ = x;
  }
  const auto t0 = SteadyClock::now();
  x = runLayers(x);
  record(StageSpan::Kind::kForward, t0);
  output_ = x;
  if (!isLast()) {
    pendingSends_.push_back(
        p2p_.sendAsync(x, stage_ + 1, activationTag(), chorus::str("the activation out of stage ", stage_)));
  }
  return x;
}

void LayerwiseStage::backward(const torch::Tensor& loss) {
  const std::string who = chorus::str("layer-wise stage ", stage_, " of ", stages());
  if (!output_.defined()) {
    throw InvalidArgument(chorus::str(who, ": backward without a forward before it; call forward, then backward, once each"));
  }
  if (isLast()) {
    if (!loss.defined()) throw InvalidArgument(chorus::str(who, ": the last stage's backward needs the loss"));
    const auto t0 = SteadyClock::now();
    loss.backward();
    record(StageSpan::Kind::kBackward, t0);
  } else {
    if (loss.defined()) {
      throw InvalidArgument(chorus::str(who, ": only the last stage takes the loss; call backward() with none here (the "
                                             "gradient comes from stage ", stage_ + 1, ")"));
    }
    waitSends();  // the activation: the next stage has taken it if it is sending a gradient
    if (carriesGradient(output_)) {
      auto t0 = SteadyClock::now();
      torch::Tensor grad = p2p_.recv(stage_ + 1, gradientTag(), chorus::str("the gradient of stage ", stage_, "'s output"),
                                     TensorMeta::of(output_));
      record(StageSpan::Kind::kWaitGradient, t0);
      t0 = SteadyClock::now();
      // An output that does not require grad (a first stage without parameters) ends the
      // graph here; its gradient was still received, to keep the stream in step.
      if (output_.requires_grad()) output_.backward(grad);
      record(StageSpan::Kind::kBackward, t0);
    }
  }
  if (!isFirst() && carriesGradient(input_)) {
    torch::Tensor grad = input_.grad();
    if (!grad.defined()) grad = torch::zeros_like(input_);  // the output does not depend on the input
    pendingSends_.push_back(
        p2p_.sendAsync(grad, stage_ - 1, gradientTag(), chorus::str("the gradient of stage ", stage_, "'s input")));
  }
  input_ = torch::Tensor();
  output_ = torch::Tensor();
}

}  // namespace chorus::parallel
