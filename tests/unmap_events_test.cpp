// The application's own madvise(MADV_DONTNEED), munmap and mremap of managed
// memory (userfaultfd UNMAP/REMOVE/REMAP events, host/fault/mapping_events.hpp):
// device pages of the part concerned go back to the pool, the mirror follows,
// calls on an unmapped part fail clearly, free still works, no other range is
// touched, and uhmm's own MADV_DONTNEED in migrate_vma_finalize is not taken
// for the application's.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <string_view>
#include <thread>
#include <vector>

#include "signal_test_support.hpp"
#include "test_support.hpp"
#include "uhmm/uhmm.hpp"
#include "uhmm/hooks.hpp"

namespace {

using namespace uhmm;
using namespace uhmm::test;

constexpr std::size_t kPages = 64;
constexpr std::size_t kBytes = kPages * kPageSize;

std::byte* page(void* base, std::size_t i) { return static_cast<std::byte*>(base) + i * kPageSize; }

class UnmapEventsTest : public ::testing::Test {
 protected:
  Context ctx{cpu_options()};

  // A second range with data half on the device: nothing done to the first may touch it.
  void* bystander = nullptr;
  void SetUp() override {
    bystander = ctx.allocate(kBytes);
    fill(bystander, kBytes, 99);
    ASSERT_EQ(ctx.migrate_to_device(bystander, kBytes / 2).migrated, kPages / 2);
  }
  // The application's madvise/munmap/mremap is followed through userfaultfd's
  // mapping events only.
  bool events_followed() const { return std::string_view(ctx.fault_mode()) != "signal"; }
  static constexpr const char* kNoEvents =
      "signal fault mode: the application's madvise/munmap/mremap of managed memory is not followed (no "
      "userfaultfd mapping events; docs/DESIGN.md, \"The signal fault mechanism\")";

  void expect_bystander_intact() {
    expect_pattern(bystander, kBytes, 99);  // faults the device half back
    EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  }
};

TEST_F(UnmapEventsTest, UhmmsOwnDontneedInFinalizeKeepsTheMigratedPages) {
  void* p = ctx.allocate(kBytes);
  fill(p, kBytes, 1);
  const std::size_t in_use = ctx.counters().device_pages_in_use;
  const MigrationResult r = ctx.migrate_to_device(p, kBytes);
  EXPECT_EQ(r.migrated, kPages);
  EXPECT_EQ(count(ctx.residency(p, kBytes), Residency::Device), kPages);
  EXPECT_EQ(ctx.counters().device_pages_in_use, in_use + kPages);
  EXPECT_EQ(ctx.counters().pages_discarded, 0u);
  expect_pattern(p, kBytes, 1);
  expect_bystander_intact();
}

TEST_F(UnmapEventsTest, DontneedDropsDevicePagesToThePoolAndTheyReadAsZeros) {
  if (!events_followed()) GTEST_SKIP() << kNoEvents;
  void* p = ctx.allocate(kBytes);
  fill(p, kBytes, 2);
  ASSERT_EQ(ctx.migrate_to_device(p, kBytes / 2).migrated, kPages / 2);
  const std::size_t in_use = ctx.counters().device_pages_in_use;

  ASSERT_EQ(::madvise(p, kBytes, MADV_DONTNEED), 0);

  // The device half is gone from the pool, as the kernel zaps device-private
  // entries; every page is Empty again, as the kernel leaves anonymous memory.
  EXPECT_EQ(ctx.counters().device_pages_in_use, in_use - kPages / 2);
  EXPECT_EQ(ctx.counters().pages_discarded, kPages / 2);
  const auto states = ctx.residency(p, kBytes);
  EXPECT_EQ(count(states, Residency::Device), 0u);
  EXPECT_EQ(count(states, Residency::Empty), kPages);
  for (std::size_t i = 0; i < kPages; ++i) {
    const auto* w = reinterpret_cast<const std::uint64_t*>(page(p, i));
    for (std::size_t k = 0; k < kPageSize / 8; ++k) ASSERT_EQ(w[k], 0u) << "page " << i << " word " << k;
  }
  // And it is ordinary managed memory again.
  fill(p, kBytes, 3);
  EXPECT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kPages);
  EXPECT_EQ(ctx.migrate_to_host(p, kBytes).migrated, kPages);
  expect_pattern(p, kBytes, 3);
  expect_bystander_intact();
}

TEST_F(UnmapEventsTest, HostPagesDiscardedThenMigratedArriveAsZeros) {
  if (!events_followed()) GTEST_SKIP() << kNoEvents;
  void* p = ctx.allocate(kBytes);
  fill(p, kBytes, 4);
  ASSERT_EQ(::madvise(p, kBytes, MADV_DONTNEED), 0);
  // Empty now: zero-filled on the device, nothing read from the host.
  EXPECT_EQ(count(ctx.residency(p, kBytes), Residency::Empty), kPages);
  EXPECT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kPages);
  EXPECT_EQ(ctx.counters().pages_zero_filled_on_device, kPages);
  for (std::size_t i = 0; i < kPages; ++i) ASSERT_EQ(*reinterpret_cast<std::uint64_t*>(page(p, i)), 0u) << i;
  expect_bystander_intact();
}

// MADV_FREE raises the same REMOVE event as MADV_DONTNEED, but the kernel
// keeps the page (until it reclaims a clean one), and stores after it land
// without a fault: allocators reuse freed memory so. They must survive the
// next migration.
TEST_F(UnmapEventsTest, StoresAfterMadvFreeSurviveAMigrationToTheDeviceAndBack) {
  if (!events_followed()) GTEST_SKIP() << kNoEvents;
  void* p = ctx.allocate(kBytes);
  fill(p, kBytes, 14);
  ASSERT_EQ(ctx.migrate_to_device(p, kBytes / 2).migrated, kPages / 2);  // half on the device, half on the host
  ASSERT_EQ(::madvise(p, kBytes, MADV_FREE), 0);
  fill(p, kBytes, 15);
  EXPECT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kPages);
  EXPECT_EQ(ctx.migrate_to_host(p, kBytes).migrated, kPages);
  expect_pattern(p, kBytes, 15);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  // Freed again, not written: each page reads its old data or zeros.
  ASSERT_EQ(::madvise(p, kBytes, MADV_FREE), 0);
  EXPECT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kPages);
  for (std::size_t i = 0; i < kPages; ++i) {
    const std::size_t bad = first_mismatch(page(p, i), kPageSize, 0);  // all zeros?
    if (bad == SIZE_MAX) continue;
    const auto* w = reinterpret_cast<const std::uint64_t*>(page(p, i));
    ASSERT_EQ(w[0], pattern(15, i * kPageSize / 8)) << "page " << i << " is neither zeros nor its data";
  }
  ctx.free(p);
  expect_bystander_intact();
}

TEST_F(UnmapEventsTest, DontneedOfHostAndDevicePagesThenAMigrationThereAndBackReadsZeros) {
  if (!events_followed()) GTEST_SKIP() << kNoEvents;
  void* p = ctx.allocate(kBytes);
  fill(p, kBytes, 16);
  ASSERT_EQ(ctx.migrate_to_device(p, kBytes / 2).migrated, kPages / 2);
  ASSERT_EQ(::madvise(p, kBytes, MADV_DONTNEED), 0);
  EXPECT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kPages);
  EXPECT_EQ(ctx.migrate_to_host(p, kBytes).migrated, kPages);
  std::vector<std::byte> zeros(kBytes);
  EXPECT_EQ(std::memcmp(p, zeros.data(), kBytes), 0);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  ctx.free(p);
  expect_bystander_intact();
}

// A read-mostly page keeps a write-protected host copy; MADV_FREE leaves it
// mapped so. A store to it must go through (it faulted for ever), and stay.
TEST_F(UnmapEventsTest, StoreToAReadMostlyPageAfterMadvFreeGoesThroughAndStays) {
  if (!events_followed()) GTEST_SKIP() << kNoEvents;
  Watchdog watchdog("StoreToAReadMostlyPageAfterMadvFreeGoesThroughAndStays", std::chrono::seconds(60));
  void* p = ctx.allocate(kBytes);
  fill(p, kBytes, 17);
  ctx.advise(p, kBytes, Advice::set_read_mostly);
  ASSERT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kPages);
  ASSERT_EQ(count(ctx.residency(p, kBytes), Residency::Duplicated), kPages);
  ASSERT_EQ(::madvise(p, kBytes, MADV_FREE), 0);
  fill(p, kBytes, 18);
  expect_pattern(p, kBytes, 18);
  EXPECT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kPages);
  EXPECT_EQ(ctx.migrate_to_host(p, kBytes).migrated, kPages);
  expect_pattern(p, kBytes, 18);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  ctx.free(p);
  expect_bystander_intact();
}

TEST_F(UnmapEventsTest, MunmapOfPartOfARangeFailsCallsThereAndKeepsTheRest) {
  if (!events_followed()) GTEST_SKIP() << kNoEvents;
  void* p = ctx.allocate(kBytes);
  fill(p, kBytes, 5);
  ASSERT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kPages);
  const std::size_t in_use = ctx.counters().device_pages_in_use;
  void* tail = page(p, kPages / 2);

  ASSERT_EQ(::munmap(tail, kBytes / 2), 0);

  EXPECT_EQ(ctx.counters().device_pages_in_use, in_use - kPages / 2);
  for (auto call : {+[](Context& c, void* q) { c.residency(q, kPageSize); },
                    +[](Context& c, void* q) { c.migrate_to_device(q, kPageSize); },
                    +[](Context& c, void* q) { c.migrate_to_host(q, kPageSize); },
                    +[](Context& c, void* q) { c.pin(q, kPageSize); }}) {
    try {
      call(ctx, tail);
      ADD_FAILURE() << "a call on the unmapped part did not throw";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::out_of_range) << e.what();
      EXPECT_NE(std::string(e.what()).find("unmapped by the application"), std::string::npos) << e.what();
    }
  }
  // A span crossing into the hole fails too; the live half works.
  EXPECT_THROW(ctx.migrate_to_host(p, kBytes), Error);
  EXPECT_EQ(ctx.range_size(p), kBytes);
  expect_pattern(p, kBytes / 2, 5);
  EXPECT_EQ(ctx.migrate_to_device(p, kBytes / 2).migrated, kPages / 2);
  expect_pattern(p, kBytes / 2, 5);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;

  ctx.free(p);
  EXPECT_EQ(ctx.counters().device_pages_in_use, kPages / 2);  // the bystander's only
  expect_bystander_intact();
}

TEST_F(UnmapEventsTest, MunmapOfAWholeRangeRetiresItAndItsAddressCanBeReused) {
  if (!events_followed()) GTEST_SKIP() << kNoEvents;
  void* p = ctx.allocate(kBytes);
  fill(p, kBytes, 6);
  ASSERT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kPages);

  ASSERT_EQ(::munmap(p, kBytes), 0);

  EXPECT_EQ(ctx.counters().ranges_retired, 1u);
  EXPECT_EQ(ctx.counters().device_pages_in_use, kPages / 2);
  try {
    ctx.free(p);
    ADD_FAILURE() << "free of a retired range did not throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::unknown_range);
    EXPECT_NE(std::string(e.what()).find("unmapped by the application"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ctx.residency(p, kPageSize), Error);

  // New ranges (the kernel may hand the same address out again) work fully.
  for (int k = 0; k < 4; ++k) {
    void* q = ctx.allocate(kBytes);
    fill(q, kBytes, 7 + k);
    EXPECT_EQ(ctx.migrate_to_device(q, kBytes).migrated, kPages);
    expect_pattern(q, kBytes, 7 + k);
    ctx.free(q);
  }
  expect_bystander_intact();
}

TEST_F(UnmapEventsTest, MremapMovesEveryPageIncludingDeviceOnesToOrdinaryMemory) {
  if (!events_followed()) GTEST_SKIP() << kNoEvents;
  void* p = ctx.allocate(kBytes);
  fill(p, kBytes, 8);
  ASSERT_EQ(ctx.migrate_to_device(p, kBytes / 2).migrated, kPages / 2);
  // A place to move to: reserved, then replaced by the move.
  void* target = ::mmap(nullptr, kBytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(target, MAP_FAILED);

  void* moved = ::mremap(p, kBytes, kBytes, MREMAP_MAYMOVE | MREMAP_FIXED, target);
  ASSERT_EQ(moved, target) << std::strerror(errno);

  EXPECT_EQ(ctx.counters().ranges_retired, 1u);
  EXPECT_EQ(ctx.counters().device_pages_in_use, kPages / 2);  // the bystander's only
  EXPECT_EQ(ctx.counters().pages_lost, 0u);
  expect_pattern(moved, kBytes, 8);
  fill(moved, kBytes, 9);  // ordinary memory now: no faults served, no events
  expect_pattern(moved, kBytes, 9);
  EXPECT_THROW(ctx.free(p), Error);
  ASSERT_EQ(::munmap(moved, kBytes), 0);
  expect_bystander_intact();
}

// The UNMAP of the old place that follows a REMAP is applied while the copy
// runs: every device page of the moved part must be held from the start (the
// stress model found every 2 MiB block after the first read as zeros).
TEST_F(UnmapEventsTest, MremapOfPartOfARangeAcrossBlocksMovesEveryDevicePage) {
  if (!events_followed()) GTEST_SKIP() << kNoEvents;
  constexpr std::size_t kLarge = 4 * MiB;
  auto* p = static_cast<std::byte*>(ctx.allocate(kLarge));
  fill(p, kLarge, 19);
  ASSERT_EQ(ctx.migrate_to_device(p, kLarge).migrated, kLarge / kPageSize);
  const std::size_t first = 100 * kPageSize, bytes = 800 * kPageSize;  // pages [100, 900): two blocks
  void* target = ::mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(target, MAP_FAILED);
  void* moved = ::mremap(p + first, bytes, bytes, MREMAP_MAYMOVE | MREMAP_FIXED, target);
  ASSERT_EQ(moved, target) << std::strerror(errno);
  const auto* w = static_cast<const std::uint64_t*>(moved);
  for (std::size_t i = 0; i < bytes / 8; ++i)
    ASSERT_EQ(w[i], pattern(19, first / 8 + i)) << "page " << (first + i * 8) / kPageSize << " word " << i % 512;
  EXPECT_EQ(ctx.counters().pages_lost, 0u);
  ASSERT_EQ(::munmap(moved, bytes), 0);
  expect_pattern(p, first, 19);
  const auto* rest = reinterpret_cast<const std::uint64_t*>(p);
  for (std::size_t i = (first + bytes) / 8; i < kLarge / 8; ++i) ASSERT_EQ(rest[i], pattern(19, i)) << "word " << i;
  ctx.free(p);
  expect_bystander_intact();
}

TEST_F(UnmapEventsTest, ApplicationDontneedRacingMigrationsOfAnotherRangeLosesNothingThere) {
  if (!events_followed()) GTEST_SKIP() << kNoEvents;
  void* p = ctx.allocate(kBytes);
  fill(p, kBytes, 10);
  void* scratch = ctx.allocate(kBytes);
  std::atomic<bool> stop{false};
  std::thread zapper([&] {
    while (!stop.load()) {
      std::memset(scratch, 0x5a, kBytes);
      ctx.migrate_to_device(scratch, kBytes / 2);
      ::madvise(scratch, kBytes, MADV_DONTNEED);
    }
  });
  for (int round = 0; round < 30; ++round) {
    ASSERT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kPages);
    expect_pattern(p, kBytes, 10);  // faults it all back
  }
  stop.store(true);
  zapper.join();
  ctx.free(scratch);
  ctx.free(p);
  EXPECT_EQ(ctx.counters().device_pages_in_use, kPages / 2);
  expect_bystander_intact();
}

// The kernel zaps a page the application discards even while uhmm's migration
// copies it through the mapping: the copy engine then faults on a page its own
// migration holds. It gets zeros, the migration leaves the page on the host,
// and the page reads zeros, as it would in every other order of the two calls.
TEST_F(UnmapEventsTest, ApplicationDontneedOfPagesBeingCopiedToTheDeviceReadsZerosAndDoesNotHang) {
  if (!events_followed()) GTEST_SKIP() << kNoEvents;
  void* p = ctx.allocate(kBytes);
  fill(p, kBytes, 12);
  FaultInjection slow;
  slow.copy_delay_us = 300'000;  // every copy batch waits first: the discard lands during it
  uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), slow);
  MigrationResult r;
  std::thread migrator([&] { r = ctx.migrate_to_device(p, kBytes); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_EQ(::madvise(p, kBytes, MADV_DONTNEED), 0);
  migrator.join();
  uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), FaultInjection{});
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  std::vector<std::byte> zeros(kBytes);
  EXPECT_EQ(std::memcmp(p, zeros.data(), kBytes), 0);
  // Nothing of it is left on the device, and the range works on.
  EXPECT_EQ(ctx.counters().device_pages_in_use, kPages / 2);  // the bystander's
  fill(p, kBytes, 13);
  EXPECT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kPages);
  expect_pattern(p, kBytes, 13);
  ctx.free(p);
  expect_bystander_intact();
}

}  // namespace
