// Bootstrap from the environment, through a map instead of the process environment: every
// convention, the precedence between them, the errors that name what is missing, Slurm node
// lists, and connectStore hosting or joining a store.
#include "chorus/comm/rendezvous/bootstrap.h"

#include <gtest/gtest.h>

#include <map>
#include <thread>

#include "chorus/common/error.h"

namespace chorus::comm {
namespace {

using Vars = std::map<std::string, std::string>;

EnvLookup lookupIn(const Vars& vars) {
  return [vars](const char* name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

BootstrapInfo detect(const Vars& vars) { return detectBootstrap(lookupIn(vars)); }

// Expects a ConfigError whose message contains every one of `parts`.
void expectConfigError(const Vars& vars, std::initializer_list<const char*> parts) {
  try {
    BootstrapInfo info = detect(vars);
    FAIL() << "accepted; source " << info.source;
  } catch (const ConfigError& e) {
    for (const char* p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

const Vars kChorus = {{"CHORUS_RANK", "2"},           {"CHORUS_WORLD_SIZE", "8"},
                      {"CHORUS_LOCAL_RANK", "2"},     {"CHORUS_LOCAL_WORLD_SIZE", "4"},
                      {"CHORUS_STORE_ADDR", "10.1.1.1"}, {"CHORUS_STORE_PORT", "29400"},
                      {"CHORUS_JOB_ID", "job-7"},     {"CHORUS_JOB_SECRET", "s3cret"}};

const Vars kTorchrun = {{"RANK", "5"},           {"WORLD_SIZE", "16"},         {"LOCAL_RANK", "1"},
                        {"LOCAL_WORLD_SIZE", "8"}, {"MASTER_ADDR", "node01"}, {"MASTER_PORT", "29500"}};

const Vars kOpenMpi = {{"OMPI_COMM_WORLD_RANK", "3"},
                       {"OMPI_COMM_WORLD_SIZE", "4"},
                       {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                       {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}};

const Vars kSlurm = {{"SLURM_PROCID", "0"},          {"SLURM_NTASKS", "6"},
                     {"SLURM_LOCALID", "0"},         {"SLURM_TASKS_PER_NODE", "3(x2)"},
                     {"SLURM_STEP_NODELIST", "gpu[07-08]"}, {"SLURM_JOB_ID", "123456"},
                     {"SLURM_STEP_ID", "2"}};

Vars with(Vars base, const Vars& extra) {
  for (const auto& [k, v] : extra) base[k] = v;
  return base;
}

Vars without(Vars base, std::initializer_list<const char*> names) {
  for (const char* n : names) base.erase(n);
  return base;
}

TEST(Bootstrap, Chorus) {
  BootstrapInfo i = detect(kChorus);
  EXPECT_EQ(i.source, "chorus");
  EXPECT_EQ(i.rank, 2);
  EXPECT_EQ(i.worldSize, 8);
  EXPECT_EQ(i.localRank, 2);
  EXPECT_EQ(i.localWorldSize, 4);
  EXPECT_EQ(i.storeAddr, "10.1.1.1");
  EXPECT_EQ(i.storePort, 29400);
  EXPECT_FALSE(i.hostStore);  // the launcher hosts it
  EXPECT_FALSE(i.needsStoreFromMpi);
  EXPECT_EQ(i.jobId, "job-7");
  EXPECT_EQ(i.secret, "s3cret");
}

TEST(Bootstrap, ChorusLocalDefaultsToOneHost) {
  BootstrapInfo i = detect(without(kChorus, {"CHORUS_LOCAL_RANK", "CHORUS_LOCAL_WORLD_SIZE"}));
  EXPECT_EQ(i.localRank, 2);
  EXPECT_EQ(i.localWorldSize, 8);
}

TEST(Bootstrap, ChorusNeedsTheStore) {
  expectConfigError(without(kChorus, {"CHORUS_STORE_ADDR", "CHORUS_STORE_PORT"}), {"CHORUS_STORE_ADDR"});
  expectConfigError(without(kChorus, {"CHORUS_STORE_PORT"}), {"CHORUS_STORE_PORT"});
  expectConfigError(without(kChorus, {"CHORUS_WORLD_SIZE"}), {"CHORUS_WORLD_SIZE", "torchrun", "SLURM_PROCID"});
  expectConfigError(without(kChorus, {"CHORUS_RANK"}), {"CHORUS_RANK"});
}

TEST(Bootstrap, Torchrun) {
  BootstrapInfo i = detect(kTorchrun);
  EXPECT_EQ(i.source, "torchrun");
  EXPECT_EQ(i.rank, 5);
  EXPECT_EQ(i.worldSize, 16);
  EXPECT_EQ(i.localRank, 1);
  EXPECT_EQ(i.localWorldSize, 8);
  EXPECT_EQ(i.storeAddr, "node01");
  EXPECT_EQ(i.storePort, 29500);
  EXPECT_FALSE(i.hostStore);
  EXPECT_FALSE(i.secret.empty());
  EXPECT_FALSE(i.jobId.empty());

  BootstrapInfo zero = detect(with(kTorchrun, {{"RANK", "0"}, {"LOCAL_RANK", "0"}}));
  EXPECT_TRUE(zero.hostStore);
  EXPECT_EQ(zero.storePort, 29500);
  // Every rank derives the same job id and token.
  EXPECT_EQ(zero.jobId, i.jobId);
  EXPECT_EQ(zero.secret, i.secret);
}

TEST(Bootstrap, TorchrunAgentStoreMovesOursOnePortUp) {
  BootstrapInfo i = detect(with(kTorchrun, {{"TORCHELASTIC_USE_AGENT_STORE", "True"},
                                            {"TORCHELASTIC_RUN_ID", "run-42"}}));
  EXPECT_EQ(i.storePort, 29501);
  EXPECT_EQ(i.jobId, "run-42");
  EXPECT_EQ(detect(with(kTorchrun, {{"TORCHELASTIC_USE_AGENT_STORE", "False"}})).storePort, 29500);
  expectConfigError(with(kTorchrun, {{"TORCHELASTIC_USE_AGENT_STORE", "True"}, {"MASTER_PORT", "65535"}}),
                    {"MASTER_PORT"});
}

TEST(Bootstrap, TorchrunErrorsNameTheVariable) {
  expectConfigError(without(kTorchrun, {"MASTER_ADDR"}), {"MASTER_ADDR", "torchrun"});
  expectConfigError(without(kTorchrun, {"MASTER_PORT"}), {"MASTER_PORT"});
  expectConfigError(without(kTorchrun, {"MASTER_ADDR", "MASTER_PORT"}), {"MASTER_ADDR"});
  expectConfigError(without(kTorchrun, {"WORLD_SIZE"}), {"WORLD_SIZE", "CHORUS_RANK", "OMPI_COMM_WORLD_RANK"});
  expectConfigError(with(kTorchrun, {{"RANK", "16"}}), {"RANK=16", "16"});
  expectConfigError(with(kTorchrun, {{"RANK", "-1"}}), {"RANK"});
  expectConfigError(with(kTorchrun, {{"RANK", "two"}}), {"RANK", "two", "integer"});
  expectConfigError(with(kTorchrun, {{"WORLD_SIZE", "0"}}), {"WORLD_SIZE"});
  expectConfigError(with(kTorchrun, {{"LOCAL_RANK", "8"}}), {"LOCAL_RANK"});
  expectConfigError(with(kTorchrun, {{"MASTER_PORT", "70000"}}), {"MASTER_PORT"});
  expectConfigError(with(kTorchrun, {{"MASTER_PORT", "29500x"}}), {"MASTER_PORT"});
}

TEST(Bootstrap, TorchrunSingleRankNeedsNoMaster) {
  BootstrapInfo i = detect({{"RANK", "0"}, {"WORLD_SIZE", "1"}});
  EXPECT_EQ(i.source, "torchrun");
  EXPECT_TRUE(i.hostStore);
  EXPECT_EQ(i.storeAddr, "127.0.0.1");
  EXPECT_EQ(i.storePort, 0);
}

TEST(Bootstrap, OpenMpiWithoutStoreNeedsItFromMpi) {
  BootstrapInfo i = detect(kOpenMpi);
  EXPECT_EQ(i.source, "openmpi");
  EXPECT_EQ(i.rank, 3);
  EXPECT_EQ(i.worldSize, 4);
  EXPECT_EQ(i.localRank, 1);
  EXPECT_EQ(i.localWorldSize, 2);
  EXPECT_TRUE(i.needsStoreFromMpi);
  EXPECT_EQ(i.storePort, 0);
  EXPECT_FALSE(i.hostStore);
  // Rank 0 makes the secret and job id and sends them over MPI with the store address.
  EXPECT_TRUE(i.secret.empty());
  EXPECT_TRUE(i.jobId.empty());
  EXPECT_EQ(detect(with(kOpenMpi, {{"CHORUS_JOB_SECRET", "given"}})).secret, "given");
  EXPECT_TRUE(detect(with(kOpenMpi, {{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "0"}})).hostStore);
  EXPECT_EQ(detect(with(kOpenMpi, {{"PMIX_NAMESPACE", "prterun-host-123@1"}})).jobId, "openmpi-prterun-host-123@1");
}

TEST(Bootstrap, OpenMpiWithMasterOrChorusStore) {
  BootstrapInfo m = detect(with(kOpenMpi, {{"MASTER_ADDR", "10.0.0.9"}, {"MASTER_PORT", "31000"}}));
  EXPECT_FALSE(m.needsStoreFromMpi);
  EXPECT_EQ(m.storeAddr, "10.0.0.9");
  EXPECT_EQ(m.storePort, 31000);
  BootstrapInfo c = detect(with(kOpenMpi, {{"CHORUS_STORE_ADDR", "10.0.0.8"}, {"CHORUS_STORE_PORT", "31001"},
                                           {"MASTER_ADDR", "10.0.0.9"}, {"MASTER_PORT", "31000"}}));
  EXPECT_FALSE(c.needsStoreFromMpi);
  EXPECT_EQ(c.storeAddr, "10.0.0.8");
  EXPECT_EQ(c.storePort, 31001);
  expectConfigError(with(kOpenMpi, {{"MASTER_ADDR", "10.0.0.9"}}), {"MASTER_PORT"});
  expectConfigError(without(kOpenMpi, {"OMPI_COMM_WORLD_SIZE"}), {"OMPI_COMM_WORLD_SIZE"});
}

TEST(Bootstrap, Slurm) {
  BootstrapInfo i = detect(kSlurm);
  EXPECT_EQ(i.source, "slurm");
  EXPECT_EQ(i.rank, 0);
  EXPECT_EQ(i.worldSize, 6);
  EXPECT_EQ(i.localRank, 0);
  EXPECT_EQ(i.localWorldSize, 3);
  EXPECT_TRUE(i.hostStore);
  EXPECT_EQ(i.storeAddr, "gpu07");
  // 20000 + (123456 mod 1000) * 10 + (step 2 mod 10)
  EXPECT_EQ(i.storePort, 24562);
  EXPECT_EQ(i.jobId, "slurm-123456.2");

  BootstrapInfo r4 = detect(with(kSlurm, {{"SLURM_PROCID", "4"}, {"SLURM_LOCALID", "1"}}));
  EXPECT_FALSE(r4.hostStore);
  EXPECT_EQ(r4.storePort, i.storePort);
  EXPECT_EQ(r4.secret, i.secret);
}

TEST(Bootstrap, SlurmPortAndHostFromMaster) {
  EXPECT_EQ(detect(with(kSlurm, {{"MASTER_PORT", "29555"}})).storePort, 29555);
  BootstrapInfo a = detect(with(kSlurm, {{"MASTER_ADDR", "login1"}}));
  EXPECT_EQ(a.storeAddr, "login1");
  EXPECT_EQ(a.storePort, 24562);
  EXPECT_EQ(detect(with(kSlurm, {{"SLURM_STEP_ID", "13"}})).storePort, 24563);
}

TEST(Bootstrap, SlurmTasksPerNodeForms) {
  auto local = [](const Vars& v) { return detect(v).localWorldSize; };
  Vars base = without(kSlurm, {"SLURM_TASKS_PER_NODE"});
  EXPECT_EQ(local(with(base, {{"SLURM_NTASKS_PER_NODE", "3"}})), 3);
  EXPECT_EQ(local(with(base, {{"SLURM_TASKS_PER_NODE", "3,3"}})), 3);
  EXPECT_EQ(local(with(base, {{"SLURM_TASKS_PER_NODE", "4,2"}, {"SLURM_NODEID", "1"}})), 2);
  EXPECT_EQ(local(with(base, {{"SLURM_TASKS_PER_NODE", "4(x1),2"}, {"SLURM_NODEID", "0"}})), 4);
  EXPECT_EQ(local(with(base, {{"SLURM_STEP_TASKS_PER_NODE", "2(x3)"}, {"SLURM_TASKS_PER_NODE", "6"}})), 2);
  // Without any tasks-per-node variable, all ranks are taken to share one host.
  EXPECT_EQ(local(base), 6);
  expectConfigError(with(base, {{"SLURM_TASKS_PER_NODE", "4,2"}}), {"SLURM_NODEID"});
  expectConfigError(with(base, {{"SLURM_TASKS_PER_NODE", "4(2)"}}), {"SLURM_TASKS_PER_NODE", "4(2)"});
  expectConfigError(with(base, {{"SLURM_TASKS_PER_NODE", "x"}}), {"SLURM_TASKS_PER_NODE"});
}

TEST(Bootstrap, SlurmErrors) {
  expectConfigError(without(kSlurm, {"SLURM_STEP_NODELIST"}), {"SLURM_STEP_NODELIST", "MASTER_ADDR"});
  BootstrapInfo jobList = detect(with(without(kSlurm, {"SLURM_STEP_NODELIST"}), {{"SLURM_NODELIST", "cpu1,cpu2"}}));
  EXPECT_EQ(jobList.storeAddr, "cpu1");
  expectConfigError(without(kSlurm, {"SLURM_JOB_ID"}), {"SLURM_JOB_ID", "MASTER_PORT"});
  expectConfigError(without(kSlurm, {"SLURM_NTASKS"}), {"SLURM_NPROCS"});
  expectConfigError(with(kSlurm, {{"SLURM_PROCID", "6"}}), {"SLURM_PROCID"});
}

TEST(Bootstrap, Precedence) {
  Vars all = with(with(with(kChorus, kTorchrun), kOpenMpi), kSlurm);
  EXPECT_EQ(detect(all).source, "chorus");
  EXPECT_EQ(detect(all).rank, 2);
  Vars noChorus = without(all, {"CHORUS_RANK", "CHORUS_WORLD_SIZE"});
  BootstrapInfo t = detect(noChorus);
  EXPECT_EQ(t.source, "torchrun");
  EXPECT_EQ(t.rank, 5);
  // CHORUS_STORE_* still wins over MASTER_* under any convention.
  EXPECT_EQ(t.storeAddr, "10.1.1.1");
  EXPECT_EQ(t.storePort, 29400);
  Vars mpiSlurm = without(noChorus, {"RANK", "WORLD_SIZE"});
  EXPECT_EQ(detect(mpiSlurm).source, "openmpi");
  EXPECT_EQ(detect(mpiSlurm).rank, 3);
  EXPECT_EQ(detect(without(mpiSlurm, {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"})).source, "slurm");
}

TEST(Bootstrap, JobIdAndSecretOverrideDerivedOnes) {
  BootstrapInfo d = detect(kTorchrun);
  BootstrapInfo o = detect(with(kTorchrun, {{"CHORUS_JOB_ID", "mine"}, {"CHORUS_JOB_SECRET", "given"}}));
  EXPECT_EQ(o.jobId, "mine");
  EXPECT_EQ(o.secret, "given");
  EXPECT_NE(d.secret, "given");
  // The derived token depends on the job: another store port gives another token.
  EXPECT_NE(detect(with(kTorchrun, {{"MASTER_PORT", "29600"}})).secret, d.secret);
  // An empty variable counts as unset.
  EXPECT_EQ(detect(with(kTorchrun, {{"CHORUS_JOB_SECRET", ""}})).secret, d.secret);
}

TEST(Bootstrap, SingleProcess) {
  BootstrapInfo a = detect({});
  EXPECT_EQ(a.source, "single");
  EXPECT_EQ(a.rank, 0);
  EXPECT_EQ(a.worldSize, 1);
  EXPECT_EQ(a.localWorldSize, 1);
  EXPECT_TRUE(a.hostStore);
  EXPECT_EQ(a.storeAddr, "127.0.0.1");
  EXPECT_EQ(a.storePort, 0);
  BootstrapInfo b = detect({});
  // Random per process: two single jobs on one host never share segments or secrets.
  EXPECT_NE(a.secret, b.secret);
  EXPECT_NE(a.jobId, b.jobId);
  EXPECT_EQ(a.secret.size(), 32u);
}

TEST(Bootstrap, MalformedChorusPortIsAnErrorEvenForOtherConventions) {
  expectConfigError(with(kTorchrun, {{"CHORUS_STORE_ADDR", "x"}, {"CHORUS_STORE_PORT", "port"}}), {"CHORUS_STORE_PORT"});
  // A stray MASTER_PORT does not disturb a `chorus launch` job.
  EXPECT_EQ(detect(with(kChorus, {{"MASTER_PORT", "junk"}})).storePort, 29400);
}

TEST(FirstSlurmHost, Cases) {
  EXPECT_EQ(firstSlurmHost("node03"), "node03");
  EXPECT_EQ(firstSlurmHost("node[03-05,7],gpu1"), "node03");
  EXPECT_EQ(firstSlurmHost("node[7,03-05]"), "node7");
  EXPECT_EQ(firstSlurmHost("gpu1,node[03-05]"), "gpu1");
  EXPECT_EQ(firstSlurmHost("rack[2-3]-node[01-04]"), "rack2-node01");
  EXPECT_EQ(firstSlurmHost("n[001-128]-ib"), "n001-ib");
  EXPECT_EQ(firstSlurmHost("  host-a.example.com  "), "host-a.example.com");
  EXPECT_EQ(firstSlurmHost("a[5]"), "a5");
  EXPECT_THROW(firstSlurmHost(""), ConfigError);
  EXPECT_THROW(firstSlurmHost("   "), ConfigError);
  EXPECT_THROW(firstSlurmHost("node[03-05"), ConfigError);
  EXPECT_THROW(firstSlurmHost("node[]"), ConfigError);
  EXPECT_THROW(firstSlurmHost("node[a-b]"), ConfigError);
  EXPECT_THROW(firstSlurmHost(",node1"), ConfigError);
}

TEST(MakeSecret, RandomHex) {
  std::string a = makeSecret();
  std::string b = makeSecret();
  EXPECT_EQ(a.size(), 32u);
  EXPECT_EQ(a.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_NE(a, b);
}

TEST(ConnectStore, HostsAndJoins) {
  BootstrapInfo host = detect({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"},
                               {"MASTER_PORT", "1"}, {"CHORUS_JOB_SECRET", "shared"}});
  host.storePort = 0;  // an ephemeral port instead of a fixed one, so tests never collide
  std::unique_ptr<TcpStoreServer> server;
  auto hostClient = connectStore(host, Millis(5000), &server);
  ASSERT_TRUE(server);
  EXPECT_EQ(server->address(), "127.0.0.1");
  hostClient->set("from-host", toBytes("hello"));

  BootstrapInfo peer = host;
  peer.rank = 1;
  peer.hostStore = false;
  peer.storePort = server->port();
  auto peerClient = connectStore(peer, Millis(5000), nullptr);
  EXPECT_EQ(toString(peerClient->get("from-host", Millis(5000))), "hello");

  BootstrapInfo wrong = peer;
  wrong.secret = "other";
  EXPECT_THROW(connectStore(wrong, Millis(2000), nullptr), AuthError);
}

TEST(ConnectStore, Errors) {
  BootstrapInfo mpi = detect(kOpenMpi);
  try {
    connectStore(mpi, Millis(100), nullptr);
    FAIL() << "connected without an address";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("MPI"), std::string::npos) << e.what();
  }
  BootstrapInfo single = detect({});
  EXPECT_THROW(connectStore(single, Millis(100), nullptr), InvalidArgument);

  BootstrapInfo mpiRank0 = detect(with(kOpenMpi, {{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "0"}}));
  std::unique_ptr<TcpStoreServer> server;
  EXPECT_THROW(connectStore(mpiRank0, Millis(100), &server), InvalidArgument);
  EXPECT_FALSE(server);

  // A multi-host job whose store address is unknown cannot guess which interface to bind.
  BootstrapInfo multiHost = mpiRank0;
  multiHost.needsStoreFromMpi = false;
  multiHost.secret = "s";
  multiHost.storeAddr = "";
  EXPECT_THROW(connectStore(multiHost, Millis(100), &server), ConfigError);

  BootstrapInfo noSecret = detect(kTorchrun);
  noSecret.secret = "";
  EXPECT_THROW(connectStore(noSecret, Millis(100), nullptr), InvalidArgument);
}

TEST(ConnectStore, SingleProcessHostsAPrivateStore) {
  BootstrapInfo single = detect({});
  std::unique_ptr<TcpStoreServer> server;
  auto store = connectStore(single, Millis(5000), &server);
  ASSERT_TRUE(server);
  store->set("k", toBytes("v"));
  EXPECT_EQ(toString(store->get("k", Millis(1000))), "v");
}

}  // namespace
}  // namespace chorus::comm
