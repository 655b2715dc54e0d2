// A small classifier split over ranks with Megatron-style tensor parallelism: the hidden layer
// is a ColumnParallelLinear (each rank holds hidden/k of its neurons), the output layer a
// RowParallelLinear (each rank multiplies its hidden/k activations and one all-reduce sums
// the partial logits). The data is synthetic (inputs labelled by a fixed random "teacher"),
// so the program needs no files.
//
//   build/chorus launch -n 2 build/tensor_parallel_mlp    # tp = 2; any rank count dividing 64
//
// Every rank sees the same batch and computes the same loss; only the weights are split. Each
// full weight is drawn by initNormal from a generator of its own (seeded by the seed and the
// parameter's name), so the split model starts, and stays, equal to the unsplit one. At the
// end rank 0 trains the unsplit model (plain torch::nn::Linear layers with the same initial
// weights) the same way and checks that its losses agree to within 1e-5.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <vector>

#include "chorus/comm/group.h"
#include "chorus/parallel/mesh.h"
#include "chorus/parallel/tensor/layers.h"

namespace tp = chorus::parallel;

constexpr int64_t kIn = 16, kHidden = 64, kClasses = 4;
constexpr uint64_t kSeed = 7;
constexpr int kSteps = 30;

// The split model: x [N, 16] -> fc1 (column: [N, 64/k] on each rank) -> GELU -> fc2 (row:
// partial [N, 4], all-reduced, + bias) -> logits [N, 4], the same on every rank.
struct SplitNetImpl : torch::nn::Module {
  explicit SplitNetImpl(const tp::TpGroup& group) {
    tp::ColumnParallelLinearOptions c;
    c.in = kIn;
    c.out = kHidden;
    c.initStd = 0.3;
    c.seed = kSeed;
    c.name = "fc1";
    tp::RowParallelLinearOptions r;
    r.in = kHidden;
    r.out = kClasses;
    r.initStd = 0.3;
    r.seed = kSeed;
    r.name = "fc2";
    fc1 = register_module("fc1", tp::ColumnParallelLinear(c, group));
    fc2 = register_module("fc2", tp::RowParallelLinear(r, group));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::gelu(fc1(x))); }
  tp::ColumnParallelLinear fc1{nullptr};
  tp::RowParallelLinear fc2{nullptr};
};
TORCH_MODULE(SplitNet);

// SGD on full-batch cross-entropy; returns the loss before each step and after the last.
template <typename Net>
std::vector<double> train(Net& net, const torch::Tensor& x, const torch::Tensor& y) {
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.5).momentum(0.9));
  std::vector<double> losses;
  for (int step = 0; step <= kSteps; ++step) {
    torch::Tensor loss = torch::nn::functional::cross_entropy(net->forward(x), y);
    losses.push_back(loss.item<double>());
    if (step == kSteps) break;
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
  return losses;
}

int run() {
  auto world = chorus::comm::ProcessGroup::fromEnvironment();
  // Every rank in one tensor-parallel group (dp = pp = 1).
  auto mesh = tp::ProcessMesh::make(world, /*tp=*/world->size());
  const bool leader = world->rank() == 0;
  if (leader) std::printf("mesh %s\n", mesh.describe().c_str());

  // The same synthetic batch on every rank, from a generator of its own.
  auto gen = at::detail::createCPUGenerator(1);
  torch::Tensor x = torch::randn({256, kIn}, gen);
  torch::Tensor y = x.matmul(torch::randn({kIn, kClasses}, gen)).argmax(1);

  SplitNet net(mesh.group("tp"));
  std::vector<double> losses = train(net, x, y);
  if (!leader) return 0;
  for (int step = 0; step < kSteps; step += 5) std::printf("step %d loss %.6f\n", step, losses[step]);

  // The unsplit model with the same initial weights (biases start at 0).
  torch::nn::Sequential full(torch::nn::Linear(kIn, kHidden), torch::nn::Functional([](torch::Tensor t) { return torch::gelu(t); }),
                             torch::nn::Linear(kHidden, kClasses));
  {
    torch::NoGradGuard noGrad;
    auto fc1 = full[0]->as<torch::nn::Linear>(), fc2 = full[2]->as<torch::nn::Linear>();
    fc1->weight.copy_(tp::initNormal({kHidden, kIn}, 0.3, kSeed, "fc1.weight"));
    fc2->weight.copy_(tp::initNormal({kClasses, kHidden}, 0.3, kSeed, "fc2.weight"));
    fc1->bias.zero_();
    fc2->bias.zero_();
  }
  std::vector<double> reference = train(full, x, y);
  double worst = 0;
  for (size_t i = 0; i < losses.size(); ++i)
    worst = std::max(worst, std::abs(losses[i] - reference[i]) / std::max(1.0, std::abs(reference[i])));
  std::printf("final loss %.6f unsplit %.6f max difference %.2e\n", losses.back(), reference.back(), worst);
  if (worst > 1e-5) {
    std::fprintf(stderr, "the split model's losses differ from the unsplit model's by %.2e (> 1e-5)\n", worst);
    return 1;
  }
  return 0;
}

int main() {
  try {
    return run();
  } catch (const std::exception& e) {  // e.g. a rank count that does not divide the hidden width
    std::fprintf(stderr, "tensor_parallel_mlp: %s\n", e.what());
    return 1;
  }
}
