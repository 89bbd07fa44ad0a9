// Lifecycle of device memory: freeing a range with pages on a device,
// destroying a context with pages on devices, shrinking a pool. Each releases
// or evicts cleanly; nothing still reachable is lost.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "test_support.hpp"

namespace uhmm::test {
namespace {

TEST(Lifecycle, FreeingARangeWithDevicePagesReleasesThemForOtherRanges) {
  Context ctx(cpu_options(4 * MiB));
  auto* a = static_cast<std::byte*>(ctx.allocate(4 * MiB));
  fill(a, 4 * MiB, 60);
  ASSERT_EQ(ctx.migrate_to_device(a, 4 * MiB).migrated, 1024u);
  ctx.free(a);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
  EXPECT_EQ(ctx.counters().device_evictions, 0u) << "a freed range's pages are released, not copied back";
  // The whole pool is free again: another range gets every page without evicting.
  auto* b = static_cast<std::byte*>(ctx.allocate(4 * MiB));
  const MigrationResult r = ctx.migrate_to_device(b, 4 * MiB);
  EXPECT_EQ(r.migrated, 1024u);
  EXPECT_EQ(ctx.counters().device_eviction_chunks, 0u);
  // Released pages were zeroed before backing the new range (invariant 4).
  const auto* w = reinterpret_cast<const std::uint64_t*>(b);
  for (std::size_t i = 0; i < 4 * MiB / 8; ++i) ASSERT_EQ(w[i], 0u) << i;
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
}

TEST(Lifecycle, DestroyingAContextWithPagesOnTwoDevicesReleasesEverything) {
  // Twice: the second context gets pools as empty as the first (nothing was
  // left registered or mapped by the first one).
  for (int i = 0; i < 2; ++i) {
    Context ctx(cpu_options(8 * MiB, true, 2));
    auto* a = static_cast<std::byte*>(ctx.allocate(6 * MiB));
    fill(a, 6 * MiB, 61);
    ctx.migrate_to_device(a, 4 * MiB, ctx.device_owner(0));
    ctx.migrate_to_device(a + 4 * MiB, 2 * MiB, ctx.device_owner(1));
    ctx.allocate(2 * MiB);  // never touched, never freed: the destructor frees it
    ASSERT_EQ(ctx.counters().device_pages_in_use, 6 * MiB / kPageSize);
    ASSERT_TRUE(ctx.validate()) << ctx.validate().message;
  }
}

TEST(Lifecycle, ShrinkingAPoolBringsPagesBackWithTheirData) {
  Context ctx(cpu_options(16 * MiB));
  const OwnerId dev = ctx.device_owner(0);
  auto* old_range = static_cast<std::byte*>(ctx.allocate(6 * MiB));
  auto* recent = static_cast<std::byte*>(ctx.allocate(6 * MiB));
  fill(old_range, 6 * MiB, 62);
  fill(recent, 6 * MiB, 63);
  ctx.migrate_to_device(old_range, 6 * MiB);
  ctx.migrate_to_device(recent, 6 * MiB);
  ASSERT_EQ(ctx.counters().device_pages_in_use, 3072u);

  const std::size_t evicted = ctx.set_device_pool_limit(dev, 6 * MiB);
  EXPECT_EQ(evicted, 1536u);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 1536u);
  EXPECT_EQ(count(ctx.residency(old_range, 6 * MiB), Residency::Device), 0u) << "the least recently used went";
  EXPECT_EQ(count(ctx.residency(recent, 6 * MiB), Residency::Device), 1536u);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  expect_pattern(old_range, 6 * MiB, 62);

  // The limit holds: a migration now evicts within it instead of growing.
  auto* more = static_cast<std::byte*>(ctx.allocate(2 * MiB));
  EXPECT_EQ(ctx.migrate_to_device(more, 2 * MiB).migrated, 512u);
  EXPECT_LE(ctx.counters().device_pages_in_use, 1536u);

  // To zero: every page comes back; then back to the full size.
  ctx.set_device_pool_limit(dev, 0);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
  expect_pattern(recent, 6 * MiB, 63);
  const MigrationResult none = ctx.migrate_to_device(recent, kPageSize);
  EXPECT_EQ(none.failed, 1u);
  EXPECT_EQ(none.status.code, Errc::out_of_memory);
  ctx.set_device_pool_limit(dev, 16 * MiB);
  EXPECT_EQ(ctx.migrate_to_device(recent, 6 * MiB).migrated, 1536u);
  expect_pattern(recent, 6 * MiB, 63);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
}

TEST(Lifecycle, ShrinkingWithBadArgumentsChangesNothing) {
  Context ctx(cpu_options(4 * MiB));
  auto* a = static_cast<std::byte*>(ctx.allocate(2 * MiB));
  ctx.migrate_to_device(a, 2 * MiB);
  for (auto [owner, bytes] : {std::pair<OwnerId, std::size_t>{1, 8 * MiB}, {7, 0}}) {
    try {
      ctx.set_device_pool_limit(owner, bytes);
      ADD_FAILURE() << "owner " << int{owner} << ", " << bytes << " bytes was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::invalid_argument) << e.what();
    }
  }
  EXPECT_EQ(ctx.counters().device_pages_in_use, 512u);
  EXPECT_EQ(ctx.counters().device_evictions, 0u);
}

TEST(Lifecycle, ShrinkWaitsForAKernelHoldingItsPages) {
  Context ctx(cpu_options(4 * MiB));
  auto* p = static_cast<std::uint64_t*>(ctx.allocate(2 * MiB));
  const std::size_t n = 2 * MiB / 8;
  std::atomic<bool> running{false}, release{false};
  std::thread kernel([&] {
    ctx.launch(n,
               [&](std::size_t i, device_span<std::uint64_t> x) {
                 if (i == 0) {
                   running.store(true);
                   while (!release.load()) std::this_thread::yield();
                 }
                 x[i] = i + 1;
               },
               std::span<std::uint64_t>(p, n));
  });
  while (!running.load()) std::this_thread::yield();
  std::thread shrink([&] { ctx.set_device_pool_limit(ctx.device_owner(0), 0); });
  release.store(true);  // whether the shrink waited or not, the kernel's writes must survive it
  kernel.join();
  shrink.join();
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(p[i], i + 1) << i;
}

}  // namespace
}  // namespace uhmm::test
