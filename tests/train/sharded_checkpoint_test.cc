// Sharded checkpoints: a tiny GPT trained with AdamW at one tp (ranks as threads) is saved and
// loaded at another tp (1, 2, 3 with a padded vocabulary, 4), and with dp x tp; parameters and
// optimizer state equal the originals gathered in memory (unshard by name, no file involved) bit
// for bit, and the next-step loss equals the loss of the run that did not stop. Plain checkpoints
// load at any tp and sharded ones load through loadCheckpoint. Missing, foreign, corrupt shards
// and other models are refused, naming the file, before anything changes; a failed shard write
// leaves no main file. convertCheckpoint's output loads with torch::pickle_load (and Python's
// torch.load) and equals the unsharded model; the chorus binary's `checkpoint convert` prints
// its summary.
#include "chorus/train/sharded_checkpoint.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/parallel/mesh.h"
#include "chorus/parallel/tensor/sharding.h"
#include "chorus/train/checkpoint.h"
#include "chorus/train/gpt.h"
#include "util/rank_threads.h"

namespace chorus::train {
namespace {

namespace fs = std::filesystem;
using parallel::ShardSpec;
using testutil::runRanks;
using Tensors = std::map<std::string, torch::Tensor>;

std::shared_ptr<comm::ProcessGroup> borrow(comm::ProcessGroup& g) {
  return std::shared_ptr<comm::ProcessGroup>(&g, [](comm::ProcessGroup*) {});
}

// 12 heads: every tp in 1..4 divides them; at tp 3 the vocabulary 256 pads to 258.
GptOptions tiny(uint64_t seed = 11, int64_t layers = 2, int64_t embed = 24) {
  GptOptions o;
  o.vocab = 256;
  o.layers = layers;
  o.embed = embed;
  o.heads = 12;
  o.context = 8;
  o.seed = seed;
  return o;
}

std::unique_ptr<torch::optim::AdamW> adamw(Gpt& m) {
  return std::make_unique<torch::optim::AdamW>(m->parameters(), torch::optim::AdamWOptions(1e-2).weight_decay(0.1));
}

struct Batch {
  torch::Tensor ids, targets;
};
Batch batch(int64_t i) {
  auto gen = at::detail::createCPUGenerator(500 + i);
  return {torch::randint(0, 256, {2, 8}, gen), torch::randint(0, 256, {2, 8}, gen)};
}

// One AdamW step on batch i; returns the loss before the step.
double step(Gpt& m, torch::optim::Optimizer& opt, int64_t i) {
  Batch b = batch(i);
  opt.zero_grad();
  torch::Tensor loss = m->loss(b.ids, b.targets);
  loss.backward();
  if (m->options().sequenceParallel) parallel::allReduceSequenceParallelGradients(*m, m->tp());
  opt.step();
  return loss.item<double>();
}

double lossOn(Gpt& m, int64_t i) {
  torch::NoGradGuard g;
  Batch b = batch(i);
  return m->loss(b.ids, b.targets).item<double>();
}

// This rank's parameters and AdamW state by name ("<name>", "<name>/exp_avg", "<name>/exp_avg_sq"),
// and the step counts.
struct Snapshot {
  Tensors tensors;
  std::map<std::string, int64_t> steps;
};
Snapshot snapshot(Gpt& m, torch::optim::Optimizer& opt) {
  Snapshot s;
  for (const auto& p : m->named_parameters()) {
    s.tensors[p.key()] = p.value().detach().clone();
    auto it = opt.state().find(c10::guts::to_string(p.value().unsafeGetTensorImpl()));
    if (it == opt.state().end()) continue;
    const auto& st = static_cast<const torch::optim::AdamWParamState&>(*it->second);
    s.tensors[p.key() + "/exp_avg"] = st.exp_avg().clone();
    s.tensors[p.key() + "/exp_avg_sq"] = st.exp_avg_sq().clone();
    s.steps[p.key()] = st.step();
  }
  return s;
}

// The full tensors of every rank's snapshot (rank order), joined by the specs of the model that
// took them.
Snapshot gather(const std::vector<Snapshot>& ranks, const std::map<std::string, ShardSpec>& specs) {
  Snapshot out;
  for (const auto& [name, t] : ranks[0].tensors) {
    std::vector<torch::Tensor> shards;
    for (const auto& r : ranks) shards.push_back(r.tensors.at(name));
    out.tensors[name] = parallel::unshard(shards, specs.at(name.substr(0, name.find('/'))));
  }
  out.steps = ranks[0].steps;
  return out;
}

void expectSame(const Snapshot& got, const Snapshot& want) {
  ASSERT_EQ(got.tensors.size(), want.tensors.size());
  for (const auto& [name, t] : want.tensors) {
    ASSERT_TRUE(got.tensors.count(name)) << name;
    EXPECT_TRUE(torch::equal(got.tensors.at(name), t)) << name << " differs";
  }
  EXPECT_EQ(got.steps, want.steps);
}

// A GPT at tp = k run on k threads: fn(rank, model, optimizer, group).
using RankBody = std::function<void(int, Gpt&, torch::optim::AdamW&, const parallel::TpGroup&)>;
void atTp(int k, const GptOptions& o, const RankBody& fn) {
  runRanks(k, "loopback", [&](comm::ProcessGroup& g) {
    auto tp = borrow(g);
    Gpt m(o, tp);
    auto opt = adamw(m);
    fn(g.rank(), m, *opt, tp);
  });
}

TrainState someState(int64_t step) {
  TrainState st;
  st.epoch = 1;
  st.stepInEpoch = 3;
  st.globalStep = step;
  st.scalars["amp.scale"] = 1024.0;
  return st;
}

class ShardedCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = str("chorus_shckpt_", ::getpid(), "_", info->test_suite_name(), "_", info->name());
    std::replace(name.begin(), name.end(), '/', '_');
    dir_ = (fs::temp_directory_path() / name).string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  // Trains `steps` AdamW steps at tp = k and saves at `file`; returns the gathered state.
  Snapshot trainAndSave(int k, const std::string& file, int64_t steps = 2, const GptOptions& o = tiny(),
                        int64_t globalStep = 7) {
    std::vector<Snapshot> ranks(k);
    std::map<std::string, ShardSpec> specs;
    std::mutex mu;
    atTp(k, o, [&](int r, Gpt& m, torch::optim::AdamW& opt, const parallel::TpGroup& tp) {
      for (int64_t i = 0; i < steps; ++i) step(m, opt, i);
      saveShardedCheckpoint(file, *m, opt, someState(globalStep), tp);
      ranks[r] = snapshot(m, opt);
      std::lock_guard<std::mutex> lock(mu);
      if (r == 0) specs = m->shardSpecs();
    });
    return gather(ranks, specs);
  }

  // Loads `file` at tp = k into a model of another seed; returns the gathered state and rank
  // 0's TrainState.
  Snapshot loadAt(int k, const std::string& file, TrainState* state = nullptr, const GptOptions& o = tiny(77)) {
    std::vector<Snapshot> ranks(k);
    std::map<std::string, ShardSpec> specs;
    std::mutex mu;
    atTp(k, o, [&](int r, Gpt& m, torch::optim::AdamW& opt, const parallel::TpGroup&) {
      TrainState st = loadShardedCheckpoint(file, *m, opt, r, k);
      ranks[r] = snapshot(m, opt);
      std::lock_guard<std::mutex> lock(mu);
      if (r == 0) {
        specs = m->shardSpecs();
        if (state) *state = st;
      }
    });
    return gather(ranks, specs);
  }

  std::string dir_;
};

std::string readAll(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
void writeAll(const std::string& p, const std::string& data) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << data;
}

// ---- re-sharding ----

class AtAnyTp : public ShardedCheckpoint, public ::testing::WithParamInterface<int> {};

TEST_P(AtAnyTp, SavedAtTp2LoadsBitForBit) {
  const int k = GetParam();
  const std::string file = path(checkpointName(7));
  Snapshot want = trainAndSave(2, file);
  EXPECT_TRUE(fs::exists(file));
  EXPECT_TRUE(fs::exists(file + ".tp1-of-2"));
  ASSERT_TRUE(want.tensors.count("wte.weight/exp_avg"));
  EXPECT_GT(want.tensors.at("wte.weight/exp_avg").abs().max().item<double>(), 0.0);  // state that matters

  TrainState st;
  Snapshot got = loadAt(k, file, &st);
  expectSame(got, want);
  EXPECT_EQ(st.globalStep, 7);
  EXPECT_EQ(st.epoch, 1);
  EXPECT_EQ(st.stepInEpoch, 3);
  EXPECT_EQ(st.scalars.at("amp.scale"), 1024.0);

  if (k == 3) {  // the vocabulary pads to 258 rows at tp 3: the last rank's two extra rows are zero
    atTp(3, tiny(77), [&](int r, Gpt& m, torch::optim::AdamW& opt, const parallel::TpGroup&) {
      loadShardedCheckpoint(file, *m, opt, r, 3);
      torch::Tensor w = m->wte->weight;
      EXPECT_EQ(w.size(0), 86);
      if (r == 2) {
        EXPECT_TRUE(torch::equal(w.narrow(0, 84, 2), torch::zeros({2, 24})));
      }
    });
  }
}

INSTANTIATE_TEST_SUITE_P(Tp, AtAnyTp, ::testing::Values(1, 2, 3, 4), [](const auto& info) {
  return "tp" + std::to_string(info.param);
});

// A padded save (tp 3, 258 rows) reloads at tp 2 with the 256 real rows, and back; with an
// untied output layer (lm_head, padded too).
TEST_F(ShardedCheckpoint, PaddedVocabularyReloadsUnpadded) {
  const std::string a = path(checkpointName(7)), b = path(checkpointName(8));
  GptOptions o = tiny(), other = tiny(77);
  o.tieEmbeddings = other.tieEmbeddings = false;
  Snapshot want = trainAndSave(3, a, 2, o);
  EXPECT_EQ(want.tensors.at("wte.weight").size(0), 256);
  EXPECT_EQ(want.tensors.at("lm_head.weight/exp_avg").size(0), 256);
  expectSame(loadAt(2, a, nullptr, other), want);
  atTp(2, other, [&](int r, Gpt& m, torch::optim::AdamW& opt, const parallel::TpGroup& tp) {
    loadShardedCheckpoint(a, *m, opt, r, 2);
    saveShardedCheckpoint(b, *m, opt, someState(8), tp);
  });
  expectSame(loadAt(3, b, nullptr, other), want);
  CheckpointLayout layout = readCheckpointLayout(b);
  EXPECT_TRUE(layout.sharded);
  EXPECT_EQ(layout.tp, 2);
  EXPECT_EQ(layout.globalStep, 8);
  EXPECT_EQ(layout.files, (std::vector<std::string>{b, b + ".tp1-of-2"}));
}

// A plain checkpoint is tp 1: it loads at tp 2; a sharded one loads through loadCheckpoint.
TEST_F(ShardedCheckpoint, PlainToTp2AndBack) {
  const std::string plain = path(checkpointName(1)), sharded = path(checkpointName(2)), back = path(checkpointName(3));
  Gpt m(tiny(), nullptr);
  auto opt = adamw(m);
  for (int64_t i = 0; i < 2; ++i) step(m, *opt, i);
  saveCheckpoint(plain, *m, *opt, someState(1));
  Snapshot want = snapshot(m, *opt);

  expectSame(loadAt(2, plain), want);
  EXPECT_FALSE(readCheckpointLayout(plain).sharded);
  EXPECT_EQ(readCheckpointLayout(plain).describe(), "plain (unsharded)");
  atTp(2, tiny(77), [&](int r, Gpt& m2, torch::optim::AdamW& opt2, const parallel::TpGroup& tp) {
    loadShardedCheckpoint(plain, *m2, opt2, r, 2);
    saveShardedCheckpoint(sharded, *m2, opt2, someState(2), tp);
  });
  Gpt one(tiny(77), nullptr);
  auto optOne = adamw(one);
  TrainState st = loadCheckpoint(sharded, *one, *optOne);  // delegates to the sharded loader
  EXPECT_EQ(st.globalStep, 2);
  expectSame(snapshot(one, *optOne), want);

  // A sharded save at tp 1 is a main file alone, and loads either way.
  saveShardedCheckpoint(back, *one, *optOne, someState(3), nullptr);
  EXPECT_TRUE(checkpointShardFiles(back).empty());
  Gpt again(tiny(78), nullptr);
  auto optAgain = adamw(again);
  loadCheckpoint(back, *again, *optAgain);
  expectSame(snapshot(again, *optAgain), want);
  expectSame(loadAt(4, back), want);
}

// The resume test at library level: save at tp 2, load at tp 1 and 4, one more AdamW step on the
// same batch; the losses equal those of the tp 2 run that did not stop.
TEST_F(ShardedCheckpoint, NextStepLossEqualsNotStopping) {
  const std::string file = path(checkpointName(7));
  double refStep = 0, refNext = 0;
  atTp(2, tiny(), [&](int r, Gpt& m, torch::optim::AdamW& opt, const parallel::TpGroup& tp) {
    for (int64_t i = 0; i < 3; ++i) step(m, opt, i);
    saveShardedCheckpoint(file, *m, opt, someState(3), tp);
    const double s = step(m, opt, 3);
    const double n = lossOn(m, 4);
    if (r == 0) refStep = s, refNext = n;
  });
  for (int k : {1, 4}) {
    double gotStep = 0, gotNext = 0;
    atTp(k, tiny(77), [&](int r, Gpt& m, torch::optim::AdamW& opt, const parallel::TpGroup&) {
      loadShardedCheckpoint(file, *m, opt, r, k);
      const double s = step(m, opt, 3);
      const double n = lossOn(m, 4);
      if (r == 0) gotStep = s, gotNext = n;
    });
    EXPECT_NEAR(gotStep, refStep, 1e-6) << "tp " << k;
    EXPECT_NEAR(gotNext, refNext, 1e-6) << "tp " << k;
  }
  // Without the optimizer's state the next step differs: the test can tell.
  double fresh = 0;
  atTp(1, tiny(77), [&](int, Gpt& m, torch::optim::AdamW& opt, const parallel::TpGroup&) {
    loadShardedCheckpoint(file, *m, opt, 0, 1);
    auto clean = adamw(m);
    step(m, *clean, 3);
    fresh = lossOn(m, 4);
  });
  EXPECT_GT(std::abs(fresh - refNext), 1e-4);
}

// dp 2 x tp 2: only dp rank 0's tp group writes (dp rank 1 holds other values: were they
// written, the files would differ from dp rank 0's); all four ranks load. With sequence
// parallelism (its LayerNorms are replicated but marked).
TEST_F(ShardedCheckpoint, DataParallelReplicasWriteOnceAndAllLoad) {
  const std::string file = path(checkpointName(5));
  std::vector<Snapshot> dp0(2);
  std::vector<std::string> failures;
  std::mutex mu;
  std::map<std::string, ShardSpec> specs;
  runRanks(4, "loopback", [&](comm::ProcessGroup& g) {
    auto mesh = parallel::ProcessMesh::make(borrow(g), 2);
    const int dp = mesh.coord("dp"), t = mesh.coord("tp");
    GptOptions o = tiny(dp == 0 ? 11 : 12), other = tiny(77);
    o.sequenceParallel = other.sequenceParallel = true;
    Gpt m(o, mesh.group("tp"));
    auto opt = adamw(m);
    step(m, *opt, dp);
    saveShardedCheckpoint(file, *m, *opt, someState(5), mesh);
    if (dp == 0) dp0[t] = snapshot(m, *opt);
    g.barrier();  // every save has returned

    Gpt fresh(other, mesh.group("tp"));
    auto freshOpt = adamw(fresh);
    loadShardedCheckpoint(file, *fresh, *freshOpt, mesh);
    Snapshot got = snapshot(fresh, *freshOpt);
    g.barrier();  // dp0 is complete
    std::lock_guard<std::mutex> lock(mu);
    if (g.rank() == 0) specs = m->shardSpecs();
    for (const auto& [name, want] : dp0[t].tensors) {
      if (!torch::equal(got.tensors.at(name), want)) failures.push_back(str("rank ", g.rank(), ": ", name));
    }
  });
  EXPECT_TRUE(failures.empty()) << failures.size() << " tensors differ, first " << failures.front();
  std::set<std::string> files;
  for (const auto& e : fs::directory_iterator(dir_)) files.insert(e.path().filename().string());
  EXPECT_EQ(files, (std::set<std::string>{checkpointName(5), checkpointName(5) + ".tp1-of-2"}));
}

// A rank that cannot write its shard (a folder stands where its file goes): every rank throws,
// the failing one its own error, and no main file is written.
TEST_F(ShardedCheckpoint, FailedShardWriteWritesNoMainFile) {
  const std::string file = path(checkpointName(7));
  fs::create_directories(file + ".tp1-of-2/blocker");
  std::vector<std::string> messages(2);
  atTp(2, tiny(), [&](int r, Gpt& m, torch::optim::AdamW& opt, const parallel::TpGroup& tp) {
    try {
      saveShardedCheckpoint(file, *m, opt, someState(7), tp);
    } catch (const Error& e) {
      messages[r] = e.what();
    }
  });
  EXPECT_NE(messages[0].find("tp rank 1 could not write its shard file " + file + ".tp1-of-2"), std::string::npos)
      << messages[0];
  EXPECT_NE(messages[1].find(file + ".tp1-of-2"), std::string::npos) << messages[1];
  EXPECT_FALSE(fs::exists(file));
}

// Saving a step again at another tp removes the shard files of the earlier layout.
TEST_F(ShardedCheckpoint, ResaveAtAnotherTpRemovesOldShards) {
  const std::string file = path(checkpointName(7));
  trainAndSave(4, file);
  EXPECT_EQ(checkpointShardFiles(file).size(), 3u);
  Snapshot want = trainAndSave(2, file);
  EXPECT_EQ(checkpointShardFiles(file), std::vector<std::string>{file + ".tp1-of-2"});
  expectSame(loadAt(3, file), want);
  // Pruning takes the main file with its shards.
  CheckpointHistory h({file});
  const std::string next = path(checkpointName(9));
  trainAndSave(2, next, 1, tiny(), 9);
  EXPECT_EQ(h.add(next, 1), (std::vector<std::string>{file, file + ".tp1-of-2"}));
  EXPECT_TRUE(fs::exists(next + ".tp1-of-2"));
}

// ---- refusals: each names the file and what differs, and leaves the model as it was ----

class Refusals : public ShardedCheckpoint {
 protected:
  void SetUp() override {
    ShardedCheckpoint::SetUp();
    file_ = path(checkpointName(7));
    shard_ = file_ + ".tp1-of-2";
    trainAndSave(2, file_);
  }

  // Loading file_ at tp 1 into `o` fails with every one of parts in the message; the model and
  // its optimizer are untouched.
  void expectRefused(std::initializer_list<std::string> parts, const GptOptions& o = tiny(77)) {
    Gpt m(o, nullptr);
    auto opt = adamw(m);
    Snapshot before = snapshot(m, *opt);
    try {
      loadShardedCheckpoint(file_, *m, *opt, 0, 1);
      ADD_FAILURE() << "expected chorus::Error";
    } catch (const Error& e) {
      const std::string msg = e.what();
      for (const auto& part : parts) EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in: " << msg;
    }
    expectSame(snapshot(m, *opt), before);
    EXPECT_TRUE(opt->state().empty());
  }

  std::string file_, shard_;
};

TEST_F(Refusals, MissingShard) {
  fs::remove(shard_);
  expectRefused({shard_, "is missing", "tp = 2"});
}

TEST_F(Refusals, ShardOfAnotherStep) {
  const std::string other = path(checkpointName(8));
  trainAndSave(2, other, 2, tiny(), 8);
  fs::copy_file(other + ".tp1-of-2", shard_, fs::copy_options::overwrite_existing);
  expectRefused({shard_, "holds step 8", "step 7"});
}

TEST_F(Refusals, ShardOfAnotherSaveOfTheSameStep) {
  fs::create_directories(path("other"));
  const std::string other = path("other/" + checkpointName(7));
  trainAndSave(2, other, 3);  // one step more: other values, same step number
  fs::copy_file(other + ".tp1-of-2", shard_, fs::copy_options::overwrite_existing);
  expectRefused({shard_, "another save of step 7"});
}

TEST_F(Refusals, CorruptShard) {
  std::string bytes = readAll(shard_);
  bytes[bytes.size() - 3] ^= 0x01;
  writeAll(shard_, bytes);
  expectRefused({shard_, "checksum"});
}

TEST_F(Refusals, ShardOfAnotherLayout) {
  fs::create_directories(path("other"));
  const std::string other = path("other/" + checkpointName(7));
  trainAndSave(3, other);
  fs::copy_file(other + ".tp1-of-3", shard_, fs::copy_options::overwrite_existing);
  expectRefused({shard_, "tp rank 1 of 3", "expects tp rank 1 of 2"});
}

TEST_F(Refusals, OtherModels) {
  expectRefused({file_, "h.2.ln1.weight", "missing"}, tiny(77, /*layers=*/3));
  expectRefused({file_, "'h.1.ln1.weight' is in the checkpoint but not in the model"}, tiny(77, /*layers=*/1));
  expectRefused({file_, "wte.weight", "full shape", "[256, 24]", "[256, 36]"}, tiny(77, 2, /*embed=*/36));
  GptOptions vocab = tiny(77);
  vocab.vocab = 300;
  expectRefused({file_, "wte.weight", "[256, 24]", "[300, 24]"}, vocab);
}

TEST_F(Refusals, OtherOptimizerAndShardFileAsCheckpoint) {
  Gpt m(tiny(77), nullptr);
  torch::optim::SGD sgd(m->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  try {
    loadShardedCheckpoint(file_, *m, sgd, 0, 1);
    ADD_FAILURE() << "expected chorus::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'adamw', but this run uses 'sgd'"), std::string::npos) << e.what();
  }
  auto opt = adamw(m);
  try {
    loadCheckpoint(shard_, *m, *opt);
    ADD_FAILURE() << "expected chorus::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a shard file"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(file_), std::string::npos) << e.what();
  }
  EXPECT_THROW(loadShardedCheckpoint(file_, *m, *opt, 2, 2), InvalidArgument);
}

// ---- convert ----

Tensors readPickle(const std::string& file) {
  std::string bytes = readAll(file);
  c10::IValue v = torch::pickle_load(std::vector<char>(bytes.begin(), bytes.end()));
  Tensors out;
  for (const auto& item : v.toGenericDict()) out[item.key().toStringRef()] = item.value().toTensor();
  return out;
}

TEST_F(ShardedCheckpoint, ConvertJoinsShardsIntoOnePickle) {
  const std::string file = path(checkpointName(7)), out = path("model.pt"), withOpt = path("model-optim.pt");
  Snapshot want = trainAndSave(3, file);  // padded vocabulary
  ConvertReport r = convertCheckpoint(file, out);
  EXPECT_EQ(r.layout.tp, 3);
  EXPECT_TRUE(r.layout.sharded);
  EXPECT_EQ(r.layout.globalStep, 7);
  EXPECT_EQ(r.optimizer, "adamw");
  Tensors got = readPickle(out);
  std::set<std::string> names;
  for (const auto& [name, t] : want.tensors) {
    if (name.find('/') != std::string::npos) continue;
    names.insert(name);
    ASSERT_TRUE(got.count(name)) << name;
    EXPECT_TRUE(torch::equal(got.at(name), t)) << name;
  }
  EXPECT_EQ(got.size(), names.size());
  EXPECT_EQ(r.parameters, names.size());
  EXPECT_EQ(got.at("wte.weight").size(0), 256);

  ConvertReport ro = convertCheckpoint(file, withOpt, /*withOptimizer=*/true);
  Tensors all = readPickle(withOpt);
  EXPECT_EQ(ro.tensors, all.size());
  EXPECT_EQ(all.size(), names.size() * 4);  // each parameter: itself, step, exp_avg, exp_avg_sq
  EXPECT_TRUE(torch::equal(all.at("optim/wte.weight/exp_avg"), want.tensors.at("wte.weight/exp_avg")));
  EXPECT_TRUE(torch::equal(all.at("optim/h.1.attn.qkv.weight/exp_avg_sq"), want.tensors.at("h.1.attn.qkv.weight/exp_avg_sq")));
  EXPECT_EQ(all.at("optim/lnf.bias/step").item<int64_t>(), 2);

  try {
    convertCheckpoint(file, out);
    ADD_FAILURE() << "expected chorus::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("exists"), std::string::npos) << e.what();
  }
  fs::remove(file + ".tp2-of-3");
  fs::remove(out);
  EXPECT_THROW(convertCheckpoint(file, out), Error);
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(ShardedCheckpoint, ConvertsAPlainCheckpoint) {
  const std::string file = path(checkpointName(1)), out = path("plain.pt");
  Gpt m(tiny(), nullptr);
  auto opt = adamw(m);
  step(m, *opt, 0);
  saveCheckpoint(file, *m, *opt, someState(1));
  ConvertReport r = convertCheckpoint(file, out, true);
  EXPECT_FALSE(r.layout.sharded);
  Tensors got = readPickle(out);
  Snapshot want = snapshot(m, *opt);
  for (const auto& [name, t] : want.tensors) {
    const size_t slash = name.find('/');
    const std::string key = slash == std::string::npos ? name : "optim/" + name;
    ASSERT_TRUE(got.count(key)) << key;
    EXPECT_TRUE(torch::equal(got.at(key), t)) << key;
  }
}

// Python's torch.load reads the converted file (skipped without python3 and its torch).
TEST_F(ShardedCheckpoint, ConvertedFileLoadsInPython) {
  if (std::system("/usr/bin/python3 -c 'import torch' > /dev/null 2>&1") != 0) GTEST_SKIP() << "no python3 with torch";
  const std::string file = path(checkpointName(7)), out = path("py.pt"), log = path("py.txt");
  Snapshot want = trainAndSave(2, file, 1);
  convertCheckpoint(file, out);
  const std::string cmd = str("/usr/bin/python3 -c 'import sys, torch; d = torch.load(sys.argv[1]); w = d[\"wte.weight\"]; ",
                              "print(len(d), sorted(d)[0], tuple(w.shape), repr(w.double().sum().item()))' ", out, " > ", log,
                              " 2>&1");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << readAll(log);
  const torch::Tensor w = want.tensors.at("wte.weight");
  std::istringstream in(readAll(log));
  size_t count = 0;
  std::string first, shape0, shape1;
  double sum = 0;
  in >> count >> first >> shape0 >> shape1 >> sum;
  EXPECT_EQ(count, 28u) << readAll(log);  // wte, wpe, 12 per layer, lnf weight and bias
  EXPECT_EQ(first, "h.0.attn.proj.bias") << readAll(log);
  EXPECT_EQ(shape0 + shape1, "(256,24)") << readAll(log);
  EXPECT_NEAR(sum, w.to(torch::kFloat64).sum().item<double>(), 1e-9 * w.abs().sum().item<double>()) << readAll(log);
}

// The chorus binary's subcommand, when it is built.
TEST_F(ShardedCheckpoint, CliConvertPrintsTheLayout) {
  const std::string chorus = std::string(CHORUS_BINARY_DIR) + "/chorus";
  if (!fs::exists(chorus)) GTEST_SKIP() << chorus << " is not built";
  const std::string file = path(checkpointName(7)), out = path("cli.pt"), log = path("cli.txt");
  Snapshot want = trainAndSave(2, file);
  const std::string cmd = str(chorus, " checkpoint convert ", file, " ", out, " > ", log, " 2>&1");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << readAll(log);
  const std::string text = readAll(log);
  EXPECT_NE(text.find("sharded at tp 2, pp 1, dp 1: 2 files; global step 7"), std::string::npos) << text;
  EXPECT_TRUE(torch::equal(readPickle(out).at("h.0.mlp.fc1.weight"), want.tensors.at("h.0.mlp.fc1.weight")));
  const std::string bad = str(chorus, " checkpoint convert ", file, " > ", log, " 2>&1");
  EXPECT_NE(std::system(bad.c_str()), 0);
  EXPECT_NE(readAll(log).find("two files"), std::string::npos) << readAll(log);
}

}  // namespace
}  // namespace chorus::train
