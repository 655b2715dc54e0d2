// The models `chorus train` builds from its config (see models.h). Every layer sits in one
// torch::nn::Sequential, so parameter names ("0.weight", "1.running_mean", ...) depend only on
// the config, and checkpoints and DDP buckets see the same names on every rank.
#include "chorus/train/models.h"

#include "chorus/common/error.h"

namespace chorus::train {
namespace {

// Flatten -> [Linear -> ReLU] per hidden width -> Linear(classes).
torch::nn::Sequential makeMlp(const ModelConfig& cfg, int64_t inFeatures, int64_t classes) {
  torch::nn::Sequential seq;
  seq->push_back(torch::nn::Flatten());
  int64_t in = inFeatures;
  for (int64_t width : cfg.hidden) {
    if (width < 1) throw InvalidArgument(str("model.hidden: width ", width, " must be at least 1"));
    seq->push_back(torch::nn::Linear(in, width));
    seq->push_back(torch::nn::ReLU());
    in = width;
  }
  seq->push_back(torch::nn::Linear(in, classes));
  return seq;
}

// Per channel width c: Conv2d(3x3, pad 1, no bias) -> BatchNorm2d -> ReLU -> MaxPool2d(2), each
// pool halving H and W (floor); then Flatten -> Linear(fc) -> ReLU -> Linear(classes).
torch::nn::Sequential makeCnn(const ModelConfig& cfg, int64_t channels, int64_t height, int64_t width,
                              int64_t classes) {
  if (cfg.fc < 1) throw InvalidArgument(str("model.fc = ", cfg.fc, " must be at least 1"));
  torch::nn::Sequential seq;
  int64_t in = channels, h = height, w = width;
  for (int64_t c : cfg.channels) {
    if (c < 1) throw InvalidArgument(str("model.channels: width ", c, " must be at least 1"));
    h /= 2;
    w /= 2;
    if (h < 1 || w < 1)
      throw InvalidArgument(str("model.channels: ", cfg.channels.size(), " conv blocks halve a ", height, "x",
                                width, " image below 1x1; use at most ", seq->size() / 4, " blocks"));
    seq->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(in, c, 3).padding(1).bias(false)));
    seq->push_back(torch::nn::BatchNorm2d(c));
    seq->push_back(torch::nn::ReLU());
    seq->push_back(torch::nn::MaxPool2d(torch::nn::MaxPool2dOptions(2)));
    in = c;
  }
  seq->push_back(torch::nn::Flatten());
  seq->push_back(torch::nn::Linear(in * h * w, cfg.fc));
  seq->push_back(torch::nn::ReLU());
  seq->push_back(torch::nn::Linear(cfg.fc, classes));
  return seq;
}

}  // namespace

torch::nn::Sequential makeModel(const ModelConfig& cfg, int64_t channels, int64_t height, int64_t width,
                                int64_t classes) {
  if (channels < 1 || height < 1 || width < 1 || classes < 1)
    throw InvalidArgument(str("makeModel: input ", channels, "x", height, "x", width, " with ", classes,
                              " classes; every size must be at least 1"));
  if (cfg.name == "mlp") return makeMlp(cfg, channels * height * width, classes);
  if (cfg.name == "cnn") return makeCnn(cfg, channels, height, width, classes);
  throw InvalidArgument(str("model.name = \"", cfg.name, "\" is not a model; the choices are: mlp, cnn"));
}

int64_t parameterCount(torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters())
    if (p.requires_grad()) n += p.numel();
  return n;
}

}  // namespace chorus::train
