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
                                  {.enabled = true, .bounces = 8, .window_ms = 50, .cooldown_ms = 600001},
                                  {.enabled = true, .bounces = 8, .window_ms = 50, .cooldown_ms = 500, .throttle_ms = 1001}};
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
    EXPECT_EQ(now.throttle_ms, before.throttle_ms);
  }
}

// A kernel over the block: each page's first byte becomes p + 100.
void write_pages(Context& ctx, unsigned char* block) {
  ctx.launch(
      kPagesPerBlock, [](std::size_t p, device_span<unsigned char> s) { s[p * kPageSize] = static_cast<unsigned char>(p + 100); },
      std::span<unsigned char>(block, kBlockSize));
}

TEST_F(ThrashingTest, ALaunchLeavesCoolingPagesPinnedOnTheHostAndItsKernelReachesThem) {
  for (int round = 0; round < 4; ++round) bounce();
  ASSERT_EQ(ctx.counters().thrashing_pages_detected, kBouncing);
  const Counters before = ctx.counters();
  write_pages(ctx, block);
  const auto states = ctx.residency(block, kBlockSize);
  for (std::size_t p = 0; p < kPagesPerBlock; ++p) {
    EXPECT_EQ(states[p].residency, p < kBouncing ? Residency::System : Residency::Device) << p;
    EXPECT_FALSE(states[p].locked) << p;
  }
  const Counters after = ctx.counters();
  EXPECT_EQ(after.thrashing_pages_pinned - before.thrashing_pages_pinned, kBouncing);
  EXPECT_EQ(after.thrashing_throttles, before.thrashing_throttles);
  // The kernel wrote the pinned pages in place: reading them faults nothing back.
  for (std::size_t p = 0; p < kPagesPerBlock; ++p)
    EXPECT_EQ(static_cast<volatile unsigned char*>(block)[p * kPageSize], static_cast<unsigned char>(p + 100)) << p;
  EXPECT_EQ(ctx.counters().faults_from_device - after.faults_from_device, kPagesPerBlock - kBouncing);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
}

TEST_F(ThrashingTest, WithoutPinningALaunchWaitsForCoolingPagesThenTakesThem) {
  ThrashingOptions t = ctx.thrashing();
  t.pin = false;
  t.throttle_ms = 1000;  // the most: the launch comes well within it of the last bounce
  ctx.set_thrashing(t);
  for (int round = 0; round < 4; ++round) bounce();
  ASSERT_EQ(ctx.counters().thrashing_pages_detected, kBouncing);
  const Counters before = ctx.counters();
  write_pages(ctx, block);  // pages 0..7 came back just now: the launch waits
  EXPECT_EQ(ctx.counters().thrashing_throttles - before.thrashing_throttles, 1u);
  EXPECT_EQ(ctx.counters().thrashing_pages_pinned, before.thrashing_pages_pinned);
  EXPECT_EQ(on_device(), kPagesPerBlock);
  for (std::size_t p = 0; p < kPagesPerBlock; ++p)
    EXPECT_EQ(static_cast<volatile unsigned char*>(block)[p * kPageSize], static_cast<unsigned char>(p + 100)) << p;
  // Throttling off: the launch takes them at once.
  t.throttle_ms = 0;
  ctx.set_thrashing(t);
  for (std::size_t p = 0; p < kBouncing; ++p)  // back to the host, just now
    EXPECT_EQ(static_cast<volatile unsigned char*>(block)[p * kPageSize], static_cast<unsigned char>(p + 100)) << p;
  const Counters again = ctx.counters();
  write_pages(ctx, block);
  EXPECT_EQ(ctx.counters().thrashing_throttles, again.thrashing_throttles);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
}

}  // namespace
