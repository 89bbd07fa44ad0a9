// A launch owns its pages (issue 12): every page of every span is resident
// and LOCKED before the kernel runs, and nothing takes it until the kernel
// has finished, whatever other threads do to the same block meanwhile
// (fault-ahead, eviction, migrate_to_host). Read-mostly pages duplicated on
// another device are made resident on the launch's device, and a launch larger
// than the pool fails with out_of_memory before anything moves or runs.
// Both fault modes (UHMM_FAULT_MODE=signal runs the file again).
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <span>
#include <thread>
#include <vector>

#include "test_support.hpp"
#include "uhmm/uhmm.hpp"

namespace uhmm::test {
namespace {

constexpr std::size_t kBlockPages = kPagesPerBlock;
constexpr std::size_t kSpanPages = 64;
constexpr std::size_t kWordsPerPage = kPageSize / 8;
constexpr std::size_t kSpanWords = kSpanPages * kWordsPerPage;
constexpr int kLaunches = 1000;
constexpr int kMinRounds = 16;

std::byte* page(void* base, std::size_t p) { return static_cast<std::byte*>(base) + p * kPageSize; }

// One thread launches a kernel over the first 64 pages of a 2 MiB block,
// kLaunches times, each adding 1 to every word; `compete` runs in a loop on
// another thread meanwhile. Every launch must succeed and every word must
// hold the number of launches.
void launch_while(Context& ctx, std::uint64_t* block, const std::function<void()>& compete) {
  for (std::size_t i = 0; i < kSpanWords; ++i) block[i] = 0;
  std::atomic<bool> stop{false};
  std::atomic<int> rounds{0};
  // Two competitors: more chances to land in the window the bug had between
  // the launch's migration and its locking.
  std::vector<std::thread> others;
  for (int c = 0; c < 2; ++c)
    others.emplace_back([&] {
      while (!stop.load()) {
        compete();
        rounds.fetch_add(1);
      }
    });
  int failed = 0;
  std::string first_error;
  // At least kLaunches, and on until the other thread has competed a few
  // times (on a loaded machine it may start late).
  int launches = 0;
  for (; launches < kLaunches || rounds.load() < kMinRounds; ++launches) {
    try {
      ctx.launch(kSpanWords, [](std::size_t i, device_span<std::uint64_t> x) { x[i] += 1; },
                 std::span<std::uint64_t>(block, kSpanWords));
    } catch (const Error& e) {
      if (failed++ == 0) first_error = e.what();
    }
  }
  stop = true;
  for (auto& t : others) t.join();
  EXPECT_EQ(failed, 0) << "launches failed; the first: " << first_error;
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < kSpanWords; ++i) wrong += block[i] != static_cast<std::uint64_t>(launches);
  EXPECT_EQ(wrong, 0u) << "words not incremented once per launch";
  for (const auto& s : ctx.residency(block, kBlockPages * kPageSize)) ASSERT_FALSE(s.locked);
  EXPECT_EQ(ctx.counters().pages_lost, 0u);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
}

TEST(LaunchHold, NeighboursMigratedAndReadBackByFaultAheadNeverTakeTheKernelsPages) {
  Context ctx(cpu_options(64 * MiB, /*fault_ahead=*/true));
  auto* block = static_cast<std::uint64_t*>(ctx.allocate(kBlockPages * kPageSize));
  auto* neighbours = page(block, kSpanPages);
  const std::size_t neighbour_bytes = (kBlockPages - kSpanPages) * kPageSize;
  std::atomic<std::size_t> k{0};
  launch_while(ctx, block, [&] {
    ctx.migrate_to_device(neighbours, neighbour_bytes);
    // A CPU read of one neighbour: fault-ahead brings the block home.
    const auto* w = reinterpret_cast<volatile const std::uint64_t*>(page(neighbours, k++ % 64));
    (void)*w;
  });
  ctx.free(block);
}

TEST(LaunchHold, EvictionOfThePoolNeverTakesTheKernelsPages) {
  Context ctx(cpu_options(64 * MiB));
  auto* block = static_cast<std::uint64_t*>(ctx.allocate(kBlockPages * kPageSize));
  const OwnerId dev = ctx.device_owner(0);
  const std::size_t pool_pages = 64 * MiB / kPageSize;
  launch_while(ctx, block, [&] { migrate_device_range(ctx, dev, 0, pool_pages); });
  ctx.free(block);
}

TEST(LaunchHold, PoolPressureNeverTakesTheKernelsPages) {
  // A 4 MiB pool: the other thread's 2 MiB migrations evict the kernel's chunk
  // when they can.
  Context ctx(cpu_options(4 * MiB));
  auto* block = static_cast<std::uint64_t*>(ctx.allocate(kBlockPages * kPageSize));
  auto* other = static_cast<std::byte*>(ctx.allocate(4 * MiB));
  std::atomic<std::size_t> k{0};
  launch_while(ctx, block, [&] { ctx.migrate_to_device(other + (k++ % 2) * 2 * MiB, 2 * MiB); });
  ctx.free(other);
  ctx.free(block);
}

TEST(LaunchHold, MigrateToHostOfTheSpanNeverTakesTheKernelsPages) {
  Context ctx(cpu_options(64 * MiB));
  auto* block = static_cast<std::uint64_t*>(ctx.allocate(kBlockPages * kPageSize));
  launch_while(ctx, block, [&] { ctx.migrate_to_host(block, kSpanPages * kPageSize); });
  ctx.free(block);
}

// Read-mostly pages duplicated on device 1 are made resident on device 0.
class LaunchHoldReadMostly : public ::testing::TestWithParam<bool> {
 protected:
  Context ctx{cpu_options(16 * MiB, /*fault_ahead=*/true, /*devices=*/2)};
  std::uint64_t* data = nullptr;
  static constexpr std::size_t kWords = kBlockPages * kWordsPerPage;
  OwnerId dev0() const { return ctx.device_owner(0); }
  OwnerId dev1() const { return ctx.device_owner(1); }
  void SetUp() override {
    data = static_cast<std::uint64_t*>(ctx.allocate(kBlockPages * kPageSize));
    fill(data, kBlockPages * kPageSize, 7);
    ctx.advise(data, kBlockPages * kPageSize, Advice::set_read_mostly);
    ASSERT_EQ(ctx.prefetch(data, kBlockPages * kPageSize, Location::device(dev1())).migrated, kBlockPages);
    for (const auto& s : ctx.residency(data, kBlockPages * kPageSize)) {
      ASSERT_EQ(s.residency, Residency::Duplicated);
      ASSERT_EQ(s.device.owner, dev1());
    }
  }
  void TearDown() override { ctx.free(data); }
};

TEST_P(LaunchHoldReadMostly, ALaunchOnTheOtherDeviceMakesThePagesResidentThere) {
  const bool writable = GetParam();
  std::atomic<std::size_t> wrong{0};
  if (writable) {
    ctx.launch_on(dev0(), kWords, [](std::size_t i, device_span<std::uint64_t> x) { x[i] += 1; },
                  std::span<std::uint64_t>(data, kWords));
  } else {
    ctx.launch_on(
        dev0(), kWords,
        [&](std::size_t i, device_span<const std::uint64_t> x) {
          if (x[i] != pattern(7, i)) wrong.fetch_add(1);
        },
        std::span<const std::uint64_t>(data, kWords));
  }
  EXPECT_EQ(wrong.load(), 0u);
  // A const span keeps the page read-mostly (duplicated on device 0); a
  // writable one collapses it to device 0's copy. Device 1's copy is gone.
  for (const auto& s : ctx.residency(data, kBlockPages * kPageSize)) {
    ASSERT_EQ(s.residency, writable ? Residency::Device : Residency::Duplicated);
    ASSERT_EQ(s.device.owner, dev0());
    ASSERT_FALSE(s.locked);
  }
  EXPECT_EQ(ctx.counters().device_pages_in_use, kBlockPages) << "device 1's copies were not freed";
  for (std::size_t i = 0; i < kWords; ++i) ASSERT_EQ(data[i], pattern(7, i) + (writable ? 1 : 0)) << i;
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
}

INSTANTIATE_TEST_SUITE_P(Spans, LaunchHoldReadMostly, ::testing::Values(false, true),
                         [](const auto& param_info) { return param_info.param ? "Writable" : "Const"; });

// A launch larger than the pool fails before anything moves or runs.
class LaunchHoldTooLarge : public ::testing::TestWithParam<bool> {};

TEST_P(LaunchHoldTooLarge, FailsWithOutOfMemoryAndChangesNothing) {
  ContextOptions o = cpu_options(8 * MiB);
  o.evict = GetParam();
  Context ctx(o);
  constexpr std::size_t kBytes = 32 * MiB;
  auto* p = static_cast<std::uint64_t*>(ctx.allocate(kBytes));
  fill(p, kBytes, 11);
  const Counters before = ctx.counters();
  std::atomic<bool> ran{false};
  try {
    ctx.launch(
        kBytes / 8,
        [&](std::size_t i, device_span<std::uint64_t> x) {
          ran = true;
          x[i] = ~x[i];
        },
        std::span<std::uint64_t>(p, kBytes / 8));
    ADD_FAILURE() << "a launch larger than the pool succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::out_of_memory) << e.what();
  }
  EXPECT_FALSE(ran.load()) << "the kernel ran";
  EXPECT_EQ(ctx.counters().pages_to_device, before.pages_to_device) << "pages moved";
  for (const auto& s : ctx.residency(p, kBytes)) {
    ASSERT_EQ(s.residency, Residency::System);
    ASSERT_FALSE(s.locked);
  }
  expect_pattern(p, kBytes, 11);
  ctx.free(p);
}

INSTANTIATE_TEST_SUITE_P(Eviction, LaunchHoldTooLarge, ::testing::Values(false, true),
                         [](const auto& param_info) { return param_info.param ? "EvictOn" : "EvictOff"; });

// Two spans over the same pages are held once; the kernel sees both.
TEST(LaunchHold, OverlappingSpansAreHeldOnce) {
  Context ctx(cpu_options());
  auto* p = static_cast<std::uint64_t*>(ctx.allocate(kSpanPages * kPageSize));
  for (std::size_t i = 0; i < kSpanWords; ++i) p[i] = i;
  const std::size_t half = kSpanWords / 2;
  ctx.launch(
      half,
      [](std::size_t i, device_span<const std::uint64_t> in, device_span<std::uint64_t> out) { out[i] = in[i] * 2; },
      std::span<const std::uint64_t>(p, kSpanWords), std::span<std::uint64_t>(p + half, half));
  for (std::size_t i = 0; i < kSpanWords; ++i) ASSERT_EQ(p[i], i < half ? i : 2 * (i - half)) << i;
  for (const auto& s : ctx.residency(p, kSpanPages * kPageSize)) ASSERT_FALSE(s.locked);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  ctx.free(p);
}

// Two small buffers side by side in one page, and one buffer passed twice:
// their spans round out to the same page, which each must reach (issue 13,
// item 7: the second span's table entry stayed empty, device_fault).
TEST(LaunchHold, SpansSharingAPageBothReachIt) {
  Context ctx(cpu_options());
  auto* p = static_cast<std::uint64_t*>(ctx.allocate(kPageSize));
  for (std::size_t i = 0; i < 64; ++i) p[i] = i;
  ctx.launch(
      32, [](std::size_t i, device_span<const std::uint64_t> a, device_span<std::uint64_t> b) { b[i] = a[i] + 100; },
      std::span<const std::uint64_t>(p, 32), std::span<std::uint64_t>(p + 32, 32));
  for (std::size_t i = 0; i < 32; ++i) ASSERT_EQ(p[32 + i], i + 100) << i;
  ctx.launch(
      64, [](std::size_t i, device_span<const std::uint64_t> in, device_span<std::uint64_t> out) { out[i] = in[i] + 1; },
      std::span<const std::uint64_t>(p, 64), std::span<std::uint64_t>(p, 64));
  for (std::size_t i = 0; i < 32; ++i) ASSERT_EQ(p[i], i + 1) << i;
  for (std::size_t i = 0; i < 32; ++i) ASSERT_EQ(p[32 + i], i + 101) << i;
  ASSERT_FALSE(ctx.residency(p, kPageSize)[0].locked);
  ctx.free(p);
}

// Pages pinned to the host (Context::pin) are held there, in place, where the
// device's kernels reach host memory (the cpu backend): the kernel runs on
// every page, none moves. Never-touched pinned pages get their zeros first.
TEST(LaunchHold, PinnedPagesAreHeldInPlaceOnTheHost) {
  Context ctx(cpu_options());
  auto* p = static_cast<std::uint64_t*>(ctx.allocate(kSpanPages * kPageSize));
  const std::size_t touched = kSpanWords / 2;  // the second half stays never-touched
  for (std::size_t i = 0; i < touched; ++i) p[i] = i;
  ctx.pin(p, kSpanPages * kPageSize);
  ctx.launch(kSpanWords, [](std::size_t i, device_span<std::uint64_t> x) { x[i] += 1; },
             std::span<std::uint64_t>(p, kSpanWords));
  for (const auto& s : ctx.residency(p, kSpanPages * kPageSize)) {
    ASSERT_EQ(s.residency, Residency::System);
    ASSERT_TRUE(s.pinned);
    ASSERT_FALSE(s.locked);
  }
  for (std::size_t i = 0; i < kSpanWords; ++i) ASSERT_EQ(p[i], (i < touched ? i : 0) + 1) << i;
  EXPECT_EQ(ctx.counters().pages_to_device, 0u);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  ctx.free(p);
}

}  // namespace
}  // namespace uhmm::test
