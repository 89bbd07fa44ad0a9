// Odd but legal use: freeing a range while other threads migrate it, signals
// landing on a thread blocked in a slow fault, user code that throws inside a
// kernel. Each ends in a clear error or a completed call, never a crash, with
// no page left locked and the pool back to where it was.
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <span>
#include <stdexcept>
#include <thread>
#include <vector>

#include "test_support.hpp"
#include "uhmm/uhmm.hpp"
#include "uhmm/hooks.hpp"

namespace {

using namespace uhmm;
using namespace uhmm::test;

constexpr std::size_t kBytes = 2 * MiB;
constexpr std::size_t kPages = kBytes / kPageSize;

TEST(OddUseTest, FreeWhileOtherThreadsMigrateTheRangeEndsWithAnEmptyPool) {
  Context ctx(cpu_options());
  for (int round = 0; round < 10; ++round) {
    void* p = ctx.allocate(kBytes);
    fill(p, kBytes, round);
    std::atomic<int> started{0};
    std::atomic<std::size_t> errors{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 3; ++t)
      threads.emplace_back([&, t] {
        ++started;
        for (;;) {
          try {
            auto* q = static_cast<std::byte*>(p) + t * (kBytes / 4);
            ctx.migrate_to_device(q, kBytes / 4);
            ctx.migrate_to_host(q, kBytes / 4);
          } catch (const Error& e) {
            // The range went away: a clear error, then nothing more to do.
            if (e.code() == Errc::out_of_range) ++errors;
            return;
          }
        }
      });
    while (started.load() < 3) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    ctx.free(p);
    for (auto& t : threads) t.join();
    EXPECT_EQ(errors.load(), 3u);
    EXPECT_EQ(ctx.counters().device_pages_in_use, 0u) << "round " << round;
  }
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
}

std::atomic<std::size_t> signals_seen{0};
void count_signal(int) { signals_seen.fetch_add(1, std::memory_order_relaxed); }

TEST(OddUseTest, SignalsLandingDuringSlowFaultsLeaveTheDataRight) {
  Context ctx(cpu_options(64 * MiB, /*fault_ahead=*/false));
  void* p = ctx.allocate(kBytes);
  fill(p, kBytes, 7);
  ASSERT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kPages);
  FaultInjection slow;
  slow.copy_delay_us = 2000;  // every copy back takes 2 ms: the faulting thread sleeps in the kernel
  uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), slow);

  struct sigaction sa {};
  sa.sa_handler = count_signal;  // no SA_RESTART: the fault is retried by the CPU, not the libc
  sigemptyset(&sa.sa_mask);
  struct sigaction old {};
  ASSERT_EQ(::sigaction(SIGUSR1, &sa, &old), 0);
  signals_seen = 0;

  std::atomic<bool> done{false};
  std::size_t bad = SIZE_MAX;
  std::thread reader([&] {
    // 64 pages, each a separate slow fault.
    bad = first_mismatch(p, 64 * kPageSize, 7);
    done = true;
  });
  const pthread_t target = reader.native_handle();
  while (!done.load()) {
    ::pthread_kill(target, SIGUSR1);
    std::this_thread::sleep_for(std::chrono::microseconds(300));
  }
  reader.join();
  ::sigaction(SIGUSR1, &old, nullptr);
  uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), FaultInjection{});
  EXPECT_EQ(bad, SIZE_MAX) << "first wrong word " << bad;
#if !defined(__SANITIZE_THREAD__)  // TSan defers handlers to its own safe points
  EXPECT_GT(signals_seen.load(), 10u);
#endif
  expect_pattern(p, kBytes, 7);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
}

TEST(OddUseTest, KernelThatThrowsGivesAClearErrorAndLeavesTheRangeUsable) {
  Context ctx(cpu_options());
  auto* p = static_cast<std::uint64_t*>(ctx.allocate(kBytes));
  const std::size_t n = kBytes / 8;
  for (std::size_t i = 0; i < n; ++i) p[i] = i;
  std::span<std::uint64_t> data(p, n);
  try {
    ctx.launch(
        n,
        [](std::size_t i, device_span<std::uint64_t> d) {
          if (i == 1000) throw std::runtime_error("user kernel gave up");
          d[i] += 1;
        },
        data);
    ADD_FAILURE() << "a throwing kernel did not fail the launch";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::device_error);
    EXPECT_NE(std::string(e.what()).find("user kernel gave up"), std::string::npos) << e.what();
  }
  for (const PageState& s : ctx.residency(p, kBytes)) ASSERT_FALSE(s.locked);
  // Still usable: another launch, CPU access, migrations.
  ctx.launch(n, [](std::size_t i, device_span<std::uint64_t> d) { d[i] = 3 * i; }, data);
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(p[i], 3 * i) << i;
  EXPECT_EQ(ctx.migrate_to_device(p, kBytes).failed, 0u);
  EXPECT_EQ(ctx.migrate_to_host(p, kBytes).failed, 0u);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  ctx.free(p);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
}

TEST(OddUseTest, KernelThatThrowsSomethingOddStillGivesAnError) {
  Context ctx(cpu_options());
  auto* p = static_cast<std::uint64_t*>(ctx.allocate(kBytes));
  std::span<std::uint64_t> data(p, kBytes / 8);
  EXPECT_THROW(ctx.launch(
                   data.size(), [](std::size_t i, device_span<std::uint64_t>) { if (i == 7) throw 42; }, data),
               Error);
  for (const PageState& s : ctx.residency(p, kBytes)) ASSERT_FALSE(s.locked);
  p[0] = 5;
  EXPECT_EQ(p[0], 5u);
}

}  // namespace
