// Your own LibTorch model, trained on several processes with chorus's DistributedDataParallel.
// The data is synthetic (Fashion-MNIST-sized inputs, labelled by a fixed random linear
// "teacher"), so the program needs no files, and the loss falls within a few epochs.
//
//   build/chorus launch -n 2 build/ddp_custom_model      # 2 ranks; also under torchrun or mpirun
//
// Every rank builds the same model and data; the DistributedSampler gives each rank its own
// share of every epoch, and DDP averages the gradients during loss.backward(). docs/ddp.md
// walks through it.
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>

#include "chorus/comm/group.h"
#include "chorus/parallel/data/ddp.h"
#include "chorus/parallel/data/sampler.h"

// The user's own model: 784 inputs -> 128 hidden -> 10 classes.
struct NetImpl : torch::nn::Module {
  NetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(784, 128));
    fc2 = register_module("fc2", torch::nn::Linear(128, 10));
  }
  torch::Tensor forward(torch::Tensor x) { return fc2(torch::relu(fc1(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(Net);

int main() {
  auto group = chorus::comm::ProcessGroup::fromEnvironment();  // joins the job of this process
  torch::manual_seed(0);  // the same data on every rank
  torch::Tensor inputs = torch::randn({2048, 784});
  torch::Tensor labels = inputs.matmul(torch::randn({784, 10})).argmax(1);

  Net model;
  chorus::parallel::DistributedDataParallel ddp(model, group);  // copies rank 0's weights to all
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  chorus::parallel::DistributedSampler sampler(inputs.size(0), group->rank(), group->size(),
                                               /*shuffle=*/true, /*seed=*/1);
  const int64_t batch = 64;
  double loss = 0;
  for (int epoch = 0; epoch < 5; ++epoch) {
    sampler.setEpoch(epoch);  // a new shuffle each epoch, the same on every rank
    torch::Tensor mine = torch::tensor(sampler.indices());
    double sum = 0;
    int64_t steps = 0;
    for (int64_t i = 0; i < mine.size(0); i += batch, ++steps) {
      torch::Tensor idx = mine.narrow(0, i, std::min(batch, mine.size(0) - i));
      torch::Tensor x = inputs.index_select(0, idx), y = labels.index_select(0, idx);
      opt.zero_grad();
      torch::Tensor l = torch::nn::functional::cross_entropy(ddp.forward(x), y);
      l.backward();  // averages the gradients over the ranks
      opt.step();
      sum += l.item<double>();
    }
    loss = sum / static_cast<double>(steps);  // rank 0's mean over its share of the epoch
    if (group->rank() == 0) std::printf("epoch %d loss %.4f\n", epoch, loss);
  }
  if (group->rank() == 0) std::printf("final loss %.4f\n", loss);
  return 0;
}
