// The model-based randomized stress test (tests/stress/model_stress.hpp):
// several threads, random CPU reads and writes, migrations both ways, kernels,
// pin/unpin, evictions, frees and re-allocations on shared ranges; a model
// predicts every value read and the per-page results of checked migrations.
// A failure prints the seed, the config and every thread's last operations.
//
// Bounded for CI: the whole file runs in well under a minute in a plain build.
// Sanitizer builds run a fifth of the operations; UHMM_STRESS_SCALE=<factor>
// scales every case (e.g. 10 for a longer local run). For hours, use
// tools/uhmm-soak.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <string_view>

#include "stress/model_stress.hpp"

namespace uhmm::stress {
namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;

std::uint64_t scaled(std::uint64_t ops) {
  return std::max<std::uint64_t>(50, static_cast<std::uint64_t>(static_cast<double>(ops) * stress_scale()));
}

StressReport run_and_check(const StressConfig& cfg) {
  const StressReport r = run_stress(cfg);
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::cout << "[stress] " << info->name() << ": " << r.summary() << std::endl;
  EXPECT_TRUE(r.ok()) << r.describe(cfg);
  EXPECT_EQ(r.counters.pages_lost, 0u);
  return r;
}

StressConfig base(std::uint64_t seed, unsigned threads, std::uint64_t ops) {
  StressConfig c;
  c.seed = seed;
  c.threads = threads;
  c.ops_per_thread = scaled(ops);
  c.ranges = 4;
  c.range_pages = 1024;  // 4 MiB ranges: two whole blocks each
  c.pool_bytes = 64 * MiB;
  const char* mremap = std::getenv("UHMM_STRESS_MREMAP");
  c.mremap = mremap == nullptr || std::string_view(mremap) != "0";  // UHMM_STRESS_MREMAP=0: off
  return c;
}

TEST(Stress, SingleThread) {
  const StressReport r = run_and_check(base(101, 1, 4000));
  EXPECT_GT(r.faults_serviced, 0u);
  EXPECT_EQ(r.stale_fault_effects, 0u);  // alone, every checked migration is exact
}

TEST(Stress, SingleThreadReplayIsExact) {
  StressConfig c = base(202, 1, 1500);
  c.log_records = c.ops_per_thread;  // the whole run
  const StressReport a = run_and_check(c);
  const StressReport b = run_and_check(c);
  ASSERT_EQ(a.log.size(), 1u);
  ASSERT_EQ(b.log.size(), 1u);
  ASSERT_EQ(a.log[0].size(), c.ops_per_thread);
  ASSERT_EQ(b.log[0].size(), a.log[0].size());
  for (std::size_t i = 0; i < a.log[0].size(); ++i)
    ASSERT_EQ(a.log[0][i], b.log[0][i]) << "record " << i << " differs:\n  " << a.log[0][i].format() << "\n  "
                                        << b.log[0][i].format();
  EXPECT_EQ(a.ops, b.ops);
  // Another seed, another run.
  c.seed = 203;
  const StressReport other = run_and_check(c);
  EXPECT_NE(other.log[0], a.log[0]);
}

TEST(Stress, FourThreadsWithFaultAhead) {
  StressConfig c = base(303, 4, 6000);
  c.fault_ahead = true;
  const StressReport r = run_and_check(c);
  EXPECT_GT(r.counters.pages_fault_ahead, 0u);
}

// Launches pin thrashing pages on the host; kernels write them in place.
TEST(Stress, FourThreadsWithEagerThrashingPinning) {
  StressConfig c = base(505, 4, 6000);
  c.eager_thrashing = true;
  const StressReport r = run_and_check(c);
  EXPECT_GT(r.counters.thrashing_pages_pinned, 0u);
}

TEST(Stress, FourThreadsWithoutFaultAhead) {
  StressConfig c = base(404, 4, 2500);
  c.fault_ahead = false;
  const StressReport r = run_and_check(c);
  EXPECT_EQ(r.counters.pages_fault_ahead, 0u);
}

TEST(Stress, FourThreadsWithInjectedFailures) {
  StressConfig c = base(505, 4, 6000);
  c.inject_failures = true;
  const StressReport r = run_and_check(c);
  EXPECT_GT(r.counters.alloc_failures + r.counters.copy_failures, 0u) << "nothing was injected";
}

TEST(Stress, OversubscribedSmallPoolWithoutEviction) {
  // Four 4 MiB ranges against a 4 MiB pool, UHMM_EVICT=0: migrations partly
  // fail with out_of_memory, explicit evictions make room, every value stays exact.
  StressConfig c = base(606, 4, 6000);
  c.pool_bytes = 4 * MiB;
  c.evict = false;
  ASSERT_TRUE(c.oversubscribed());
  const StressReport r = run_and_check(c);
  EXPECT_GT(r.counters.alloc_failures, 0u) << "the pool never ran out";
  EXPECT_EQ(r.counters.device_eviction_chunks, 0u);
}

TEST(Stress, OversubscribedSmallPoolEvictsUnderPressure) {
  // The same with eviction on: migrations to the full pool evict the least
  // recently used chunks of the other threads' ranges while those threads
  // fault, migrate, launch kernels on and free them; every value stays exact.
  StressConfig c = base(616, 4, 6000);
  c.pool_bytes = 4 * MiB;
  ASSERT_TRUE(c.oversubscribed());
  const StressReport r = run_and_check(c);
  EXPECT_GT(r.counters.device_eviction_chunks, 0u) << "the pool never had to evict";
}

TEST(Stress, TwoDevicesThreeThreads) {
  // Pages also move device to device; three threads own words unevenly (512 % 3 != 0).
  StressConfig c = base(707, 3, 4000);
  c.devices = 2;
  c.pool_bytes = 16 * MiB;
  run_and_check(c);
}

}  // namespace
}  // namespace uhmm::stress
