// The GPT as a list of layers (see gpt_stages.h).
//
// Naming: LayerwiseStage names each layer's parameters "<layer name>.<parameter>", but the
// embedding layer holds two top-level names of the whole model (wte, wpe) and torch refuses a
// dot in a child's name ("h.3"). So the stage's layers run inside the LayerwiseStage, and a
// second module, StageParameters, registers the same submodules under the whole model's names:
// wte, wpe, h (a module whose children are the global block indices), lnf, lm_head, in the
// order Gpt registers them. Both hold the same tensors; the second one is what optimizers,
// DDP and checkpoints see.
#include "chorus/train/gpt_stages.h"

#include <cmath>
#include <utility>

#include "chorus/comm/collectives/collectives.h"
#include "chorus/common/error.h"
#include "chorus/parallel/pipeline/weight_grad.h"
#include "chorus/parallel/tensor/communication.h"
#include "chorus/parallel/tensor/cross_entropy.h"
#include "chorus/parallel/tensor/sharding.h"

namespace chorus::train {

namespace {

torch::nn::LayerNorm layerNorm(int64_t E) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({E}).eps(1e-5).elementwise_affine(true));
}

parallel::VocabParallelEmbeddingOptions tableOptions(const GptOptions& o, const std::string& name) {
  parallel::VocabParallelEmbeddingOptions e;
  e.vocab = o.vocab;
  e.dim = o.embed;
  e.initStd = 0.02;
  e.seed = o.seed;
  e.name = name;
  return e;
}

void validate(const GptOptions& o, int k) {
  if (o.heads >= 1 && o.heads % k != 0)
    throw InvalidArgument(chorus::str("layer-wise Gpt: heads ", o.heads, " cannot be split over ", k,
                                      " tensor-parallel ranks; use a tp size that divides the head count"));
  if (o.vocab < 1 || o.layers < 1 || o.heads < 1 || o.embed < 1 || o.context < 1)
    throw InvalidArgument(chorus::str("layer-wise Gpt: vocab ", o.vocab, ", layers ", o.layers, ", heads ", o.heads,
                                      ", embed ", o.embed, ", context ", o.context, ": every size must be at least 1"));
  if (o.embed % o.heads != 0)
    throw InvalidArgument(chorus::str("layer-wise Gpt: embed ", o.embed, " is not divisible by heads ", o.heads,
                                      "; choose an embed width that is a multiple of the head count"));
  if (!(o.dropout >= 0 && o.dropout < 1))
    throw InvalidArgument(chorus::str("layer-wise Gpt: dropout ", o.dropout, " must be in [0, 1)"));
  if (o.sequenceParallel)
    throw InvalidArgument(
        "layer-wise Gpt: sequence parallelism is not combined with pipeline stages yet; turn it off (tensor "
        "parallelism still splits each stage's layers)");
}

// A module that registers children under given names (the stage's parameters, named as the
// whole model names them; and "h", whose children are the blocks' global indices).
class StageParameters : public torch::nn::Module {
 public:
  explicit StageParameters(const std::string& name) : torch::nn::Module(name) {}
  void add(const std::string& name, const std::shared_ptr<torch::nn::Module>& m) { register_module(name, m); }
};

}  // namespace

// ---- layers ----

GptEmbeddingImpl::GptEmbeddingImpl(const GptOptions& o, std::shared_ptr<parallel::TensorParallelRng> rng, TpGroup tp)
    : opts_(o), rng_(std::move(rng)) {
  wte = register_module("wte", parallel::VocabParallelEmbedding(tableOptions(o, "wte"), std::move(tp)));
  wpe = register_module("wpe", PositionEmbedding(o.context, o.embed, o.seed, "wpe"));
}

torch::Tensor GptEmbeddingImpl::forward(const torch::Tensor& ids) {
  if (!ids.defined() || ids.dim() != 2 || ids.scalar_type() != torch::kLong)
    throw InvalidArgument(chorus::str("Gpt embedding: ids must be [B, T] int64; got ",
                                      ids.defined() ? chorus::str(ids.sizes(), " ", ids.scalar_type()) : "none"));
  const int64_t T = ids.size(1);
  if (T < 1 || ids.size(0) < 1) throw InvalidArgument(chorus::str("Gpt embedding: ids ", ids.sizes(), " hold no tokens"));
  if (T > opts_.context)
    throw InvalidArgument(chorus::str("Gpt embedding: sequence length T = ", T, " exceeds the context ", opts_.context,
                                      "; crop the input to the last ", opts_.context, " tokens"));
  const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
  if (lo < 0 || hi >= opts_.vocab)
    throw InvalidArgument(
        chorus::str("Gpt embedding: token ids must lie in [0, ", opts_.vocab, "); got ids in [", lo, ", ", hi, "]"));
  torch::Tensor x = wte->forward(ids) + wpe->forward(0, T);
  if (opts_.dropout > 0 && is_training()) x = parallel::dropout(x, opts_.dropout, rng_->replicated(), true);
  return x;
}

GptHeadImpl::GptHeadImpl(const GptOptions& o, parallel::VocabParallelEmbedding shared, TpGroup tp)
    : opts_(o), tp_(std::move(tp)) {
  lnf = register_module("lnf", layerNorm(o.embed));
  if (o.tieEmbeddings) {
    wte = shared ? shared : parallel::VocabParallelEmbedding(tableOptions(o, "wte"), tp_);
    register_module("wte", wte);
  } else {
    lmHead = register_module("lm_head", parallel::VocabParallelEmbedding(tableOptions(o, "lm_head"), tp_));
  }
}

torch::Tensor& GptHeadImpl::projection() { return table()->weight; }

parallel::VocabParallelEmbedding& GptHeadImpl::table() { return opts_.tieEmbeddings ? wte : lmHead; }

torch::Tensor GptHeadImpl::forward(const torch::Tensor& x) {
  // Each tp rank's vocabulary columns contribute a part of dL/dx: the copy all-reduces it in the
  // backward pass (an identity at tp 1).
  torch::Tensor h = parallel::copyToTensorParallelRegion(lnf->forward(x), tp_);
  // A linear layer without bias, so that a zero-bubble schedule defers its weight gradient (the
  // largest on the last stage) to W, as it does the blocks' (weight_grad.h).
  return parallel::deferrableLinear(h, projection());  // [B, T, Vp/k]
}

size_t gptLayerCount(const GptOptions& o) { return static_cast<size_t>(o.layers) + 2; }

std::vector<int64_t> gptLayerCosts(const GptOptions& o) {
  const int64_t E = o.embed, V = o.vocab;
  // qkv 3E x E + 3E, proj E x E + E, fc1 4E x E + 4E, fc2 E x 4E + E, two LayerNorms 4E.
  const int64_t block = 12 * E * E + 13 * E;
  std::vector<int64_t> costs{V * E + o.context * E};
  for (int64_t i = 0; i < o.layers; ++i) costs.push_back(block);
  costs.push_back(V * E + 2 * E);  // lm_head, or the tied copy of wte
  return costs;
}

std::vector<std::string> gptParameterNames(const GptOptions& o) {
  // A block's names do not depend on its sizes: take them from a minimal one.
  GptOptions small = o;
  small.embed = small.heads = 1;
  small.dropout = 0;
  small.sequenceParallel = false;
  GptBlock probe(small, 0, nullptr, std::make_shared<parallel::TensorParallelRng>(0, 0));
  std::vector<std::string> names{"wte.weight", "wpe.weight"};
  for (int64_t i = 0; i < o.layers; ++i)
    for (const auto& p : probe->named_parameters()) names.push_back(chorus::str("h.", i, ".", p.key()));
  names.push_back("lnf.weight");
  names.push_back("lnf.bias");
  if (!o.tieEmbeddings) names.push_back("lm_head.weight");
  return names;
}

torch::nn::AnyModule gptLayer(const GptOptions& o, size_t index, std::shared_ptr<parallel::TensorParallelRng> rng) {
  const size_t n = gptLayerCount(o);
  if (index >= n)
    throw InvalidArgument(chorus::str("gptLayer: layer ", index, " of a GPT with ", n, " layers (embedding, ", o.layers,
                                      " blocks, head)"));
  if (!rng) rng = std::make_shared<parallel::TensorParallelRng>(o.seed, 0);
  if (index == 0) return torch::nn::AnyModule(GptEmbedding(o, rng));
  if (index + 1 == n) return torch::nn::AnyModule(GptHead(o, nullptr));
  return torch::nn::AnyModule(GptBlock(o, static_cast<int64_t>(index) - 1, nullptr, rng));
}

torch::Tensor gptStageLoss(const torch::Tensor& logits, const torch::Tensor& targets, int64_t vocab) {
  if (logits.dim() != 3 || logits.size(-1) < vocab || targets.sizes() != logits.sizes().slice(0, 2))
    throw InvalidArgument(chorus::str("Gpt loss: logits ", logits.sizes(), " must be [B, T, >= ", vocab,
                                      "] and targets ", targets.sizes(), " [B, T]"));
  torch::Tensor l = logits.narrow(-1, 0, vocab).reshape({-1, vocab});
  return torch::nn::functional::cross_entropy(l.to(torch::kFloat), targets.reshape({-1}));
}

// ---- the stage ----

GptStage::GptStage(const GptOptions& o, std::shared_ptr<comm::ProcessGroup> pp, int dpRank,
                   parallel::LayerwiseOptions base, TpGroup tp, int chunks)
    : opts_(o), pp_(std::move(pp)), tp_(parallel::tpSize(tp) > 1 ? std::move(tp) : nullptr), chunks_(chunks) {
  validate(opts_, parallel::tpSize(tp_));
  if (!pp_) throw InvalidArgument("GptStage: the pipeline group is null");
  if (chunks_ < 1) throw InvalidArgument(chorus::str("GptStage: ", chunks_, " chunks per stage; use 1 or more"));
  const int s = pp_->rank();
  // Stage 0 keeps the model's seed, so a one-stage split drops exactly as Gpt does.
  const uint64_t rngSeed = s == 0 ? opts_.seed : parallel::parameterSeed(opts_.seed, chorus::str("pipeline stage ", s));
  rng_ = std::make_shared<parallel::TensorParallelRng>(rngSeed, parallel::tpRank(tp_), dpRank);

  const size_t n = gptLayerCount(opts_);
  base.names.clear();
  if (base.partition.empty() && base.layerCosts.empty()) base.layerCosts = gptLayerCosts(opts_);
  auto build = [this, n](size_t i) -> torch::nn::AnyModule {
    if (i == 0) {
      embedding_ = GptEmbedding(opts_, rng_, tp_);
      return torch::nn::AnyModule(embedding_);
    }
    if (i + 1 == n) {
      // Built after the embedding on a stage that holds both: one shared table.
      head_ = GptHead(opts_, embedding_ ? embedding_->wte : nullptr, tp_);
      return torch::nn::AnyModule(head_);
    }
    return torch::nn::AnyModule(GptBlock(opts_, static_cast<int64_t>(i) - 1, tp_, rng_));
  };
  // (global layer index, layer) of every layer this rank holds, in order.
  std::vector<std::pair<size_t, torch::nn::AnyModule>> held;
  if (chunks_ == 1) {
    stage_ = std::make_unique<parallel::LayerwiseStage>(pp_, n, build, base);
    partition_ = stage_->partition();
    for (size_t i = stage_->layerBegin(); i < stage_->layerEnd(); ++i)
      held.emplace_back(i, stage_->layers()[i - stage_->layerBegin()]);
  } else {
    const int p = pp_->size();
    partition_ = parallel::choosePartition(base.partition, [&] { return base.layerCosts; }, n, p * chunks_,
                                           base.costTolerance);
    chunkLayers_.resize(static_cast<size_t>(chunks_));
    for (int c = 0; c < chunks_; ++c) {
      const int vs = c * p + s;
      size_t begin = 0;
      for (int k = 0; k < vs; ++k) begin += static_cast<size_t>(partition_[static_cast<size_t>(k)]);
      for (size_t i = begin; i < begin + static_cast<size_t>(partition_[static_cast<size_t>(vs)]); ++i) {
        chunkLayers_[static_cast<size_t>(c)].push_back(build(i));
        held.emplace_back(i, chunkLayers_[static_cast<size_t>(c)].back());
      }
    }
  }

  auto named = std::make_shared<StageParameters>(chorus::str("GptStage", s));
  if (embedding_) {
    named->add("wte", embedding_->wte.ptr());
    named->add("wpe", embedding_->wpe.ptr());
  } else if (head_ && opts_.tieEmbeddings) {
    named->add("wte", head_->wte.ptr());
  }
  auto blocks = std::make_shared<StageParameters>("h");
  bool anyBlock = false;
  for (const auto& [i, layer] : held) {
    if (i == 0 || i + 1 == n) continue;
    blocks->add(std::to_string(i - 1), layer.ptr());
    anyBlock = true;
  }
  if (anyBlock) named->add("h", blocks);
  if (head_) {
    named->add("lnf", head_->lnf.ptr());
    if (!opts_.tieEmbeddings) named->add("lm_head", head_->lmHead.ptr());
  }
  module_ = std::move(named);

  // The two wte copies: a group of the first and last stage (collective over pp).
  const int stages = pp_->size();
  if (opts_.tieEmbeddings && stages > 1) {
    const bool end = s == 0 || s == stages - 1;
    tied_ = pp_->split(end ? 0 : -1, s);
  }
}

GptStage::~GptStage() = default;

parallel::LayerwiseStage& GptStage::layers() {
  if (!stage_)
    throw InvalidArgument(chorus::str("GptStage::layers: this stage holds ", chunks_,
                                      " chunks (interleaved), not one layer range; use runChunk"));
  return *stage_;
}

torch::Tensor GptStage::runChunk(int chunk, const torch::Tensor& x) {
  if (stage_) {
    if (chunk != 0) throw InvalidArgument(chorus::str("GptStage::runChunk: chunk ", chunk, " of a one-chunk stage"));
    return stage_->runLayers(x);
  }
  if (chunk < 0 || chunk >= chunks_)
    throw InvalidArgument(chorus::str("GptStage::runChunk: chunk ", chunk, " of ", chunks_));
  torch::Tensor y = x;
  for (auto& layer : chunkLayers_[static_cast<size_t>(chunk)]) y = layer.forward(y);
  return y;
}

torch::Tensor GptStage::forward(const torch::Tensor& ids) {
  if (stage_) return stage_->forward(ids);
  // Interleaved: virtual stage c * p + r on rank r; the activation [B, T, E] (float32) goes
  // from rank r to r + 1, and from the last rank back to rank 0 for the next chunk. Blocking
  // sends and receives in chain order cannot deadlock: each rank waits only for its predecessor.
  if (!ids.defined() || ids.dim() != 2)
    throw InvalidArgument("GptStage::forward: an interleaved stage needs the ids [B, T] on every stage");
  constexpr uint32_t kTag = 0x4C574900;  // "LWI"
  const int p = pp_->size(), r = pp_->rank();
  const int last = p * chunks_ - 1;
  torch::Tensor x;
  for (int c = 0; c < chunks_; ++c) {
    const int vs = c * p + r;
    if (vs == 0) {
      x = ids;
    } else {
      x = torch::empty({ids.size(0), ids.size(1), opts_.embed}, torch::kFloat);
      pp_->recv((r - 1 + p) % p, kTag, x.data_ptr(), static_cast<size_t>(x.numel()) * sizeof(float));
    }
    x = runChunk(c, x);
    if (vs != last) {
      torch::Tensor out = x.detach().to(torch::kFloat).contiguous();
      pp_->send((r + 1) % p, kTag, out.data_ptr(), static_cast<size_t>(out.numel()) * sizeof(float));
    }
  }
  return x;
}

void GptStage::backward(const torch::Tensor& loss) { layers().backward(loss); }

torch::Tensor GptStage::loss(const torch::Tensor& logits, const torch::Tensor& targets) {
  if (!head_) throw InvalidArgument("GptStage::loss: only the last stage holds the head and computes the loss");
  if (!tp_) return gptStageLoss(logits, targets, opts_.vocab);
  if (logits.dim() != 3 || targets.sizes() != logits.sizes().slice(0, 2))
    throw InvalidArgument(chorus::str("Gpt loss: targets ", targets.sizes(), " must be [B, T] matching the logits ",
                                      logits.sizes()));
  return parallel::vocabParallelCrossEntropy(logits, targets, head_->table()->vocabStart(), opts_.vocab, tp_);
}

torch::Tensor GptStage::embeddingWeight() const {
  if (embedding_) return embedding_->wte->weight;
  if (head_ && opts_.tieEmbeddings) return head_->wte->weight;
  return {};
}

void GptStage::syncTiedGradients() {
  if (!tied_) return;
  torch::Tensor w = embeddingWeight();
  if (!w.grad().defined()) w.mutable_grad() = torch::zeros_like(w);
  torch::Tensor g = w.grad();
  const bool inPlace = g.is_contiguous();
  torch::Tensor buf = inPlace ? g : g.contiguous();
  comm::AllreduceOptions a;
  a.data = buf.data_ptr();
  a.count = static_cast<size_t>(buf.numel());
  a.dtype = DType::kFloat32;
  a.op = ReduceOp::kSum;
  if (buf.scalar_type() != torch::kFloat)
    throw InvalidArgument(chorus::str("GptStage: the tied embedding's gradient is ", buf.scalar_type(),
                                      "; the layer-wise GPT trains in float32"));
  tied_->allreduce(a);
  if (!inPlace) g.copy_(buf);
}

}  // namespace chorus::train
