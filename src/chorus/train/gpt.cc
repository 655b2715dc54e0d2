// The tensor-parallel GPT (see gpt.h).
//
// Where the collectives are (k > 1, without sequence parallelism), per block: attn and mlp
// each all-reduce once in the forward pass (their row-parallel output) and once in the
// backward pass (their column-parallel input's gradient); the embedding all-reduces its
// output; the logits need the copy-to-region function in front of the vocabulary-split
// matmul, whose backward all-reduces the hidden state's gradient (each rank's vocabulary
// columns contribute a part); the loss all-reduces three numbers per position.
//
// Under sequence parallelism every all-reduce of the residual stream becomes a reduce-scatter
// (forward) / all-gather (backward) pair along T, the embedding reduce-scatters its output and
// each rank adds the position rows of its own tokens, and the final hidden state is
// all-gathered along T before the logits (its backward reduce-scatter sums the vocabulary
// parts). The parameters applied to a T/k slice (LayerNorms, wpe, the row biases) are marked
// ShardSpec::sequenceParallel and completed by allReduceSequenceParallelGradients.
#include "chorus/train/gpt.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "chorus/common/error.h"

namespace chorus::train {

using parallel::ShardSpec;
using parallel::tpRank;
using parallel::tpSize;

namespace {

torch::nn::LayerNorm layerNorm(int64_t E) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({E}).eps(1e-5).elementwise_affine(true));
}

ShardSpec sequenceParallelSpec() {
  ShardSpec s;
  s.sequenceParallel = true;
  return s;
}

void validate(const GptOptions& o, int k) {
  if (o.vocab < 1 || o.layers < 1 || o.heads < 1 || o.embed < 1 || o.context < 1)
    throw InvalidArgument(chorus::str("Gpt: vocab ", o.vocab, ", layers ", o.layers, ", heads ", o.heads, ", embed ", o.embed,
                              ", context ", o.context, ": every size must be at least 1"));
  if (o.embed % o.heads != 0)
    throw InvalidArgument(chorus::str("Gpt: embed ", o.embed, " is not divisible by heads ", o.heads,
                              "; choose an embed width that is a multiple of the head count (e.g. ",
                              (o.embed / o.heads + 1) * o.heads, ")"));
  if (o.heads % k != 0)
    throw InvalidArgument(chorus::str("Gpt: heads ", o.heads, " is not divisible by the tensor-parallel size ", k,
                              "; every tp rank needs whole heads: use a tp size that divides ", o.heads,
                              " or a head count that is a multiple of ", k));
  if (!(o.dropout >= 0 && o.dropout < 1))
    throw InvalidArgument(chorus::str("Gpt: dropout ", o.dropout, " must be in [0, 1)"));
}

}  // namespace

PositionEmbeddingImpl::PositionEmbeddingImpl(int64_t context, int64_t dim, uint64_t seed, const std::string& name) {
  weight = register_parameter("weight", parallel::initNormal({context, dim}, 0.02, seed, name + ".weight"));
}

torch::Tensor PositionEmbeddingImpl::forward(int64_t start, int64_t count) { return weight.narrow(0, start, count); }

GptBlockImpl::GptBlockImpl(const GptOptions& o, int64_t index, TpGroup tp,
                           std::shared_ptr<parallel::TensorParallelRng> rng)
    : opts_(o), rng_(std::move(rng)) {
  const std::string name = chorus::str("h.", index);
  const double residualStd = 0.02 / std::sqrt(2.0 * static_cast<double>(o.layers));
  ln1 = register_module("ln1", layerNorm(o.embed));

  parallel::ParallelSelfAttentionOptions a;
  a.embed = o.embed;
  a.heads = o.heads;
  a.dropout = o.dropout;
  a.sequenceParallel = o.sequenceParallel;
  a.initStd = 0.02;
  a.projInitStd = residualStd;
  a.seed = o.seed;
  a.name = name + ".attn";
  attn = register_module("attn", parallel::ParallelSelfAttention(a, tp, rng_));

  ln2 = register_module("ln2", layerNorm(o.embed));

  parallel::ParallelMLPOptions m;
  m.embed = o.embed;
  m.hidden = 4 * o.embed;
  m.bias = true;
  m.sequenceParallel = o.sequenceParallel;
  m.initStd = 0.02;
  m.outputInitStd = residualStd;
  m.seed = o.seed;
  m.name = name + ".mlp";
  mlp = register_module("mlp", parallel::ParallelMLP(m, tp));

  if (o.sequenceParallel)
    for (const char* p : {"ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias"}) registerShardSpec(p, sequenceParallelSpec());
}

torch::Tensor GptBlockImpl::residualDropout(const torch::Tensor& x) {
  if (opts_.dropout == 0 || !is_training()) return x;
  // Under sequence parallelism each rank holds other tokens: independent masks.
  at::Generator& gen = opts_.sequenceParallel ? rng_->parallel() : rng_->replicated();
  return parallel::dropout(x, opts_.dropout, gen, true);
}

torch::Tensor GptBlockImpl::forward(const torch::Tensor& x) {
  torch::Tensor y = x + residualDropout(attn->forward(ln1->forward(x)));
  return y + residualDropout(mlp->forward(ln2->forward(y)));
}

GptImpl::GptImpl(GptOptions opts, TpGroup tp) : opts_(std::move(opts)), tp_(std::move(tp)) {
  const int k = tpSize(tp_);
  validate(opts_, k);
  rng_ = std::make_shared<parallel::TensorParallelRng>(opts_.seed, tpRank(tp_));

  parallel::VocabParallelEmbeddingOptions e;
  e.vocab = opts_.vocab;
  e.dim = opts_.embed;
  e.initStd = 0.02;
  e.seed = opts_.seed;
  e.name = "wte";
  e.sequenceParallel = opts_.sequenceParallel;
  wte = register_module("wte", parallel::VocabParallelEmbedding(e, tp_));
  wpe = register_module("wpe", PositionEmbedding(opts_.context, opts_.embed, opts_.seed, "wpe"));
  h = register_module("h", torch::nn::ModuleList());
  for (int64_t i = 0; i < opts_.layers; ++i) h->push_back(GptBlock(opts_, i, tp_, rng_));
  lnf = register_module("lnf", layerNorm(opts_.embed));
  if (!opts_.tieEmbeddings) {
    // The output projection [V, E] split along V exactly like the embedding table (padded
    // rows zero): an embedding module holds it, and it is used as a matrix only.
    parallel::VocabParallelEmbeddingOptions l = e;
    l.name = "lm_head";
    l.sequenceParallel = false;
    lmHead = register_module("lm_head", parallel::VocabParallelEmbedding(l, tp_));
  }
  if (opts_.sequenceParallel)
    for (const char* p : {"wpe.weight", "lnf.weight", "lnf.bias"}) registerShardSpec(p, sequenceParallelSpec());
}

int64_t GptImpl::paddedVocab() const { return wte->paddedVocab(); }
int64_t GptImpl::vocabStart() const { return wte->vocabStart(); }
int64_t GptImpl::vocabEnd() const { return wte->vocabEnd(); }

void GptImpl::checkIds(const torch::Tensor& ids) const {
  if (ids.dim() != 2 || ids.scalar_type() != torch::kLong)
    throw InvalidArgument(chorus::str("Gpt: ids must be [B, T] int64; got ", ids.sizes(), " ", ids.scalar_type()));
  const int64_t T = ids.size(1);
  if (T < 1 || ids.size(0) < 1) throw InvalidArgument(chorus::str("Gpt: ids ", ids.sizes(), " hold no tokens"));
  if (T > opts_.context)
    throw InvalidArgument(chorus::str("Gpt: sequence length T = ", T, " exceeds the context ", opts_.context,
                              "; crop the input to the last ", opts_.context, " tokens or build the model with context >= ",
                              T));
  const int k = tpSize(tp_);
  if (opts_.sequenceParallel && T % k != 0)
    throw InvalidArgument(chorus::str("Gpt: sequence parallelism splits the T = ", T, " tokens over ", k,
                              " tp ranks, which needs T % ", k, " == 0; use a sequence length that is a multiple of ",
                              k, " or turn sequence parallelism off"));
  const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
  if (lo < 0 || hi >= opts_.vocab)
    throw InvalidArgument(chorus::str("Gpt: token ids must lie in [0, ", opts_.vocab, "); got ids in [", lo, ", ", hi, "]"));
}

torch::Tensor GptImpl::trunk(const torch::Tensor& ids) {
  checkIds(ids);
  const int64_t T = ids.size(1);
  torch::Tensor x = wte->forward(ids);  // [B, T, E], or [B, T/k, E] (reduce-scattered)
  if (opts_.sequenceParallel) {
    const int64_t local = T / tpSize(tp_);
    x = x + wpe->forward(tpRank(tp_) * local, local);
  } else {
    x = x + wpe->forward(0, T);
  }
  if (opts_.dropout > 0 && is_training())
    x = parallel::dropout(x, opts_.dropout, opts_.sequenceParallel ? rng_->parallel() : rng_->replicated(), true);
  for (const auto& block : *h) x = block->as<GptBlock>()->forward(x);
  x = lnf->forward(x);
  if (opts_.sequenceParallel) x = parallel::gatherFromSequenceParallelRegion(x, tp_);
  return x;
}

torch::Tensor GptImpl::hidden(const torch::Tensor& ids) { return trunk(ids); }

torch::Tensor GptImpl::forward(const torch::Tensor& ids) {
  torch::Tensor x = trunk(ids);
  // Each rank's vocabulary columns contribute part of dL/dx: the copy all-reduces it in the
  // backward pass. (Under sequence parallelism the gather's reduce-scatter already sums.)
  if (!opts_.sequenceParallel) x = parallel::copyToTensorParallelRegion(x, tp_);
  const torch::Tensor& w = opts_.tieEmbeddings ? wte->weight : lmHead->weight;  // [Vp/k, E]
  return torch::matmul(x, w.t());
}

torch::Tensor GptImpl::lossFromLogits(const torch::Tensor& logitsShard, const torch::Tensor& targets) {
  if (logitsShard.dim() != 3 || targets.sizes() != logitsShard.sizes().slice(0, 2))
    throw InvalidArgument(chorus::str("Gpt: targets ", targets.sizes(), " must be [B, T] matching the logits ",
                              logitsShard.sizes()));
  return parallel::vocabParallelCrossEntropy(logitsShard, targets, vocabStart(), opts_.vocab, tp_);
}

torch::Tensor GptImpl::loss(const torch::Tensor& ids, const torch::Tensor& targets) {
  if (targets.sizes() != ids.sizes())
    throw InvalidArgument(chorus::str("Gpt: targets ", targets.sizes(), " must have the shape of ids ", ids.sizes()));
  return lossFromLogits(forward(ids), targets);
}

torch::Tensor GptImpl::fullLogits(const torch::Tensor& ids) {
  return parallel::gatherFromTensorParallelRegion(forward(ids), tp_).narrow(-1, 0, opts_.vocab);
}

std::map<std::string, ShardSpec> GptImpl::shardSpecs() { return parallel::shardSpecs(*this); }

std::string generate(Gpt& model, const std::string& prompt, int64_t tokens, double temperature, int64_t topK,
                     uint64_t seed, const TpGroup& tp) {
  const GptOptions& o = model->options();
  const int k = tpSize(tp);
  if (k != tpSize(model->tp()) || (k > 1 && tp != model->tp()))
    throw InvalidArgument(chorus::str("generate: the tp group (size ", k, ") is not the model's (size ", tpSize(model->tp()),
                              "); pass the group the model was built with"));
  if (tokens < 0) throw InvalidArgument(chorus::str("generate: tokens ", tokens, " must be at least 0"));
  if (!(temperature >= 0) || std::isinf(temperature))
    throw InvalidArgument(chorus::str("generate: temperature ", temperature, " must be finite and >= 0 (0: greedy)"));
  if (o.vocab < 256)
    throw InvalidArgument(chorus::str("generate: byte-level sampling needs vocab >= 256; the model has ", o.vocab));

  const bool wasTraining = model->is_training();
  model->eval();
  torch::NoGradGuard noGrad;
  std::vector<int64_t> ctx;
  for (unsigned char c : prompt) ctx.push_back(c);
  if (ctx.empty()) ctx.push_back('\n');
  // Under sequence parallelism the length must be a multiple of k: the window is cropped to
  // a multiple of k and padded on the right (causal attention: later tokens do not change
  // the logits of earlier positions).
  const int64_t window = o.sequenceParallel ? o.context - o.context % k : o.context;
  if (window < 1)
    throw InvalidArgument(chorus::str("generate: context ", o.context, " is shorter than the tp size ", k,
                              " that sequence parallelism splits it over"));
  auto gen = at::detail::createCPUGenerator(seed);
  std::string out;
  out.reserve(static_cast<size_t>(tokens));
  try {
    for (int64_t n = 0; n < tokens; ++n) {
      const int64_t start = std::max<int64_t>(0, static_cast<int64_t>(ctx.size()) - window);
      const int64_t T = static_cast<int64_t>(ctx.size()) - start;
      const int64_t padded = o.sequenceParallel ? (T + k - 1) / k * k : T;
      torch::Tensor ids = torch::zeros({1, padded}, torch::kLong);
      std::copy(ctx.begin() + start, ctx.end(), ids.data_ptr<int64_t>());
      torch::Tensor logits = model->fullLogits(ids)[0][T - 1].narrow(0, 0, 256).to(torch::kFloat64);
      torch::Tensor next;
      if (temperature == 0) {
        next = logits.argmax();
      } else {
        logits = logits / temperature;
        if (topK > 0 && topK < 256) {
          torch::Tensor kth = std::get<0>(logits.topk(topK)).index({topK - 1});
          logits = logits.masked_fill(logits < kth, -std::numeric_limits<double>::infinity());
        }
        next = at::multinomial(torch::softmax(logits, 0), 1, false, gen).squeeze();
      }
      // The ranks computed the same logits and drew with the same generator; the max over
      // the group only guards against a stray last bit.
      next = parallel::allReduceMax(next.reshape({1}).to(torch::kLong), tp);
      const int64_t token = next.item<int64_t>();
      ctx.push_back(token);
      out.push_back(static_cast<char>(static_cast<unsigned char>(token)));
    }
  } catch (...) {
    model->train(wasTraining);
    throw;
  }
  model->train(wasTraining);
  return out;
}

ParamBytes parameterBytes(torch::nn::Module& model) {
  const auto specs = parallel::shardSpecs(model);
  ParamBytes b;
  for (const auto& p : model.named_parameters()) {
    const int64_t bytes = p.value().numel() * static_cast<int64_t>(p.value().element_size());
    auto it = specs.find(p.key());
    if (it != specs.end() && it->second.dim >= 0)
      b.sharded += bytes;
    else
      b.replicated += bytes;
  }
  return b;
}

}  // namespace chorus::train
