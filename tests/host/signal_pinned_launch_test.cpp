// Signal mode near its mapping budget (coarse, forced by a test point), with
// pages a launch holds in place on the host (thrashing pinning, Context::pin):
// the kernel thread reaches them through the application's view, so they must
// be open while held. A page the mechanism lowered while it was idle (or
// whose reopening it deferred), or a page it lowers while a launch takes it,
// would make the kernel fault and wait for the launch's own lock: a hang,
// which the watchdog turns into a failure (issue 13 item 8). Signal mode
// only: the test forces it.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <semaphore>
#include <span>
#include <string>
#include <thread>

#include "signal_test_support.hpp"
#include "test_support.hpp"
#include "uhmm/detail/test_points.hpp"
#include "uhmm/uhmm.hpp"

namespace uhmm::test {
namespace {

constexpr std::size_t kWords = kPageSize / sizeof(std::uint64_t);

ContextOptions signal_options() {
  ContextOptions o = cpu_options(16 * MiB);
  o.fault_mode = "signal";
  return o;
}

// The mechanism behaves as near vm.max_map_count for the scope.
struct ForcedCoarse {
  ForcedCoarse() { detail::test_points::signal_coarse.store(true); }
  ~ForcedCoarse() { detail::test_points::signal_coarse.store(false); }
  ForcedCoarse(const ForcedCoarse&) = delete;
  ForcedCoarse& operator=(const ForcedCoarse&) = delete;
};

// "rw-", "r--" or "---": the protection of the mapping holding p in the
// application's view (/proc/self/maps).
std::string protection_of(const void* p) {
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    unsigned long begin = 0, end = 0;
    char perms[5] = {};
    if (std::sscanf(line.c_str(), "%lx-%lx %4s", &begin, &end, perms) == 3 && begin <= addr && addr < end)
      return std::string(perms, 3);
  }
  return "unmapped";
}

std::uint64_t read(const std::uint64_t* p) { return *static_cast<const volatile std::uint64_t*>(p); }

// A kernel adds 1 to the first word of `page`, which the launch holds on the
// host. Under a watchdog: a kernel that faults on its own launch's lock hangs.
void add_one(Context& ctx, std::uint64_t* page, const char* what) {
  Watchdog watchdog(what, std::chrono::seconds(60));
  ctx.launch(1, [](std::size_t, device_span<std::uint64_t> x) { x[0] += 1; }, std::span<std::uint64_t>(page, kWords));
}

class SignalPinnedLaunch : public ::testing::Test {
 protected:
  Context ctx{signal_options()};
  std::uint64_t* a = nullptr;  // page 0: migrated to close its neighbour
  std::uint64_t* b = nullptr;  // page 1, in a's block: the launch holds it on the host

  void SetUp() override {
    ASSERT_STREQ(ctx.fault_mode(), "signal");
    a = static_cast<std::uint64_t*>(ctx.allocate(2 * kPageSize));
    b = a + kWords;
  }
  void TearDown() override { detail::test_points::signal_widen.store(nullptr); }

  // b comes back to the host on CPU faults twice: it thrashes, and cools
  // down on the host for the rest of the test.
  void make_b_thrash() {
    ctx.set_thrashing({.enabled = true, .bounces = 2, .window_ms = 60'000, .cooldown_ms = 600'000, .pin = true,
                       .throttle_ms = 0});
    for (int round = 0; round < 2; ++round) {
      ASSERT_EQ(ctx.migrate_to_device(b, kPageSize).migrated, 1u);
      ASSERT_EQ(read(b), 2u);
    }
    ASSERT_EQ(ctx.counters().thrashing_pages_detected, 1u);
  }
  void expect_done(std::uint64_t b_word) {
    const auto states = ctx.residency(a, 2 * kPageSize);
    EXPECT_EQ(states[0].residency, Residency::Device);
    EXPECT_EQ(states[1].residency, Residency::System);
    EXPECT_FALSE(states[1].locked);
    EXPECT_EQ(read(b), b_word);
    EXPECT_EQ(read(a), 1u);
    EXPECT_EQ(ctx.counters().pages_lost, 0u);
    const Status valid = ctx.validate();
    EXPECT_TRUE(valid) << valid.message;
  }
};

TEST_F(SignalPinnedLaunch, AThrashingPageLoweredWhileIdleIsOpenedForTheKernel) {
  ForcedCoarse coarse;
  a[0] = 1;
  b[0] = 2;
  make_b_thrash();
  // Coarse: migrating a lowers the rest of its block, b with it.
  ASSERT_EQ(ctx.migrate_to_device(a, kPageSize).migrated, 1u);
  ASSERT_EQ(protection_of(b), "---");
  const std::uint64_t pinned = ctx.counters().thrashing_pages_pinned;
  add_one(ctx, b, "AThrashingPageLoweredWhileIdleIsOpenedForTheKernel");
  EXPECT_EQ(ctx.counters().thrashing_pages_pinned - pinned, 1u);
  expect_done(3);
}

TEST_F(SignalPinnedLaunch, APinnedPageLoweredWhileIdleIsOpenedForTheKernel) {
  ForcedCoarse coarse;
  a[0] = 1;
  b[0] = 2;
  ctx.pin(b, kPageSize);
  ASSERT_EQ(ctx.migrate_to_device(a, kPageSize).migrated, 1u);
  ASSERT_EQ(protection_of(b), "---");
  add_one(ctx, b, "APinnedPageLoweredWhileIdleIsOpenedForTheKernel");
  expect_done(3);
}

TEST_F(SignalPinnedLaunch, ANeverTouchedPinnedPageLoweredToReadOnlyIsOpenedForTheKernel) {
  ForcedCoarse coarse;
  a[0] = 1;
  ctx.pin(b, kPageSize);
  // A read-mostly page keeps its host copy, read-only: its migration lowers
  // the never-touched b to read-only too, where its zeros are "mapped already".
  ctx.advise(a, kPageSize, Advice::set_read_mostly);
  ASSERT_EQ(ctx.migrate_to_device(a, kPageSize).migrated, 1u);
  ASSERT_EQ(ctx.residency(a, kPageSize)[0].residency, Residency::Duplicated);
  ASSERT_EQ(protection_of(b), "r--");
  add_one(ctx, b, "ANeverTouchedPinnedPageLoweredToReadOnlyIsOpenedForTheKernel");
  const auto states = ctx.residency(a, 2 * kPageSize);
  EXPECT_EQ(states[1].residency, Residency::System);
  EXPECT_EQ(read(b), 1u);
  EXPECT_EQ(read(a), 1u);
  const Status valid = ctx.validate();
  EXPECT_TRUE(valid) << valid.message;
}

TEST_F(SignalPinnedLaunch, APinnedPageWhoseReopeningWasDeferredIsOpenedForTheKernel) {
  ForcedCoarse coarse;
  a[0] = 1;
  b[0] = 2;
  ASSERT_EQ(ctx.migrate_to_device(b, kPageSize).migrated, 1u);  // lowers a too
  // Pinning brings b back from the application's thread: coarse, its opening
  // (which would split a run) is left for its first access.
  ctx.pin(b, kPageSize);
  ASSERT_EQ(ctx.residency(b, kPageSize)[0].residency, Residency::System);
  ASSERT_EQ(protection_of(b), "---");
  add_one(ctx, b, "APinnedPageWhoseReopeningWasDeferredIsOpenedForTheKernel");
  EXPECT_EQ(read(b), 3u);
  EXPECT_EQ(read(a), 1u);
  const Status valid = ctx.validate();
  EXPECT_TRUE(valid) << valid.message;
}

// The race: widen chose b (unlocked) to lower with a's block; a launch takes
// b in place and its kernel starts before widen applies the protection.
std::binary_semaphore g_launch_go{0}, g_kernel_started{0}, g_widened{0};
std::atomic<bool> g_armed{false};

void let_the_launch_take_b() {
  if (!g_armed.exchange(false)) return;
  g_launch_go.release();
  g_kernel_started.acquire();
}

TEST_F(SignalPinnedLaunch, CoarseLoweringLeavesAPageALaunchTookMeanwhile) {
  ForcedCoarse coarse;
  a[0] = 1;
  b[0] = 2;
  make_b_thrash();
  ASSERT_EQ(protection_of(b), "rw-");
  Watchdog watchdog("CoarseLoweringLeavesAPageALaunchTookMeanwhile", std::chrono::seconds(60));
  std::thread launcher([&] {
    g_launch_go.acquire();
    ctx.launch(
        1,
        [](std::size_t, device_span<std::uint64_t> x) {
          g_kernel_started.release();
          g_widened.acquire();  // a's migration is over: b keeps what it had
          x[0] += 1;
        },
        std::span<std::uint64_t>(b, kWords));
  });
  g_armed = true;
  detail::test_points::signal_widen.store(let_the_launch_take_b);
  const MigrationResult r = ctx.migrate_to_device(a, kPageSize);
  detail::test_points::signal_widen.store(nullptr);
  const bool hook_ran = !g_armed.exchange(false);
  if (!hook_ran) g_launch_go.release();  // let the launch run anyway, then fail
  g_widened.release();
  launcher.join();
  EXPECT_EQ(r.migrated, 1u);
  EXPECT_TRUE(hook_ran);
  expect_done(3);
}

}  // namespace
}  // namespace uhmm::test
