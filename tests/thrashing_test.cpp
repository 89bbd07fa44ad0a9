// Thrashing: pages that come back to the host on CPU faults again and again
// within the window are detected, counted, and left on the device by
// fault-ahead for the cool-down; the knobs change at run time and bad values
// change nothing. Windows are either huge or tiny next to the sleeps here, so
// no outcome depends on timing.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "test_support.hpp"
#include "uhmm/uhmm.hpp"

namespace {

using namespace uhmm;
using namespace uhmm::test;

constexpr std::size_t MiB = std::size_t{1} << 20;
constexpr std::size_t kBouncing = 8;  // pages 0..7 bounce

class ThrashingTest : public ::testing::Test {
 protected:
  Context ctx{cpu_options(16 * MiB, /*fault_ahead=*/false)};
  unsigned char* block = nullptr;

  void SetUp() override {
    block = static_cast<unsigned char*>(ctx.allocate(kBlockSize));
    for (std::size_t p = 0; p < kPagesPerBlock; ++p) block[p * kPageSize] = static_cast<unsigned char>(p);
    ctx.set_thrashing({.enabled = true, .bounces = 4, .window_ms = 60'000, .cooldown_ms = 600'000});
  }
  void TearDown() override { ctx.free(block); }

  void read(std::size_t p) {
    EXPECT_EQ(static_cast<volatile unsigned char*>(block)[p * kPageSize], static_cast<unsigned char>(p));
  }
  // One bounce of pages 0..7: to the device, then each faulted back on its own.
  void bounce() {
    ASSERT_EQ(ctx.migrate_to_device(block, kBlockSize).failed, 0u);
    for (std::size_t p = 0; p < kBouncing; ++p) read(p);
  }
  std::size_t on_device() { return count(ctx.residency(block, kBlockSize), Residency::Device); }
};

TEST_F(ThrashingTest, PagesBouncingTheSetNumberOfTimesAreDetectedOnce) {
  for (int round = 0; round < 3; ++round) bounce();
  EXPECT_EQ(ctx.counters().thrashing_pages_detected, 0u);
  bounce();  // the fourth
  EXPECT_EQ(ctx.counters().thrashing_pages_detected, kBouncing);
  bounce();  // cooling down: faults counted, not detected again
  EXPECT_EQ(ctx.counters().thrashing_pages_detected, kBouncing);
  EXPECT_EQ(ctx.counters().thrashing_faults, kBouncing);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
}

TEST_F(ThrashingTest, FaultAheadLeavesCoolingNeighboursOnTheDevice) {
  for (int round = 0; round < 4; ++round) bounce();
  ASSERT_EQ(ctx.counters().thrashing_pages_detected, kBouncing);
  ASSERT_EQ(ctx.migrate_to_device(block, kBlockSize).failed, 0u);
  ctx.set_fault_ahead(true);
  read(100);  // brings the block back, but for the thrashing pages
  EXPECT_EQ(on_device(), kBouncing);
  EXPECT_EQ(ctx.counters().thrashing_not_prefetched, kBouncing);
  for (std::size_t p = 0; p < kBouncing; ++p)
    EXPECT_EQ(ctx.residency(block + p * kPageSize, kPageSize)[0].residency, Residency::Device) << p;
  read(0);  // a faulting page itself always comes back (with no cooling neighbour)
  EXPECT_EQ(ctx.residency(block, kPageSize)[0].residency, Residency::System);
  for (std::size_t p = 0; p < kPagesPerBlock; ++p) read(p);
  EXPECT_EQ(on_device(), 0u);
}

TEST_F(ThrashingTest, AfterTheCoolDownFaultAheadTakesThemAgain) {
  ctx.set_thrashing({.enabled = true, .bounces = 4, .window_ms = 60'000, .cooldown_ms = 1});
  for (int round = 0; round < 4; ++round) bounce();
  ASSERT_EQ(ctx.counters().thrashing_pages_detected, kBouncing);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_EQ(ctx.migrate_to_device(block, kBlockSize).failed, 0u);
  ctx.set_fault_ahead(true);
  read(100);
  EXPECT_EQ(on_device(), 0u);
  EXPECT_EQ(ctx.counters().thrashing_not_prefetched, 0u);
}

TEST_F(ThrashingTest, BouncesFartherApartThanTheWindowAreNotThrashing) {
  ctx.set_thrashing({.enabled = true, .bounces = 2, .window_ms = 1, .cooldown_ms = 600'000});
  for (int round = 0; round < 4; ++round) {
    bounce();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(ctx.counters().thrashing_pages_detected, 0u);
}

TEST_F(ThrashingTest, DisabledDetectsNothing) {
  ctx.set_thrashing({.enabled = false, .bounces = 2, .window_ms = 60'000, .cooldown_ms = 600'000});
  for (int round = 0; round < 4; ++round) bounce();
  EXPECT_EQ(ctx.counters().thrashing_pages_detected, 0u);
  EXPECT_FALSE(ctx.thrashing().enabled);
}

TEST_F(ThrashingTest, BadSettingsAreRefusedAndChangeNothing) {
  const ThrashingOptions before = ctx.thrashing();
  const ThrashingOptions bad[] = {{.enabled = true, .bounces = 1, .window_ms = 50, .cooldown_ms = 500},
                                  {.enabled = true, .bounces = 70000, .window_ms = 50, .cooldown_ms = 500},
                                  {.enabled = true, .bounces = 8, .window_ms = 0, .cooldown_ms = 500},
                                  {.enabled = true, .bounces = 8, .window_ms = 60001, .cooldown_ms = 500},
                                  {.enabled = true, .bounces = 8, .window_ms = 50, .cooldown_ms = 0},
                                  {.enabled = true, .bounces = 8, .window_ms = 50, .cooldown_ms = 600001}};
  for (const ThrashingOptions& t : bad) {
    try {
      ctx.set_thrashing(t);
      ADD_FAILURE() << "accepted bounces " << t.bounces << " window " << t.window_ms << " cooldown " << t.cooldown_ms;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::invalid_argument);
      EXPECT_NE(std::string(e.what()).find("set_thrashing"), std::string::npos) << e.what();
    }
    const ThrashingOptions now = ctx.thrashing();
    EXPECT_EQ(now.bounces, before.bounces);
    EXPECT_EQ(now.window_ms, before.window_ms);
    EXPECT_EQ(now.cooldown_ms, before.cooldown_ms);
  }
}

}  // namespace
