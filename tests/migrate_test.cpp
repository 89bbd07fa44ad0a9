// The Linux kernel's HMM selftests (tools/testing/selftests/mm/hmm-tests.c),
// adapted: each checks data, per-page residency and counters.
#include <gtest/gtest.h>
#include "uhmm/hooks.hpp"

#include <cstring>

#include "test_support.hpp"

namespace uhmm::test {
namespace {

TEST(Migrate, ReadAndWriteAfterMigrationSeeEveryValue) {
  Context ctx(cpu_options());
  const std::size_t bytes = 1 * MiB;
  auto* p = static_cast<std::byte*>(ctx.allocate(bytes));
  fill(p, bytes, 1);
  const MigrationResult r = ctx.migrate_to_device(p, bytes);
  EXPECT_EQ(r.pages, bytes / kPageSize);
  EXPECT_EQ(r.migrated, bytes / kPageSize);
  EXPECT_EQ(r.failed, 0u);
  EXPECT_EQ(count(ctx.residency(p, bytes), Residency::Device), bytes / kPageSize);
  EXPECT_EQ(ctx.counters().pages_to_device, bytes / kPageSize);
  EXPECT_EQ(ctx.counters().bytes_to_device, bytes);

  expect_pattern(p, bytes, 1);  // reads fault the pages back
  EXPECT_EQ(count(ctx.residency(p, bytes), Residency::System), bytes / kPageSize);
  EXPECT_GT(ctx.counters().faults_from_device, 0u);
  EXPECT_EQ(ctx.counters().pages_to_host, bytes / kPageSize);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);

  // Write after migration: a store to a device page brings it back, then lands.
  ctx.migrate_to_device(p, bytes);
  fill(p, bytes, 2);
  expect_pattern(p, bytes, 2);
  ctx.free(p);
}

TEST(Migrate, FaultBackHalfThenMigrateAgain) {
  Context ctx(cpu_options(64 * MiB, /*fault_ahead=*/false));
  const std::size_t bytes = 64 * kPageSize;
  auto* p = static_cast<std::byte*>(ctx.allocate(bytes));
  fill(p, bytes, 3);
  ASSERT_EQ(ctx.migrate_to_device(p, bytes).migrated, 64u);
  // Touch the first half: without fault-ahead only those pages come back.
  expect_pattern(p, bytes / 2, 3);
  auto pages = ctx.residency(p, bytes);
  for (std::size_t i = 0; i < 64; ++i)
    EXPECT_EQ(pages[i].residency, i < 32 ? Residency::System : Residency::Device) << "page " << i;
  EXPECT_EQ(ctx.counters().faults_from_device, 32u);
  // Migrating again moves the first half and finds the second half there already.
  const MigrationResult r = ctx.migrate_to_device(p, bytes);
  EXPECT_EQ(r.migrated, 32u);
  EXPECT_EQ(r.already, 32u);
  EXPECT_EQ(count(ctx.residency(p, bytes), Residency::Device), 64u);
  expect_pattern(p, bytes, 3);
}

TEST(Migrate, TenMigrationsInARowKeepTheData) {
  Context ctx(cpu_options());
  const std::size_t bytes = 2 * MiB + 12 * kPageSize;
  auto* p = static_cast<std::byte*>(ctx.allocate(bytes));
  for (std::uint64_t round = 0; round < 10; ++round) {
    fill(p, bytes, 100 + round);
    EXPECT_EQ(ctx.migrate_to_device(p, bytes).migrated, bytes / kPageSize) << "round " << round;
    expect_pattern(p, bytes, 100 + round);
  }
  EXPECT_EQ(ctx.counters().pages_to_device, 10 * bytes / kPageSize);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
}

TEST(Migrate, NeverTouchedPagesAreZeroFilledOnTheDeviceWithoutACopy) {
  Context ctx(cpu_options());
  const std::size_t bytes = 3 * MiB;
  auto* p = static_cast<std::byte*>(ctx.allocate(bytes));
  const MigrationResult r = ctx.migrate_to_device(p, bytes);
  EXPECT_EQ(r.migrated, bytes / kPageSize);
  const Counters c = ctx.counters();
  EXPECT_EQ(c.pages_zero_filled_on_device, bytes / kPageSize);
  EXPECT_EQ(c.bytes_to_device, 0u);  // nothing was copied
  EXPECT_EQ(count(ctx.residency(p, bytes), Residency::Device), bytes / kPageSize);
  for (std::size_t i = 0; i < bytes; i += 512) ASSERT_EQ(p[i], std::byte{0}) << "offset " << i;
}

TEST(Migrate, MixedRangeReportsExactPerPageResults) {
  Context ctx(cpu_options(64 * MiB, /*fault_ahead=*/false));
  const std::size_t n = 40;
  auto* p = static_cast<std::byte*>(ctx.allocate(n * kPageSize));
  // Pages 0-9 written on the host, 10-19 pinned to the host, 20-29 already on
  // the device, 30-39 never touched.
  fill(p, 30 * kPageSize, 7);
  ctx.pin(p + 10 * kPageSize, 10 * kPageSize);
  ASSERT_EQ(ctx.migrate_to_device(p + 20 * kPageSize, 10 * kPageSize).migrated, 10u);

  const MigrationResult r = ctx.migrate_to_device(p, n * kPageSize);
  EXPECT_EQ(r.pages, n);
  EXPECT_EQ(r.migrated, 20u);  // 0-9 copied, 30-39 zero-filled
  EXPECT_EQ(r.already, 10u);
  EXPECT_EQ(r.skipped, 10u);  // pinned
  EXPECT_EQ(r.failed, 0u);
  const auto pages = ctx.residency(p, n * kPageSize);
  for (std::size_t i = 0; i < n; ++i) {
    const bool pinned = i >= 10 && i < 20;
    EXPECT_EQ(pages[i].residency, pinned ? Residency::System : Residency::Device) << "page " << i;
    EXPECT_EQ(pages[i].pinned, pinned) << "page " << i;
    EXPECT_FALSE(pages[i].locked) << "page " << i;
  }
  expect_pattern(p, 30 * kPageSize, 7);
  for (std::size_t i = 30 * kPageSize; i < n * kPageSize; ++i) ASSERT_EQ(p[i], std::byte{0});

  // Unpinned, the pages migrate like any other.
  ctx.unpin(p + 10 * kPageSize, 10 * kPageSize);
  EXPECT_EQ(ctx.migrate_to_device(p + 10 * kPageSize, 10 * kPageSize).migrated, 10u);
}

TEST(Migrate, AlignedTwoMiBRunMovesAsOneCompoundUnit) {
  Context ctx(cpu_options());
  auto* p = static_cast<std::byte*>(ctx.allocate(kBlockSize));
  fill(p, kBlockSize, 11);
  EXPECT_EQ(ctx.migrate_to_device(p, kBlockSize).migrated, kPagesPerBlock);
  EXPECT_EQ(ctx.counters().compound_migrations, 1u);
  // One whole chunk, in page order.
  const auto pages = ctx.residency(p, kBlockSize);
  const DevicePageIndex head = pages[0].device.index;
  EXPECT_EQ(head % kPagesPerChunk, 0u);
  for (std::size_t i = 0; i < kPagesPerBlock; ++i) ASSERT_EQ(pages[i].device.index, head + i);
  expect_pattern(p, kBlockSize, 11);
}

TEST(Migrate, CompoundFallsBackToSmallPagesWhenNoFreeChunkExists) {
  // Three chunks: fill them with three compound runs, then free half of two of
  // them. 512 pages are free but no whole chunk is.
  Context ctx(cpu_options(3 * kChunkSize, /*fault_ahead=*/false));
  auto* a = static_cast<std::byte*>(ctx.allocate(kBlockSize));
  auto* b = static_cast<std::byte*>(ctx.allocate(kBlockSize));
  auto* c = static_cast<std::byte*>(ctx.allocate(kBlockSize));
  auto* d = static_cast<std::byte*>(ctx.allocate(kBlockSize));
  for (auto* r : {a, b, c}) ASSERT_EQ(ctx.migrate_to_device(r, kBlockSize).migrated, kPagesPerBlock);
  ASSERT_EQ(ctx.counters().compound_migrations, 3u);
  ctx.migrate_to_host(a, kBlockSize / 2);
  ctx.migrate_to_host(b, kBlockSize / 2);
  fill(d, kBlockSize, 12);

  const MigrationResult r = ctx.migrate_to_device(d, kBlockSize);
  EXPECT_EQ(r.migrated, kPagesPerBlock);
  EXPECT_EQ(ctx.counters().compound_migrations, 3u);  // the fourth run went page by page
  EXPECT_EQ(ctx.counters().device_pages_in_use, 3 * kPagesPerChunk);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  expect_pattern(d, kBlockSize, 12);
}

TEST(Migrate, PoolExhaustionMigratesPartlyAndLosesNothing) {
  Context ctx(cpu_options(kChunkSize));  // 512 device pages
  const std::size_t bytes = 2 * kBlockSize;
  auto* p = static_cast<std::byte*>(ctx.allocate(bytes));
  fill(p, bytes, 13);
  const MigrationResult r = ctx.migrate_to_device(p, bytes);
  EXPECT_EQ(r.migrated, kPagesPerChunk);
  EXPECT_EQ(r.failed, bytes / kPageSize - kPagesPerChunk);
  EXPECT_EQ(r.status.code, Errc::out_of_memory);
  EXPECT_GT(ctx.counters().alloc_failures, 0u);
  const auto pages = ctx.residency(p, bytes);
  EXPECT_EQ(count(pages, Residency::Device), kPagesPerChunk);
  EXPECT_EQ(count(pages, Residency::System), bytes / kPageSize - kPagesPerChunk);
  for (const auto& s : pages) EXPECT_FALSE(s.locked);
  expect_pattern(p, bytes, 13);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
}

TEST(Migrate, InjectedCopyFailureMidBatchKeepsFailedPagesOnTheHost) {
  Context ctx(cpu_options());
  const std::size_t n = 256;  // not a whole block: 4 KiB pages, one batch
  auto* p = static_cast<std::byte*>(ctx.allocate(n * kPageSize));
  fill(p, n * kPageSize, 14);
  FaultInjection inject;
  inject.copy_fail_at_page = 100;
  uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), inject);
  const MigrationResult r = ctx.migrate_to_device(p, n * kPageSize);
  EXPECT_EQ(r.status.code, Errc::device_error);
  EXPECT_EQ(r.migrated + r.failed, n);
  EXPECT_GT(r.failed, 0u);
  EXPECT_GT(ctx.counters().copy_failures, 0u);
  const auto pages = ctx.residency(p, n * kPageSize);
  EXPECT_EQ(count(pages, Residency::Device), r.migrated);
  EXPECT_EQ(ctx.counters().device_pages_in_use, r.migrated);  // failed destinations went back to the pool
  // The injection was one-shot: the rest migrates now.
  EXPECT_EQ(ctx.migrate_to_device(p, n * kPageSize).migrated, r.failed);
  expect_pattern(p, n * kPageSize, 14);
}

TEST(Migrate, MigrateDeviceRangeEvictsEveryPage) {
  Context ctx(cpu_options(8 * MiB));
  auto* a = static_cast<std::byte*>(ctx.allocate(3 * MiB));
  auto* b = static_cast<std::byte*>(ctx.allocate(1 * MiB));
  fill(a, 3 * MiB, 15);
  fill(b, 1 * MiB, 16);
  ctx.migrate_to_device(a, 3 * MiB);
  ctx.migrate_to_device(b, 1 * MiB);
  ASSERT_EQ(ctx.counters().device_pages_in_use, 4 * MiB / kPageSize);
  const std::size_t moved = migrate_device_range(ctx, ctx.device_owner(0), 0, 8 * MiB / kPageSize);
  EXPECT_EQ(moved, 4 * MiB / kPageSize);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
  EXPECT_EQ(ctx.counters().device_evictions, moved);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  EXPECT_EQ(count(ctx.residency(a, 3 * MiB), Residency::System), 3 * MiB / kPageSize);
  const Counters before = ctx.counters();
  expect_pattern(a, 3 * MiB, 15);
  expect_pattern(b, 1 * MiB, 16);
  EXPECT_EQ(ctx.counters().faults_from_device, before.faults_from_device);  // nothing left to fault back
}

TEST(Migrate, MigrateToHostBringsEveryPageBackWithoutFaults) {
  Context ctx(cpu_options());
  auto* p = static_cast<std::byte*>(ctx.allocate(5 * MiB));
  fill(p, 5 * MiB, 17);
  ctx.migrate_to_device(p, 5 * MiB);
  const MigrationResult r = ctx.migrate_to_host(p, 5 * MiB);
  EXPECT_EQ(r.migrated, 5 * MiB / kPageSize);
  const Counters c = ctx.counters();
  expect_pattern(p, 5 * MiB, 17);
  EXPECT_EQ(ctx.counters().faults_from_device, c.faults_from_device);
  EXPECT_EQ(ctx.migrate_to_host(p, 5 * MiB).already, 5 * MiB / kPageSize);
}

TEST(Migrate, DriverApiPhasesReportPerPageWords) {
  Context ctx(cpu_options(64 * MiB, false));
  const std::size_t n = 8;
  auto* p = static_cast<std::byte*>(ctx.allocate(n * kPageSize));
  fill(p, 4 * kPageSize, 18);  // pages 0-3 on the host, 4-7 never touched
  std::vector<std::uint64_t> src(n), dst(n);
  MigrateVma args;
  args.start = p;
  args.end = p + n * kPageSize;
  args.src = src.data();
  args.dst = dst.data();
  args.flags = MIGRATE_VMA_SELECT_SYSTEM;  // without FAULT: never-touched pages stay
  migrate_vma_setup(ctx, args);
  EXPECT_EQ(args.cpages, 4u);
  for (std::size_t i = 0; i < n; ++i) {
    if (i < 4) {
      EXPECT_EQ(src[i] & (MIGRATE_PFN_MIGRATE | MIGRATE_PFN_VALID), MIGRATE_PFN_MIGRATE | MIGRATE_PFN_VALID);
      EXPECT_TRUE(ctx.residency(p + i * kPageSize, kPageSize)[0].locked);
    } else {
      EXPECT_EQ(src[i], 0u);
    }
  }
  // While this migration holds pages 0-3, another one skips them.
  MigrationResult r = ctx.migrate_to_device(p, n * kPageSize);
  EXPECT_EQ(r.skipped, 4u);
  EXPECT_EQ(r.migrated, 4u);  // 4-7 zero-filled
  // This driver gave no destination pages (dst all 0): nothing moves, all is restored.
  EXPECT_EQ(migrate_vma_pages(ctx, args), 0u);
  migrate_vma_finalize(ctx, args);
  const auto pages = ctx.residency(p, n * kPageSize);
  for (std::size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(pages[i].residency, Residency::System);
    EXPECT_FALSE(pages[i].locked);
  }
  expect_pattern(p, 4 * kPageSize, 18);
}

TEST(Migrate, TwoDevicesEachHoldTheirOwnPages) {
  Context ctx(cpu_options(16 * MiB, true, 2));
  ASSERT_EQ(ctx.device_count(), 2u);
  auto* p = static_cast<std::byte*>(ctx.allocate(2 * MiB));
  fill(p, 2 * MiB, 19);
  const OwnerId second = ctx.device_owner(1);
  EXPECT_EQ(ctx.migrate_to_device(p, 1 * MiB, second).migrated, 1 * MiB / kPageSize);
  EXPECT_EQ(ctx.migrate_to_device(p + 1 * MiB, 1 * MiB).migrated, 1 * MiB / kPageSize);
  const auto pages = ctx.residency(p, 2 * MiB);
  for (std::size_t i = 0; i < pages.size(); ++i)
    ASSERT_EQ(pages[i].device.owner, i < 256 ? second : ctx.device_owner(0)) << "page " << i;
  expect_pattern(p, 2 * MiB, 19);
}

}  // namespace
}  // namespace uhmm::test
