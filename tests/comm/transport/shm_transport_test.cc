// What is particular to the shm transport: small rings and the single-copy (CMA) path,
// held messages caught mid-stream, ShmOptions, setup, segments in /dev/shm, and peers that
// die (SIGKILL) mid-transfer. The rules every transport keeps (transport.h) are checked on
// shm, as on the others, by the conformance suite (tests/comm/transport/conformance_test.cc).
// Ranks are threads of this process sharing a MemoryStore, except the peer-death tests, which
// fork a real process that joins through a store kept in shared anonymous memory.
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <dirent.h>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "chorus/comm/rendezvous/memory_store.h"
#include "chorus/comm/transport/shm/context.h"
#include "chorus/common/error.h"

namespace chorus::comm {
namespace {

using Fn = std::function<void(Transport&)>;

std::atomic<int> gWorldCounter{0};

std::string uniqueJob() { return "shmtest" + std::to_string(getpid()) + "x" + std::to_string(gWorldCounter++); }

ShmOptions opts(uint64_t ringBytes = 1 << 20, bool cma = true, uint64_t cmaMin = 64 << 10) {
  ShmOptions o;
  o.spinUs = 20;
  o.ringBytes = ringBytes;
  o.cma = cma;
  o.cmaMinBytes = cmaMin;
  return o;
}

// Runs fn(transport) on `n` ranks, each a thread with its own shm transport. Rank failures are
// reported as test failures naming the rank.
void runRanks(int n, const ShmOptions& shm, const Fn& fn, const std::string& job = uniqueJob()) {
  MemoryStore store;
  std::vector<std::thread> threads;
  std::vector<std::string> errors(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        TransportOptions o;
        o.rank = r;
        o.size = n;
        o.store = &store;
        o.jobId = job;
        o.prefix = "t";
        o.timeout = Millis(15000);
        auto t = createShmTransport(o, shm);
        fn(*t);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(errors[static_cast<size_t>(r)], "") << "rank " << r << " failed";
  }
}

uint8_t pattern(uint64_t seed, size_t i) { return static_cast<uint8_t>((seed * 131 + i * 7 + (i >> 8)) & 0xff); }

std::vector<uint8_t> makeMessage(uint64_t seed, size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = pattern(seed, i);
  return v;
}

// Index of the first byte that differs from the pattern, or -1.
long firstBad(const std::vector<uint8_t>& v, uint64_t seed) {
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] != pattern(seed, i)) return static_cast<long>(i);
  }
  return -1;
}

Deadline soon() { return Deadline(Millis(15000)); }

void waitOne(Transport& t, const RequestPtr& r) { t.waitAll(std::span<const RequestPtr>(&r, 1), soon()); }

// ---- point to point: small rings, CMA, held messages ----

// Many tags, received in the reverse order of sending, some after they all arrived (held).
void manyTags(const ShmOptions& shm) {
  runRanks(2, shm, [](Transport& t) {
    constexpr int kTags = 60;
    auto bytesOf = [](int tag) { return static_cast<size_t>(tag % 3 == 0 ? 100000 + tag : tag * 37 + tag % 8); };
    if (t.rank() == 0) {
      std::vector<std::vector<uint8_t>> out(kTags);
      std::vector<RequestPtr> reqs;
      for (int tag = 0; tag < kTags; ++tag) {
        out[tag] = makeMessage(tag, bytesOf(tag));
        reqs.push_back(t.isend(1, tag, 0, out[tag].data(), out[tag].size()));
      }
      t.waitAll(reqs, soon());
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
      std::vector<std::vector<uint8_t>> in(kTags);
      std::vector<RequestPtr> reqs;
      for (int tag = kTags - 1; tag >= 0; --tag) {
        in[tag].assign(bytesOf(tag), 0);
        reqs.push_back(t.irecv(0, tag, 0, in[tag].data(), in[tag].size()));
      }
      t.waitAll(reqs, soon());
      for (int tag = 0; tag < kTags; ++tag) EXPECT_EQ(firstBad(in[tag], tag), -1) << "tag " << tag;
    }
  });
}

TEST(ShmTransport, ManyTagsOutOfOrderSmallRingNoCma) { manyTags(opts(4096, false)); }

// Messages under one tag arrive in the order sent, whatever their sizes and paths.
void fifoSameTag(const ShmOptions& shm, bool lateReceiver) {
  runRanks(2, shm, [lateReceiver](Transport& t) {
    constexpr int kMsgs = 40;
    auto bytesOf = [](int i) { return static_cast<size_t>(i % 4 == 0 ? 70000 + i : (i % 4 == 1 ? 9000 + i : i)); };
    if (t.rank() == 0) {
      std::vector<std::vector<uint8_t>> out(kMsgs);
      std::vector<RequestPtr> reqs;
      for (int i = 0; i < kMsgs; ++i) {
        out[i] = makeMessage(i, bytesOf(i));
        reqs.push_back(t.isend(1, 7, 0, out[i].data(), out[i].size()));
      }
      t.waitAll(reqs, soon());
    } else {
      if (lateReceiver) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      std::vector<std::vector<uint8_t>> in(kMsgs);
      std::vector<RequestPtr> reqs;
      for (int i = 0; i < kMsgs; ++i) {
        in[i].assign(bytesOf(i), 0);
        reqs.push_back(t.irecv(0, 7, 0, in[i].data(), in[i].size()));
      }
      t.waitAll(reqs, soon());
      for (int i = 0; i < kMsgs; ++i) EXPECT_EQ(firstBad(in[i], i), -1) << "message " << i;
    }
  });
}

TEST(ShmTransport, FifoSameTagSmallRingNoCma) { fifoSameTag(opts(8192, false), true); }

// Sizes around the ring's capacity, with the receive posted before and after the data comes.
class EdgeSizes : public ::testing::TestWithParam<bool> {};

TEST_P(EdgeSizes, RoundTripExactly) {
  const bool late = GetParam();
  constexpr uint64_t kRing = 4096;
  runRanks(2, opts(kRing, false), [late](Transport& t) {
    const std::vector<size_t> sizes = {0, 1, 7, 8, 9, kRing - 49, kRing - 48, kRing - 47, kRing - 1, kRing, kRing + 1,
                                       3 * kRing + 5, 100003};
    for (size_t k = 0; k < sizes.size(); ++k) {
      const size_t n = sizes[k];
      if (t.rank() == 0) {
        auto msg = makeMessage(k, n);
        waitOne(t, t.isend(1, k, 0, msg.data(), n));
      } else {
        if (late) std::this_thread::sleep_for(std::chrono::milliseconds(5));
        std::vector<uint8_t> in(n + 16, 0xEE);
        waitOne(t, t.irecv(0, k, 0, in.data(), n));
        for (size_t i = n; i < n + 16; ++i) ASSERT_EQ(in[i], 0xEE) << "overflow at size " << n;
        in.resize(n);
        EXPECT_EQ(firstBad(in, k), -1) << "size " << n;
      }
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Shm, EdgeSizes, ::testing::Values(false, true));

// Several MiB through CMA and through the ring; receiver early and late.
class LargeMessage : public ::testing::TestWithParam<std::tuple<bool, bool>> {};

TEST_P(LargeMessage, ArrivesIntact) {
  const bool cma = std::get<0>(GetParam());
  const bool late = std::get<1>(GetParam());
  runRanks(2, opts(1 << 20, cma), [cma, late](Transport& t) {
    auto* ctx = dynamic_cast<shm::Context*>(&t);
    ASSERT_NE(ctx, nullptr);
    if (!cma) {
      EXPECT_FALSE(ctx->cmaToPeer(1 - t.rank()));
    }
    const size_t n = (size_t{5} << 20) + 3;
    if (t.rank() == 0) {
      auto msg = makeMessage(42, n);
      waitOne(t, t.isend(1, 3, 0, msg.data(), n));
    } else {
      if (late) std::this_thread::sleep_for(std::chrono::milliseconds(30));
      std::vector<uint8_t> in(n, 0);
      waitOne(t, t.irecv(0, 3, 0, in.data(), n));
      EXPECT_EQ(firstBad(in, 42), -1);
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Shm, LargeMessage, ::testing::Combine(::testing::Bool(), ::testing::Bool()));

// Unexpected messages: the receiver drains a message it has not asked for yet into a held
// buffer (completely, or partly while it still streams in), then posts the receive.
enum class HeldMode { kComplete, kMidStream };

class Held : public ::testing::TestWithParam<std::tuple<HeldMode, bool, bool>> {};

TEST_P(Held, PostedAfterArrival) {
  const HeldMode mode = std::get<0>(GetParam());
  const bool cma = std::get<1>(GetParam());
  const bool reduce = std::get<2>(GetParam());
  runRanks(2, opts(4096, cma, 8192), [mode, reduce](Transport& t) {
    constexpr size_t kCount = 75001;  // floats: ~300 KB, many times the ring
    const uint64_t sig = 77;
    if (t.rank() == 0) {
      std::vector<float> a(kCount);
      for (size_t i = 0; i < kCount; ++i) a[i] = static_cast<float>(i % 4099);
      uint8_t b = 9;
      std::vector<RequestPtr> reqs = {t.isend(1, 1, sig, a.data(), kCount * sizeof(float)), t.isend(1, 2, sig, &b, 1)};
      t.waitAll(reqs, soon());
    } else {
      uint8_t b = 0;
      auto reqB = t.irecv(0, 2, sig, &b, 1);
      if (mode == HeldMode::kComplete) {
        waitOne(t, reqB);  // tag 2 follows tag 1, so tag 1 is fully held by now
      } else {
        for (int i = 0; i < 20; ++i) {
          t.test(reqB);
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
      }
      std::vector<float> a(kCount, 1.0f);
      RecvReduce rr{DType::kFloat32, ReduceOp::kSum};
      auto reqA = t.irecv(0, 1, sig, a.data(), kCount * sizeof(float), reduce ? &rr : nullptr);
      std::vector<RequestPtr> reqs = {reqA, reqB};
      t.waitAll(reqs, soon());
      EXPECT_EQ(b, 9);
      for (size_t i = 0; i < kCount; ++i) {
        ASSERT_EQ(a[i], static_cast<float>(i % 4099) + (reduce ? 1.0f : 0.0f)) << "element " << i;
      }
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Shm, Held,
                         ::testing::Combine(::testing::Values(HeldMode::kComplete, HeldMode::kMidStream),
                                            ::testing::Bool(), ::testing::Bool()));

// A mismatch found when the receive meets a held message: the held message is dropped, the
// receiver gets MismatchError, a single-copy sender is told, and the stream goes on.
class HeldMismatch : public ::testing::TestWithParam<std::tuple<HeldMode, bool>> {};

TEST_P(HeldMismatch, DroppedAndReported) {
  const HeldMode mode = std::get<0>(GetParam());
  const bool cma = std::get<1>(GetParam());
  runRanks(2, opts(4096, cma, 8192), [mode](Transport& t) {
    constexpr size_t kBytes = 100000;
    if (t.rank() == 0) {
      std::vector<uint8_t> a(kBytes, 1);
      uint8_t b = 9;
      auto reqA = t.isend(1, 1, 0, a.data(), kBytes);
      auto reqB = t.isend(1, 2, 0, &b, 1);
      waitOne(t, reqB);
      try {
        waitOne(t, reqA);
        EXPECT_FALSE(t.rank() == 0 && dynamic_cast<shm::Context&>(t).cmaToPeer(1)) << "CMA send not refused";
      } catch (const MismatchError&) {
        EXPECT_TRUE(dynamic_cast<shm::Context&>(t).cmaToPeer(1));
      }
      auto c = makeMessage(5, 3000);
      waitOne(t, t.isend(1, 3, 0, c.data(), c.size()));
    } else {
      uint8_t b = 0;
      auto reqB = t.irecv(0, 2, 0, &b, 1);
      if (mode == HeldMode::kComplete) {
        waitOne(t, reqB);
      } else {
        for (int i = 0; i < 10; ++i) {
          t.test(reqB);
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
      }
      std::vector<uint8_t> a(kBytes + 8, 0xCD);
      EXPECT_THROW(waitOne(t, t.irecv(0, 1, 0, a.data(), kBytes - 8)), MismatchError);
      for (size_t i = kBytes - 8; i < a.size(); ++i) ASSERT_EQ(a[i], 0xCD) << "wrote past the buffer at " << i;
      waitOne(t, reqB);
      EXPECT_EQ(b, 9);
      std::vector<uint8_t> c(3000);
      waitOne(t, t.irecv(0, 3, 0, c.data(), c.size()));
      EXPECT_EQ(firstBad(c, 5), -1);
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Shm, HeldMismatch,
                         ::testing::Combine(::testing::Values(HeldMode::kComplete, HeldMode::kMidStream),
                                            ::testing::Bool()));

// A sender that breaks the contract (its buffer becomes unreadable before the send completes) makes the
// single-copy read fail: both sides get PeerError instead of a crash or a hang.
TEST(ShmTransport, CmaReadOfUnmappedBufferFailsBothSides) {
  runRanks(2, opts(1 << 20, true, 4096), [](Transport& t) {
    constexpr size_t kBytes = 1 << 20;
    if (t.rank() == 0) {
      if (!dynamic_cast<shm::Context&>(t).cmaToPeer(1)) GTEST_SKIP() << "no CMA here";
      void* p = mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      ASSERT_NE(p, MAP_FAILED);
      auto req = t.isend(1, 1, 0, p, kBytes);
      // Not munmap: threads share the address space, and the receiver's next allocation could
      // reuse the range. PROT_NONE keeps it reserved and unreadable.
      ASSERT_EQ(mprotect(p, kBytes, PROT_NONE), 0);
      uint8_t go = 1;
      waitOne(t, t.isend(1, 2, 0, &go, 1));
      try {
        waitOne(t, req);
        ADD_FAILURE() << "no PeerError";
      } catch (const PeerError& e) {
        EXPECT_EQ(e.peer(), 1);
      }
      munmap(p, kBytes);
    } else {
      uint8_t go = 0;
      waitOne(t, t.irecv(0, 2, 0, &go, 1));
      std::vector<uint8_t> in(kBytes);
      try {
        waitOne(t, t.irecv(0, 1, 0, in.data(), kBytes));
        ADD_FAILURE() << "no PeerError";
      } catch (const PeerError& e) {
        EXPECT_EQ(e.peer(), 0);
        EXPECT_NE(std::string(e.what()).find("cross-memory attach"), std::string::npos) << e.what();
      }
    }
  });
}

TEST(ShmTransport, OptionsFromEnvironment) {
  setenv("CHORUS_SHM_RING_BYTES", "4096", 1);
  setenv("CHORUS_SHM_CMA", "0", 1);
  setenv("CHORUS_SHM_CMA_MIN_BYTES", "123", 1);
  setenv("CHORUS_SPIN_US", "7", 1);
  ShmOptions o = ShmOptions::fromEnv();
  EXPECT_EQ(o.ringBytes, 4096u);
  EXPECT_FALSE(o.cma);
  EXPECT_EQ(o.cmaMinBytes, 123u);
  EXPECT_EQ(o.spinUs, 7);
  setenv("CHORUS_SPIN_US", "-1", 1);
  EXPECT_THROW(ShmOptions::fromEnv(), ConfigError);
  unsetenv("CHORUS_SHM_RING_BYTES");
  unsetenv("CHORUS_SHM_CMA");
  unsetenv("CHORUS_SHM_CMA_MIN_BYTES");
  unsetenv("CHORUS_SPIN_US");
  o = ShmOptions::fromEnv();
  EXPECT_EQ(o.ringBytes, 1u << 20);
  EXPECT_TRUE(o.cma);

  // The factory without ShmOptions reads them too; a ring below the minimum is refused.
  setenv("CHORUS_SHM_RING_BYTES", "100", 1);
  MemoryStore store;
  TransportOptions to;
  to.size = 2;
  to.store = &store;
  EXPECT_THROW(createShmTransport(to), ConfigError);
  unsetenv("CHORUS_SHM_RING_BYTES");
  to.size = 1;
  auto solo = createShmTransport(to);
  EXPECT_EQ(solo->size(), 1);
  std::vector<RequestPtr> none;
  solo->waitAll(none, soon());
}

// More single-copy sends outstanding than there are acknowledgement slots: the excess goes
// through the ring, and the order under one tag still holds.
TEST(ShmTransport, MoreCmaSendsThanAckSlots) {
  runRanks(2, opts(1 << 20, true, 4096), [](Transport& t) {
    constexpr int kMsgs = shm::kAckSlots + 40;
    constexpr size_t kBytes = 8192;
    if (t.rank() == 0) {
      std::vector<std::vector<uint8_t>> out(kMsgs);
      std::vector<RequestPtr> reqs;
      for (int i = 0; i < kMsgs; ++i) {
        out[i] = makeMessage(i, kBytes);
        reqs.push_back(t.isend(1, 4, 0, out[i].data(), kBytes));
      }
      t.waitAll(reqs, soon());
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
      std::vector<std::vector<uint8_t>> in(kMsgs, std::vector<uint8_t>(kBytes));
      std::vector<RequestPtr> reqs;
      for (int i = 0; i < kMsgs; ++i) reqs.push_back(t.irecv(0, 4, 0, in[i].data(), kBytes));
      t.waitAll(reqs, soon());
      for (int i = 0; i < kMsgs; ++i) EXPECT_EQ(firstBad(in[i], i), -1) << "message " << i;
    }
  });
}

TEST(ShmTransport, CmaWorksBetweenThreadRanks) {
  // Ranks that are threads share a pid; process_vm_readv of one's own pid must work, so the
  // single-copy path is taken (and exercised by the tests above) unless the kernel forbids it.
  runRanks(2, opts(), [](Transport& t) {
    auto* ctx = dynamic_cast<shm::Context*>(&t);
    ASSERT_NE(ctx, nullptr);
    EXPECT_TRUE(ctx->cmaToPeer(1 - t.rank()));
    EXPECT_FALSE(ctx->cmaToPeer(t.rank()));
  });
}

// ---- reduce on receive ----

class Reduce : public ::testing::TestWithParam<std::tuple<size_t, bool, bool>> {};

TEST_P(Reduce, Float32SumIntoDestination) {
  const size_t count = std::get<0>(GetParam());
  const bool cma = std::get<1>(GetParam());
  const bool late = std::get<2>(GetParam());
  runRanks(2, opts(8192, cma, 4096), [count, late](Transport& t) {
    if (t.rank() == 0) {
      std::vector<float> x(count);
      for (size_t i = 0; i < count; ++i) x[i] = static_cast<float>(i % 1000);
      waitOne(t, t.isend(1, 11, 5, x.data(), count * sizeof(float)));
    } else {
      std::vector<float> acc(count + 4);
      for (size_t i = 0; i < count + 4; ++i) acc[i] = static_cast<float>(2 * (i % 77));
      if (late) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      RecvReduce rr{DType::kFloat32, ReduceOp::kSum};
      waitOne(t, t.irecv(0, 11, 5, acc.data(), count * sizeof(float), &rr));
      for (size_t i = 0; i < count; ++i) {
        ASSERT_EQ(acc[i], static_cast<float>(i % 1000 + 2 * (i % 77))) << "element " << i;
      }
      for (size_t i = count; i < count + 4; ++i) ASSERT_EQ(acc[i], static_cast<float>(2 * (i % 77)));
    }
  });
}

// Counts: empty, tiny, over the 8 KiB ring, and over the 256 KiB CMA scratch.
INSTANTIATE_TEST_SUITE_P(Shm, Reduce,
                         ::testing::Combine(::testing::Values(size_t{0}, size_t{1}, size_t{7}, size_t{5003},
                                                              size_t{200003}),
                                            ::testing::Bool(), ::testing::Bool()));

// ---- mismatches ----

void sizeMismatch(const ShmOptions& shm, size_t sent, size_t expected) {
  runRanks(2, shm, [sent, expected](Transport& t) {
    if (t.rank() == 0) {
      auto big = makeMessage(1, sent);
      auto req = t.isend(1, 3, 9, big.data(), sent);
      try {
        waitOne(t, req);
      } catch (const MismatchError& e) {
        // A single-copy send learns of the refusal; a ring send completed on delivery.
        EXPECT_NE(std::string(e.what()).find("rank 1"), std::string::npos) << e.what();
      }
      auto next = makeMessage(2, 1000);
      waitOne(t, t.isend(1, 4, 9, next.data(), next.size()));
    } else {
      std::vector<uint8_t> in(expected + 64, 0xAB);
      auto req = t.irecv(0, 3, 9, in.data(), expected);
      try {
        waitOne(t, req);
        ADD_FAILURE() << "no MismatchError";
      } catch (const MismatchError& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("rank 1"), std::string::npos) << what;
        EXPECT_NE(what.find("rank 0"), std::string::npos) << what;
        EXPECT_NE(what.find("tag 3"), std::string::npos) << what;
        EXPECT_NE(what.find(std::to_string(sent)), std::string::npos) << what;
        EXPECT_NE(what.find(std::to_string(expected)), std::string::npos) << what;
      }
      for (size_t i = expected; i < in.size(); ++i) ASSERT_EQ(in[i], 0xAB) << "wrote past the buffer at " << i;
      // The stream stays usable: the next message arrives intact.
      std::vector<uint8_t> next(1000);
      waitOne(t, t.irecv(0, 4, 9, next.data(), next.size()));
      EXPECT_EQ(firstBad(next, 2), -1);
    }
  });
}

TEST(ShmTransport, SizeMismatchStreamed) { sizeMismatch(opts(4096, false), 50000, 20000); }
TEST(ShmTransport, SizeMismatchCma) { sizeMismatch(opts(), 1 << 20, 1 << 19); }

TEST(ShmTransport, SignatureMismatchCmaFailsBothSides) {
  runRanks(2, opts(), [](Transport& t) {
    std::vector<uint8_t> b(1 << 20);
    if (t.rank() == 0) {
      EXPECT_THROW(waitOne(t, t.isend(1, 5, 1, b.data(), b.size())), MismatchError);
    } else {
      EXPECT_THROW(waitOne(t, t.irecv(0, 5, 2, b.data(), b.size())), MismatchError);
    }
  });
}

// ---- setup, stress, segments ----

TEST(ShmTransport, SetupTimeoutNamesMissingRank) {
  MemoryStore store;
  TransportOptions o;
  o.rank = 0;
  o.size = 3;
  o.store = &store;
  o.jobId = uniqueJob();
  o.timeout = Millis(300);
  try {
    createShmTransport(o, opts());
    ADD_FAILURE() << "no TimeoutError";
  } catch (const TimeoutError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("rank(s) 1, 2"), std::string::npos) << what;
  }
}

// Every rank streams random-sized messages to every other through tiny rings, for several
// rounds, with CMA taking part of them: exercises wrap-around, full rings and held messages.
TEST(ShmTransport, StressTinyRings) {
  runRanks(5, opts(256, true, 3000), [](Transport& t) {
    const int n = t.size();
    const int me = t.rank();
    for (int round = 0; round < 6; ++round) {
      auto bytesOf = [round](int src, int dst, int k) {
        return static_cast<size_t>((src * 7919 + dst * 104729 + k * 1299709 + round * 15485863) % 6000);
      };
      std::vector<std::vector<uint8_t>> out, in;
      std::vector<RequestPtr> reqs;
      std::vector<std::tuple<int, int>> keys;
      for (int k = 0; k < 3; ++k) {
        std::vector<int> peers;
        for (int p = 0; p < n; ++p) {
          if (p != me) peers.push_back(p);
        }
        std::mt19937 rng(static_cast<uint32_t>(me * 100 + k * 10 + round));
        std::shuffle(peers.begin(), peers.end(), rng);  // post receives in a scrambled order
        for (int q : peers) {
          in.emplace_back(bytesOf(q, me, k), 0);
          reqs.push_back(t.irecv(q, round * 10 + k, 0, in.back().data(), in.back().size()));
          keys.emplace_back(q, k);
        }
      }
      for (int k = 0; k < 3; ++k) {
        for (int p = 0; p < n; ++p) {
          if (p == me) continue;
          out.push_back(makeMessage(me * 1000 + p * 10 + k + round * 100000, bytesOf(me, p, k)));
          reqs.push_back(t.isend(p, round * 10 + k, 0, out.back().data(), out.back().size()));
        }
      }
      t.waitAll(reqs, soon());
      for (size_t i = 0; i < in.size(); ++i) {
        const auto [q, k] = keys[i];
        EXPECT_EQ(firstBad(in[i], q * 1000 + me * 10 + k + round * 100000), -1) << "from " << q << " k " << k;
      }
    }
  });
}

TEST(ShmTransport, LeavesNothingInDevShm) {
  const std::string job = uniqueJob();
  runRanks(3, opts(), [](Transport& t) {
    uint8_t b = 1;
    const int next = (t.rank() + 1) % t.size();
    const int prev = (t.rank() + t.size() - 1) % t.size();
    std::vector<RequestPtr> reqs = {t.isend(next, 1, 0, &b, 1), t.irecv(prev, 1, 0, &b, 1)};
    t.waitAll(reqs, soon());
  }, job);
  DIR* d = opendir("/dev/shm");
  ASSERT_NE(d, nullptr);
  int leaked = 0;
  while (dirent* e = readdir(d)) {
    if (std::string(e->d_name).find(job) != std::string::npos) ++leaked;
  }
  closedir(d);
  EXPECT_EQ(leaked, 0);
}

// ---- a peer that dies: real processes ----

// A Store in a shared anonymous mapping, usable by a parent and the children it forks.
class ForkSharedStore : public Store {
 public:
  ForkSharedStore() {
    void* p = mmap(nullptr, sizeof(Table), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("mmap failed");
    t_ = new (p) Table();
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutex_init(&t_->mu, &a);
    pthread_mutexattr_destroy(&a);
  }
  ~ForkSharedStore() override { munmap(t_, sizeof(Table)); }

  void set(const std::string& key, const Bytes& value) override {
    Lock l(t_);
    Entry* e = find(key, true);
    e->len = std::min(value.size(), sizeof e->value);
    std::memcpy(e->value, value.data(), e->len);
    e->present = true;
  }
  Bytes get(const std::string& key, Millis timeout) override {
    wait({key}, timeout);
    Lock l(t_);
    Entry* e = find(key, false);
    return Bytes(e->value, e->value + e->len);
  }
  int64_t add(const std::string& key, int64_t delta) override {
    Lock l(t_);
    Entry* e = find(key, true);
    int64_t v = 0;
    if (e->present) std::memcpy(&v, e->value, sizeof v);
    v += delta;
    std::memcpy(e->value, &v, sizeof v);
    e->len = sizeof v;
    e->present = true;
    return v;
  }
  void wait(const std::vector<std::string>& keys, Millis timeout) override {
    const Deadline d(timeout);
    while (!check(keys)) {
      if (d.expired()) throw TimeoutError("ForkSharedStore: timed out waiting for keys");
      usleep(1000);
    }
  }
  bool check(const std::vector<std::string>& keys) override {
    Lock l(t_);
    for (const auto& k : keys) {
      Entry* e = find(k, false);
      if (e == nullptr || !e->present) return false;
    }
    return true;
  }
  bool erase(const std::string& key) override {
    Lock l(t_);
    Entry* e = find(key, false);
    if (e == nullptr || !e->present) return false;
    e->present = false;
    return true;
  }

 private:
  struct Entry {
    char key[128];
    bool used;
    bool present;
    size_t len;
    uint8_t value[256];
  };
  struct Table {
    pthread_mutex_t mu;
    Entry entries[64];
  };
  struct Lock {
    explicit Lock(Table* t) : t(t) { pthread_mutex_lock(&t->mu); }
    ~Lock() { pthread_mutex_unlock(&t->mu); }
    Table* t;
  };
  Entry* find(const std::string& key, bool create) {
    for (auto& e : t_->entries) {
      if (e.used && key == e.key) return &e;
    }
    if (!create) return nullptr;
    for (auto& e : t_->entries) {
      if (!e.used) {
        e.used = true;
        std::snprintf(e.key, sizeof e.key, "%s", key.c_str());
        return &e;
      }
    }
    throw std::runtime_error("ForkSharedStore full");
  }
  Table* t_;
};

// Rank 1 is a forked child that exchanges one message and then is killed (SIGKILL, so it runs
// no cleanup). It stays an unreaped zombie while rank 0 waits, which must count as dead.
void peerDies(size_t pendingSendBytes, bool cma) {
  ForkSharedStore store;
  const std::string job = uniqueJob();
  auto options = [&](int rank) {
    TransportOptions o;
    o.rank = rank;
    o.size = 2;
    o.store = &store;
    o.jobId = job;
    o.timeout = Millis(15000);
    return o;
  };
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    try {
      auto t = createShmTransport(options(1), opts(1 << 20, cma));
      uint8_t b = 0;
      waitOne(*t, t->irecv(0, 1, 0, &b, 1));
      waitOne(*t, t->isend(0, 2, 0, &b, 1));
      // Start a message that the ring cannot hold, and die half way through it.
      std::vector<uint8_t> big(3 << 20, 2);
      t->isend(0, 12, 0, big.data(), big.size());
      kill(getpid(), SIGKILL);
    } catch (...) {
    }
    _exit(3);
  }
  {
    auto t = createShmTransport(options(0), opts(1 << 20, cma));
    uint8_t b = 5;
    waitOne(*t, t->isend(1, 1, 0, &b, 1));
    waitOne(*t, t->irecv(1, 2, 0, &b, 1));
    EXPECT_EQ(b, 5);
    std::vector<RequestPtr> reqs;
    uint8_t never[16];
    reqs.push_back(t->irecv(1, 9, 0, never, sizeof never));
    // Only with CMA off is tag 12 streamed (and cut off); with CMA it is a descriptor whose
    // read fails because the process is gone.
    std::vector<uint8_t> partial(3 << 20);
    reqs.push_back(t->irecv(1, 12, 0, partial.data(), partial.size()));
    std::vector<uint8_t> big(pendingSendBytes, 1);
    if (pendingSendBytes > 0) reqs.push_back(t->isend(1, 10, 0, big.data(), big.size()));
    const auto start = std::chrono::steady_clock::now();
    try {
      t->waitAll(reqs, Deadline(Millis(10000)));
      ADD_FAILURE() << "no PeerError";
    } catch (const PeerError& e) {
      const std::string what = e.what();
      EXPECT_EQ(e.peer(), 1);
      EXPECT_NE(what.find("rank 0"), std::string::npos) << what;
      EXPECT_NE(what.find("peer rank 1"), std::string::npos) << what;
      EXPECT_NE(what.find("died"), std::string::npos) << what;
      EXPECT_NE(what.find(std::to_string(child)), std::string::npos) << what;
    }
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(3000));
    for (const auto& r : reqs) {
      EXPECT_TRUE(r->done);
      // Tag 12 may have been read in full before the child died (then it is intact); every
      // other request had no chance to complete.
      if (r->tag == 12 && r->error == nullptr) {
        EXPECT_TRUE(std::all_of(partial.begin(), partial.end(), [](uint8_t v) { return v == 2; }));
      } else {
        EXPECT_TRUE(r->error != nullptr) << "tag " << r->tag;
      }
    }
    // Later requests to the dead peer fail at once.
    EXPECT_THROW(waitOne(*t, t->isend(1, 11, 0, &b, 1)), PeerError);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "child status " << status;
}

TEST(ShmTransportFork, PeerDeathFailsPendingRecv) { peerDies(0, true); }
TEST(ShmTransportFork, PeerDeathFailsPendingRingSend) { peerDies(3 << 20, false); }
TEST(ShmTransportFork, PeerDeathFailsPendingCmaSend) { peerDies(3 << 20, true); }

TEST(ShmTransportFork, CmaBetweenProcesses) {
  ForkSharedStore store;
  const std::string job = uniqueJob();
  auto options = [&](int rank) {
    TransportOptions o;
    o.rank = rank;
    o.size = 2;
    o.store = &store;
    o.jobId = job;
    o.timeout = Millis(15000);
    return o;
  };
  const size_t n = (size_t{3} << 20) + 5;
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    int code = 1;
    try {
      auto t = createShmTransport(options(1), opts());
      std::vector<uint8_t> in(n);
      waitOne(*t, t->irecv(0, 1, 0, in.data(), n));
      if (firstBad(in, 8) == -1) code = 0;
      waitOne(*t, t->isend(0, 2, 0, in.data(), n));
    } catch (...) {
      code = 2;
    }
    _exit(code);
  }
  auto t = createShmTransport(options(0), opts());
  auto* ctx = dynamic_cast<shm::Context*>(t.get());
  ASSERT_NE(ctx, nullptr);
  if (!ctx->cmaToPeer(1)) std::printf("note: CMA is not allowed between processes here; the ring path ran\n");
  auto msg = makeMessage(8, n);
  std::vector<uint8_t> back(n);
  std::vector<RequestPtr> reqs = {t->isend(1, 1, 0, msg.data(), n), t->irecv(1, 2, 0, back.data(), n)};
  t->waitAll(reqs, soon());
  EXPECT_EQ(firstBad(back, 8), -1);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
}

// A segment left in /dev/shm by a rank that died during setup is removed by the next context
// once it is an hour old and its creator is gone; a fresh one, or one whose creator lives, stays.
TEST(ShmTransport, SweepsSegmentsOfDeadCreators) {
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) _exit(0);
  ASSERT_EQ(waitpid(child, nullptr, 0), child);  // a pid that no longer runs
  auto makeSegment = [](const std::string& name, time_t age) {
    int fd = shm_open(("/" + name).c_str(), O_CREAT | O_RDWR, 0600);
    EXPECT_GE(fd, 0);
    close(fd);
    struct timespec times[2];
    times[0].tv_sec = times[1].tv_sec = time(nullptr) - age;
    times[0].tv_nsec = times[1].tv_nsec = 0;
    EXPECT_EQ(utimensat(AT_FDCWD, ("/dev/shm/" + name).c_str(), times, 0), 0);
  };
  auto exists = [](const std::string& name) { return access(("/dev/shm/" + name).c_str(), F_OK) == 0; };
  const std::string tag = std::to_string(getpid());
  const std::string stale = "chorus-sweeptest" + tag + "-chorus-r1-" + std::to_string(child) + "-abc";
  const std::string young = "chorus-sweeptest" + tag + "-chorus-r2-" + std::to_string(child) + "-def";
  const std::string alive = "chorus-sweeptest" + tag + "-chorus-r3-" + std::to_string(getpid()) + "-123";
  makeSegment(stale, 7200);
  makeSegment(young, 60);
  makeSegment(alive, 7200);
  TransportOptions to;
  to.size = 1;
  auto solo = createShmTransport(to);
  EXPECT_FALSE(exists(stale));
  EXPECT_TRUE(exists(young));
  EXPECT_TRUE(exists(alive));
  shm_unlink(("/" + young).c_str());
  shm_unlink(("/" + alive).c_str());
}

}  // namespace
}  // namespace chorus::comm
