// The model-based stress test (tests/stress/model_stress.hpp) on the GPU
// plugin over the emulated runtime: migrations both ways, device kernels
// (launch_device), evictions, frees and re-allocations from several threads,
// every value the model predicts checked, while the plugin's copy engine
// (staging pipeline, DMA runs, the gather/scatter kernel) and pool do the work
// on streams that really run concurrently. Kept short for CI (a few seconds);
// UHMM_STRESS_SCALE scales it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <iostream>

#include "emulated_runtime.hpp"
#include "stress/model_stress.hpp"
#include "test_support.hpp"

namespace uhmm::stress {
namespace {

// Before main, so before anything starts the emulated runtime.
const bool kTwoDevices = [] { return ::setenv("UHMM_EMULATED_DEVICES", "2", 1) == 0; }();

StressConfig emulated(std::uint64_t seed, unsigned threads, std::uint64_t ops) {
  StressConfig c;
  c.seed = seed;
  c.threads = threads;
  c.ops_per_thread = std::max<std::uint64_t>(50, static_cast<std::uint64_t>(static_cast<double>(ops) * stress_scale()));
  c.ranges = 4;
  c.range_pages = 512;
  c.pool_bytes = std::size_t{32} << 20;
  c.backend = "emulated";
  c.plugin_dir = UHMM_TEST_EMULATED_PLUGIN_DIR;
  return c;
}

void run_and_check(const StressConfig& c) {
  const StressReport r = run_stress(c);
  std::cout << "[stress] " << ::testing::UnitTest::GetInstance()->current_test_info()->name() << ": "
            << r.summary() << std::endl;
  EXPECT_TRUE(r.ok()) << r.describe(c);
  EXPECT_EQ(r.counters.pages_lost, 0u);
}

TEST(EmulatedStress, FourThreadsOnOneDevice) {
  ASSERT_TRUE(kTwoDevices);
  emuTestSetDelay(20, 11);  // the streams interleave differently
  run_and_check(emulated(808, 4, 400));
  emuTestSetDelay(0, 1);
}

// An oversubscribed pool: migrations evict, and fail short of room.
TEST(EmulatedStress, ThreeThreadsOversubscribed) {
  StressConfig c = emulated(909, 3, 400);
  c.pool_bytes = std::size_t{4} << 20;
  run_and_check(c);
}

// Pages also move device to device (peer copies), and kernels run on both
// devices from the same threads (each launch makes its device current).
TEST(EmulatedStress, ThreeThreadsOnTwoDevices) {
  StressConfig c = emulated(707, 3, 400);
  c.devices = 2;
  c.pool_bytes = std::size_t{16} << 20;
  run_and_check(c);
}

}  // namespace
}  // namespace uhmm::stress
