// Helpers shared by the tensor-parallel tests: run a function on k loopback ranks and bring
// back what each rank recorded, so the comparisons with the unsplit reference happen on the
// test's own thread.
#pragma once

#include <gtest/gtest.h>

#include <torch/torch.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "chorus/parallel/tensor/communication.h"
#include "util/rank_threads.h"

namespace chorus::parallel::tptest {

using Record = std::map<std::string, torch::Tensor>;

// Runs fn on k ranks (threads, loopback transport); returns each rank's record.
inline std::vector<Record> runTp(int k, const std::function<void(const TpGroup&, Record&)>& fn) {
  std::vector<Record> records(k);
  testutil::runRanks(k, "loopback", [&](comm::ProcessGroup& g) {
    TpGroup tp(&g, [](comm::ProcessGroup*) {});
    Record r;
    fn(tp, r);
    records[g.rank()] = std::move(r);  // each rank its own slot
  });
  return records;
}

// A tensor of normal values from its own generator (never torch's global one: ranks are
// threads of one process).
inline torch::Tensor randn(at::IntArrayRef shape, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return torch::randn(shape, gen);
}

// |got - want| <= atol + rtol * |want| elementwise, and the same shape.
inline void expectClose(const torch::Tensor& got, const torch::Tensor& want, const std::string& what,
                        double rtol = 1e-5, double atol = 1e-6) {
  ASSERT_TRUE(got.defined()) << what << ": undefined";
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  torch::Tensor g = got.detach().to(torch::kDouble), w = want.detach().to(torch::kDouble);
  torch::Tensor excess = (g - w).abs() - (atol + rtol * w.abs());
  EXPECT_LE(excess.max().item<double>(), 0.0)
      << what << ": max |diff| " << (g - w).abs().max().item<double>() << "\n got  " << g.flatten().slice(0, 0, 8)
      << "\n want " << w.flatten().slice(0, 0, 8);
}

// Each rank's entry `name`.
inline std::vector<torch::Tensor> collect(const std::vector<Record>& records, const std::string& name) {
  std::vector<torch::Tensor> out;
  for (const auto& r : records) out.push_back(r.at(name));
  return out;
}

// The tensor-parallel sizes that divide n (of 1, 2, 3, 4).
inline std::vector<int> tpSizesDividing(int64_t n) {
  std::vector<int> ks;
  for (int k : {1, 2, 3, 4})
    if (n % k == 0) ks.push_back(k);
  return ks;
}

}  // namespace chorus::parallel::tptest
