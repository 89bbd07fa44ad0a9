// DESIGN.md's invariants under concurrency: no lost write, no stale read, no
// leak between ranges, and the fault service's batching (fault-ahead, parking).
#include <gtest/gtest.h>
#include "uhmm/hooks.hpp"

#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "test_support.hpp"

namespace uhmm::test {
namespace {

using namespace std::chrono_literals;

// Writers own words (word % writers == id) spread over every page; two
// migrators move random sub-ranges both ways meanwhile. Every read is checked against
// the writer's shadow copy, and everything once more at the end.
void writers_against_migrations(bool fault_ahead, std::size_t writers, std::uint64_t seed) {
  Context ctx(cpu_options(64 * MiB, fault_ahead));
  const std::size_t bytes = 4 * MiB;
  const std::size_t words = bytes / 8;
  auto* w = static_cast<std::uint64_t*>(ctx.allocate(bytes));
  std::vector<std::uint64_t> shadow(words, 0);
  std::atomic<bool> done{false};
  std::atomic<std::size_t> mismatches{0};
  std::atomic<std::size_t> migrations{0};

  auto migrate = [&](std::uint64_t stream_seed) {
    std::mt19937_64 rng(stream_seed);
    auto* base = reinterpret_cast<std::byte*>(w);
    while (!done.load()) {
      const std::size_t pages = bytes / kPageSize;
      const std::size_t first = rng() % pages;
      const std::size_t count = 1 + rng() % (pages - first);
      if (rng() % 2)
        ctx.migrate_to_device(base + first * kPageSize, count * kPageSize);
      else
        ctx.migrate_to_host(base + first * kPageSize, count * kPageSize);
      migrations.fetch_add(1);
    }
  };
  // Two migrators: they also race each other for the same pages.
  std::thread migrator(migrate, seed);
  std::thread migrator2(migrate, seed + 1000);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < writers; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(seed * 31 + t);
      // Run until both enough operations and enough migrations have happened.
      for (std::size_t op = 0; op < 20000 || migrations.load() < 200; ++op) {
        const std::size_t word = (rng() % (words / writers)) * writers + t;
        if (rng() % 3 == 0) {
          if (w[word] != shadow[word]) mismatches.fetch_add(1);
        } else {
          const std::uint64_t v = pattern(seed + op, word);
          w[word] = v;
          shadow[word] = v;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  done = true;
  migrator.join();
  migrator2.join();
  EXPECT_EQ(mismatches.load(), 0u) << "seed " << seed;
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < words; ++i) wrong += w[i] != shadow[i];
  EXPECT_EQ(wrong, 0u) << "seed " << seed;
  for (const auto& s : ctx.residency(w, bytes)) EXPECT_FALSE(s.locked);
  const Status valid = ctx.validate();
  EXPECT_TRUE(valid) << valid.message;
}

TEST(NoLostWrite, WritersRacingMigrationsBothWaysWithFaultAhead) { writers_against_migrations(true, 3, 1); }
TEST(NoLostWrite, WritersRacingMigrationsBothWaysWithoutFaultAhead) { writers_against_migrations(false, 3, 2); }
TEST(NoLostWrite, ManyWritersSharingPagesRacingMigrations) { writers_against_migrations(true, 8, 3); }

TEST(NoLostWrite, StoreDuringSlowMigrationWaitsThenLandsOnTheDevicePage) {
  Context ctx(cpu_options());
  auto* p = static_cast<std::uint64_t*>(ctx.allocate(64 * kPageSize));
  fill(p, 64 * kPageSize, 5);
  FaultInjection slow;
  slow.copy_delay_us = 300000;  // the copy batch sleeps first: a wide window
  uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), slow);
  Stream stream = ctx.create_stream();
  auto pending = ctx.migrate_to_device_async(stream, p, 64 * kPageSize);
  while (!ctx.residency(p, kPageSize)[0].locked) std::this_thread::yield();
  std::this_thread::sleep_for(20ms);  // setup write-protects right after locking
  p[3] = 0xabcdef;                     // blocks until the migration ends
  const MigrationResult r = pending.get();
  EXPECT_EQ(r.migrated, 64u);
  EXPECT_EQ(p[3], 0xabcdefu);
  EXPECT_GE(ctx.counters().faults_write_protect, 1u);
  p[3] = pattern(5, 3);
  expect_pattern(p, 64 * kPageSize, 5);
}

TEST(Pinning, PinDuringASlowMigrationWaitsAndLeavesEveryPageOnTheHost) {
  Context ctx(cpu_options());
  auto* p = static_cast<std::uint64_t*>(ctx.allocate(16 * kPageSize));
  fill(p, 16 * kPageSize, 13);
  FaultInjection slow;
  slow.copy_delay_us = 200000;
  uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), slow);
  Stream stream = ctx.create_stream();
  auto pending = ctx.migrate_to_device_async(stream, p, 16 * kPageSize);
  while (!ctx.residency(p, kPageSize)[0].locked) std::this_thread::yield();
  const MigrationResult pinned = ctx.pin(p, 16 * kPageSize);  // the migration holds every page
  EXPECT_EQ(pending.get().migrated, 16u);                       // it finished first...
  EXPECT_EQ(pinned.migrated, 16u);                              // ...and pin brought them all back
  for (const PageState& s : ctx.residency(p, 16 * kPageSize)) {
    EXPECT_EQ(s.residency, Residency::System);
    EXPECT_TRUE(s.pinned);
  }
  uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), FaultInjection{});
  EXPECT_EQ(ctx.migrate_to_device(p, 16 * kPageSize).skipped, 16u);
  expect_pattern(p, 16 * kPageSize, 13);
}

TEST(NoStaleRead, ReadersDuringSlowMigrationSeeTheDataAndAfterwardsTheDevicePages) {
  Context ctx(cpu_options());
  auto* p = static_cast<std::uint64_t*>(ctx.allocate(32 * kPageSize));
  fill(p, 32 * kPageSize, 6);
  FaultInjection slow;
  slow.copy_delay_us = 200000;
  uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), slow);
  Stream stream = ctx.create_stream();
  auto pending = ctx.migrate_to_device_async(stream, p, 32 * kPageSize);
  while (!ctx.residency(p, kPageSize)[0].locked) std::this_thread::yield();
  expect_pattern(p, 32 * kPageSize, 6);  // readers go on during the copy
  pending.get();
  uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), FaultInjection{});
  // A kernel writes on the device; the CPU must see the kernel's values.
  std::span<std::uint64_t> data(p, 32 * kPageSize / 8);
  ctx.launch(data.size(), [](std::size_t i, device_span<std::uint64_t> x) { x[i] = ~x[i]; }, data);
  for (std::size_t i = 0; i < data.size(); ++i) ASSERT_EQ(p[i], ~pattern(6, i)) << "word " << i;
}

TEST(NoStaleRead, CpuAccessDuringAKernelWaitsForTheKernelsWrite) {
  Context ctx(cpu_options());
  auto* p = static_cast<std::uint64_t*>(ctx.allocate(kPageSize));
  p[0] = 1;
  std::atomic<bool> running{false};
  std::thread kernel([&] {
    ctx.launch(
        1,
        [&](std::size_t, device_span<std::uint64_t> x) {
          running = true;
          std::this_thread::sleep_for(100ms);
          x[0] = 2;
        },
        std::span<std::uint64_t>(p, 1));
  });
  while (!running) std::this_thread::yield();
  EXPECT_EQ(p[0], 2u);  // parked until the kernel released the page
  kernel.join();
  EXPECT_GE(ctx.counters().faults_parked, 1u);
}

TEST(NoLeakBetweenRanges, DevicePagesOfAFreedRangeReachTheNextRangeAsZeros) {
  Context ctx(cpu_options(4 * MiB));
  auto* a = static_cast<std::byte*>(ctx.allocate(4 * MiB));
  fill(a, 4 * MiB, 8);
  ASSERT_EQ(ctx.migrate_to_device(a, 4 * MiB).migrated, 4 * MiB / kPageSize);  // the whole pool
  ctx.free(a);
  ASSERT_EQ(ctx.counters().device_pages_in_use, 0u);

  auto* b = static_cast<std::uint64_t*>(ctx.allocate(4 * MiB));
  b[1] = 42;  // one page written on the host, the rest never touched
  ASSERT_EQ(ctx.migrate_to_device(b, 4 * MiB).migrated, 4 * MiB / kPageSize);
  std::atomic<std::size_t> nonzero{0};
  std::span<std::uint64_t> data(b, 4 * MiB / 8);
  ctx.launch(
      data.size(),
      [&](std::size_t i, device_span<std::uint64_t> x) {
        if (x[i] != (i == 1 ? 42u : 0u)) nonzero.fetch_add(1);
      },
      data);
  EXPECT_EQ(nonzero.load(), 0u);  // seen on the device, before any copy back
}

TEST(FaultService, FaultAheadBringsTheFaultingPagesBlockBackInOneGo) {
  Context ctx(cpu_options(64 * MiB, true));
  auto* p = static_cast<std::uint64_t*>(ctx.allocate(2 * kBlockSize));
  fill(p, 2 * kBlockSize, 9);
  ctx.migrate_to_device(p, 2 * kBlockSize);
  EXPECT_EQ(p[10], pattern(9, 10));
  const Counters c = ctx.counters();
  EXPECT_EQ(c.faults_from_device, 1u);
  EXPECT_EQ(c.pages_fault_ahead, kPagesPerBlock - 1);
  const auto pages = ctx.residency(p, 2 * kBlockSize);
  EXPECT_EQ(count(pages, Residency::System), kPagesPerBlock);  // this block only
  EXPECT_EQ(pages[kPagesPerBlock].residency, Residency::Device);
}

TEST(FaultService, WithoutFaultAheadOnlyTheFaultingPageComesBack) {
  Context ctx(cpu_options(64 * MiB, false));
  auto* p = static_cast<std::uint64_t*>(ctx.allocate(kBlockSize));
  fill(p, kBlockSize, 10);
  ctx.migrate_to_device(p, kBlockSize);
  EXPECT_EQ(p[10], pattern(10, 10));
  EXPECT_EQ(ctx.counters().faults_from_device, 1u);
  EXPECT_EQ(ctx.counters().pages_fault_ahead, 0u);
  EXPECT_EQ(count(ctx.residency(p, kBlockSize), Residency::System), 1u);
}

TEST(FaultService, FirstTouchMapsZerosOverTheWholeBlockInOneFault) {
  Context ctx(cpu_options(64 * MiB, true));
  auto* p = static_cast<std::byte*>(ctx.allocate(kBlockSize));
  for (std::size_t i = 0; i < kBlockSize; i += kPageSize) ASSERT_EQ(p[i + 7], std::byte{0});
  for (std::size_t i = 0; i < kBlockSize; i += kPageSize) p[i] = std::byte{1};  // COW in the kernel: no uffd fault
  // Signal mode opens never-touched pages (so system calls work): no fault at all.
  EXPECT_EQ(ctx.counters().faults_zero_fill, std::strcmp(ctx.fault_mode(), "signal") == 0 ? 0u : 1u);
  EXPECT_EQ(count(ctx.residency(p, kBlockSize), Residency::System), kPagesPerBlock);
}

TEST(FaultService, ManyThreadsFaultingDistinctAndSharedDevicePagesAllGetTheirData) {
  Context ctx(cpu_options(64 * MiB, false));
  const std::size_t bytes = 2 * MiB;
  auto* p = static_cast<std::uint64_t*>(ctx.allocate(bytes));
  fill(p, bytes, 11);
  for (int round = 0; round < 5; ++round) {
    ctx.migrate_to_device(p, bytes);
    std::vector<std::thread> threads;
    std::atomic<std::size_t> wrong{0};
    for (std::size_t t = 0; t < 6; ++t)
      threads.emplace_back([&, t] {
        // Even threads walk the range forwards, odd ones backwards: shared pages
        // are faulted by two threads at once.
        const std::size_t words = bytes / 8;
        for (std::size_t k = 0; k < words; k += 97) {
          const std::size_t i = t % 2 ? words - 1 - k : k;
          if (p[i] != pattern(11, i)) wrong.fetch_add(1);
        }
      });
    for (auto& th : threads) th.join();
    EXPECT_EQ(wrong.load(), 0u) << "round " << round;
    const Status valid = ctx.validate();
    EXPECT_TRUE(valid) << valid.message;
  }
  expect_pattern(p, bytes, 11);
}

TEST(Lifecycle, ContextTeardownWithPagesOnTheDeviceReleasesThem) {
  for (int i = 0; i < 3; ++i) {
    Context ctx(cpu_options(8 * MiB));
    auto* p = ctx.allocate(6 * MiB);
    fill(p, 6 * MiB, 12);
    ctx.migrate_to_device(p, 6 * MiB);
    EXPECT_EQ(ctx.counters().device_pages_in_use, 6 * MiB / kPageSize);
  }  // no leak: ASan and the pool's own checks would catch one
}

}  // namespace
}  // namespace uhmm::test
