// Application signal handlers that read device-resident memory, run in a
// thread that is inside a uhmm call: the call defers asynchronous signals, so
// no handler runs while the thread holds a lock the fault service needs
// (deferred_signals.hpp). A watchdog fails a test that deadlocks instead of
// hanging ctest. Both fault modes (UHMM_FAULT_MODE).
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#include "test_support.hpp"
#include "signal_test_support.hpp"
#include "uhmm/detail/test_points.hpp"

namespace uhmm::test {
namespace {


std::atomic<std::uint64_t*> g_probe{nullptr};
std::atomic<std::uint64_t> g_read{0};
std::atomic<unsigned> g_runs{0};
std::atomic<pid_t> g_target{0};

void read_probe(int) {
  g_read.store(*g_probe.load());
  g_runs.fetch_add(1);
}

// Raised by the device pool with its mutex held, in the test's thread only.
void raise_in_target() {
  if (static_cast<pid_t>(::syscall(SYS_gettid)) == g_target.load()) ::raise(SIGUSR2);
}

struct PoolHook {
  explicit PoolHook(void (*hook)()) { detail::test_points::pool_locked.store(hook); }
  ~PoolHook() { detail::test_points::pool_locked.store(nullptr); }
};

// The deadlock, forced: the signal comes while migrate_to_device holds
// the page pool's mutex; its handler reads a device page of another range,
// and bringing that page back frees its device page in the same pool. Before
// deferral the service blocked on the mutex the interrupted thread held.
TEST(SignalDeferral, HandlerSignalledInsideThePoolLockIsServedAfterTheCall) {
  Watchdog watchdog("HandlerSignalledInsideThePoolLockIsServedAfterTheCall");
  Context ctx(cpu_options());
  if (kTsanDefersSignalHandlers && std::strcmp(ctx.fault_mode(), "signal") == 0)
    GTEST_SKIP() << "TSan blocks SIGSEGV while it runs a deferred handler";
  auto* probe = static_cast<std::uint64_t*>(ctx.allocate(kPageSize));
  auto* data = static_cast<std::byte*>(ctx.allocate(2 * MiB));
  *probe = 0x5157;
  ASSERT_EQ(ctx.migrate_to_device(probe, kPageSize).migrated, 1u);
  fill(data, 2 * MiB, 3);
  g_probe.store(probe);
  g_target.store(static_cast<pid_t>(::syscall(SYS_gettid)));
  ScopedHandler handler(SIGUSR2, read_probe);
  const unsigned runs = g_runs.load();
  {
    PoolHook hook(raise_in_target);
    EXPECT_EQ(ctx.migrate_to_device(data, 2 * MiB).migrated, 2 * MiB / kPageSize);
  }
  EXPECT_GT(g_runs.load(), runs);  // delivered when the call returned
  EXPECT_EQ(g_read.load(), 0x5157u);
  expect_pattern(data, 2 * MiB, 3);
  ctx.free(data);
  ctx.free(probe);
}

// The same through the driver API: the application's own call of the
// device's alloc_and_copy (device_pagemap) takes the pool's mutex too.
TEST(SignalDeferral, HandlerSignalledInsideADirectPagemapCallIsServedAfterIt) {
  Watchdog watchdog("HandlerSignalledInsideADirectPagemapCallIsServedAfterIt");
  Context ctx(cpu_options());
  if (kTsanDefersSignalHandlers && std::strcmp(ctx.fault_mode(), "signal") == 0)
    GTEST_SKIP() << "TSan blocks SIGSEGV while it runs a deferred handler";
  auto* probe = static_cast<std::uint64_t*>(ctx.allocate(kPageSize));
  auto* data = static_cast<std::byte*>(ctx.allocate(kPageSize));
  *probe = 0x6a6b;
  ASSERT_EQ(ctx.migrate_to_device(probe, kPageSize).migrated, 1u);
  fill(data, kPageSize, 4);
  g_probe.store(probe);
  g_target.store(static_cast<pid_t>(::syscall(SYS_gettid)));
  ScopedHandler handler(SIGUSR2, read_probe);
  std::uint64_t src = 0, dst = 0;
  MigrateVma args;
  args.start = data;
  args.end = data + kPageSize;
  args.src = &src;
  args.dst = &dst;
  args.flags = MIGRATE_VMA_SELECT_SYSTEM;
  args.destination = ctx.device_owner(0);
  migrate_vma_setup(ctx, args);
  ASSERT_EQ(args.cpages, 1u);
  const unsigned runs = g_runs.load();
  {
    PoolHook hook(raise_in_target);
    EXPECT_TRUE(device_pagemap(ctx, ctx.device_owner(0)).alloc_and_copy(args));
  }
  EXPECT_GT(g_runs.load(), runs);
  EXPECT_EQ(g_read.load(), 0x6a6bu);
  EXPECT_EQ(migrate_vma_pages(ctx, args), 1u);
  migrate_vma_finalize(ctx, args);
  expect_pattern(data, kPageSize, 4);
  ctx.free(data);
  ctx.free(probe);
}

// A thread in a loop of public calls, signalled at random moments by another
// thread; each handler reads a device-resident page of another range. Never
// a deadlock, every read right.
TEST(SignalDeferral, SignalsAtAThreadInALoopOfCallsAreAlwaysServed) {
  Watchdog watchdog("SignalsAtAThreadInALoopOfCallsAreAlwaysServed");
  Context ctx(cpu_options());
  if (kTsanDefersSignalHandlers && std::strcmp(ctx.fault_mode(), "signal") == 0)
    GTEST_SKIP() << "TSan blocks SIGSEGV while it runs a deferred handler";
  auto* probe = static_cast<std::uint64_t*>(ctx.allocate(kPageSize));
  *probe = 0x77;
  g_probe.store(probe);
  ScopedHandler handler(SIGUSR2, read_probe);
  std::atomic<bool> stop{false};
  std::atomic<unsigned> iterations{0};
  std::thread worker([&] {
    for (unsigned i = 0; !stop.load(); ++i) {
      ctx.migrate_to_device(probe, kPageSize);
      void* p = ctx.allocate(256 * 1024);
      fill(p, 256 * 1024, i);
      ctx.migrate_to_device(p, 256 * 1024);
      (void)ctx.residency(p, 256 * 1024);
      ctx.migrate_to_host(p, 128 * 1024);
      expect_pattern(p, 256 * 1024, i);
      ctx.free(p);
      iterations.fetch_add(1);
    }
  });
  const unsigned before = g_runs.load();
  constexpr unsigned kSignals = 300;
  for (unsigned k = 0; k < kSignals; ++k) {
    pthread_kill(worker.native_handle(), SIGUSR2);
    // Spread the signals over the loop's calls; each waits for the last to be handled.
    while (g_runs.load() - before <= k) std::this_thread::yield();
    ASSERT_EQ(g_read.load(), 0x77u);
  }
  stop.store(true);
  worker.join();
  EXPECT_GT(iterations.load(), 0u);
  ctx.free(probe);
}

}  // namespace
}  // namespace uhmm::test
