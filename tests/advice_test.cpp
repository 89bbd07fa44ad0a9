// Advice and explicit control per range (Context::advise, advice, prefetch,
// discard): what each advice changes in fault-ahead and eviction, prefetch
// both ways and between devices, discard of host and device pages (also
// while threads fault on them), advice changing under faulting threads, and
// bad input that changes nothing. Runs in both fault modes (UHMM_FAULT_MODE).
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "test_support.hpp"
#include "uhmm/uhmm.hpp"

namespace {

using namespace uhmm;
using namespace uhmm::test;

constexpr OwnerId kDev1 = 1;
constexpr OwnerId kDev2 = 2;

std::byte* page(void* base, std::size_t p) { return static_cast<std::byte*>(base) + p * kPageSize; }

Residency residency_of(Context& ctx, void* base, std::size_t p) {
  return ctx.residency(page(base, p), kPageSize)[0].residency;
}

std::size_t pages_in(Context& ctx, void* base, std::size_t bytes, Residency r) {
  return count(ctx.residency(base, bytes), r);
}

std::uint64_t read_word(void* base, std::size_t p) {
  return *reinterpret_cast<volatile std::uint64_t*>(page(base, p));
}

bool all_zero(const void* p, std::size_t bytes) {
  const auto* w = static_cast<const std::uint64_t*>(p);
  for (std::size_t i = 0; i < bytes / 8; ++i)
    if (w[i] != 0) return false;
  return true;
}

TEST(AdviceTest, AdviceIsRecordedPerPageAndQueried) {
  Context ctx(cpu_options(16 * MiB, true, /*devices=*/2));
  void* r = ctx.allocate(4 * MiB);
  EXPECT_EQ(ctx.advice(r), RangeAdvice{});
  ctx.advise(page(r, 10), 10 * kPageSize, Advice::set_preferred_location, Location::device(kDev2));
  ctx.advise(page(r, 15), 15 * kPageSize, Advice::set_read_mostly);
  ctx.advise(page(r, 0), 4 * MiB, Advice::set_accessed_by, Location::device(kDev1));
  ctx.advise(page(r, 18), kPageSize, Advice::set_accessed_by, Location::device(kDev2));
  for (std::size_t p : {0, 9, 10, 14, 15, 17, 18, 19, 20, 29, 30, 1023}) {
    const RangeAdvice a = ctx.advice(page(r, p) + 123);  // any address inside the page
    EXPECT_EQ(a.preferred, p >= 10 && p < 20 ? Location::device(kDev2) : Location{}) << p;
    EXPECT_EQ(a.read_mostly, p >= 15 && p < 30) << p;
    EXPECT_TRUE(a.accessed_by_device(kDev1)) << p;
    EXPECT_EQ(a.accessed_by_device(kDev2), p == 18) << p;
  }
  ctx.advise(page(r, 12), 2 * kPageSize, Advice::set_preferred_location, Location::host());
  EXPECT_TRUE(ctx.advice(page(r, 13)).preferred.is_host());
  EXPECT_EQ(ctx.advice(page(r, 14)).preferred, Location::device(kDev2));
  ctx.advise(r, 4 * MiB, Advice::unset_preferred_location);
  ctx.advise(r, 4 * MiB, Advice::unset_read_mostly);
  ctx.advise(r, 4 * MiB, Advice::unset_accessed_by, Location::device(kDev1));
  ctx.advise(r, 4 * MiB, Advice::unset_accessed_by, Location::device(kDev2));
  for (std::size_t p : {0, 13, 18, 29}) EXPECT_EQ(ctx.advice(page(r, p)), RangeAdvice{}) << p;
  EXPECT_EQ(ctx.counters().advice_calls, 9u);
  ctx.free(r);
}

TEST(AdviceTest, BadInputIsRefusedAndChangesNothing) {
  Context ctx(cpu_options(16 * MiB, true, /*devices=*/2));
  void* r = ctx.allocate(2 * MiB);
  ctx.advise(r, 2 * MiB, Advice::set_preferred_location, Location::device(kDev1));
  const RangeAdvice before = ctx.advice(r);
  auto code = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return e.code();
    }
    return Errc::ok;
  };
  EXPECT_EQ(code([&] { ctx.advise(page(r, 0) + 1, kPageSize, Advice::set_read_mostly); }), Errc::not_aligned);
  EXPECT_EQ(code([&] { ctx.advise(r, 100, Advice::set_read_mostly); }), Errc::not_aligned);
  EXPECT_EQ(code([&] { ctx.advise(r, 0, Advice::set_read_mostly); }), Errc::zero_length);
  EXPECT_EQ(code([&] { ctx.advise(r, 4 * MiB, Advice::set_read_mostly); }), Errc::out_of_range);
  int local = 0;
  EXPECT_EQ(code([&] { ctx.advise(&local, kPageSize, Advice::set_read_mostly); }), Errc::not_aligned);
  EXPECT_EQ(code([&] { ctx.advise(nullptr, kPageSize, Advice::set_read_mostly); }), Errc::invalid_argument);
  EXPECT_EQ(code([&] { ctx.advise(r, kPageSize, Advice::set_preferred_location, Location::device(3)); }),
            Errc::invalid_argument);
  EXPECT_EQ(code([&] { ctx.advise(r, kPageSize, Advice::set_preferred_location, Location::device(kNoOwner)); }),
            Errc::invalid_argument);
  EXPECT_EQ(code([&] { ctx.advise(r, kPageSize, Advice::set_preferred_location, Location{}); }),
            Errc::invalid_argument);
  EXPECT_EQ(code([&] { ctx.advise(r, kPageSize, Advice::set_accessed_by, Location::host()); }),
            Errc::invalid_argument);
  EXPECT_EQ(code([&] { ctx.advise(r, kPageSize, Advice::unset_accessed_by, Location{}); }), Errc::invalid_argument);
  EXPECT_EQ(code([&] { ctx.advise(r, kPageSize, static_cast<Advice>(42), Location::host()); }),
            Errc::invalid_argument);
  EXPECT_EQ(code([&] { (void)ctx.advice(&local); }), Errc::out_of_range);
  EXPECT_EQ(code([&] { ctx.prefetch(r, kPageSize, Location{}); }), Errc::invalid_argument);
  EXPECT_EQ(code([&] { ctx.prefetch(r, kPageSize, Location::device(3)); }), Errc::invalid_argument);
  EXPECT_EQ(code([&] { ctx.prefetch(page(r, 0) + 8, kPageSize, Location::host()); }), Errc::not_aligned);
  Stream s = ctx.create_stream();
  EXPECT_EQ(code([&] { (void)ctx.prefetch_async(s, r, kPageSize, Location::device(9)); }), Errc::invalid_argument);
  EXPECT_EQ(code([&] { (void)ctx.prefetch_async(s, r, 3 * MiB, Location::host()); }), Errc::out_of_range);
  EXPECT_EQ(code([&] { ctx.discard(r, 3 * MiB); }), Errc::out_of_range);
  EXPECT_EQ(code([&] { ctx.discard(page(r, 0) + 1, kPageSize); }), Errc::not_aligned);
  EXPECT_EQ(ctx.advice(r), before);
  EXPECT_EQ(ctx.counters().advice_calls, 1u);
  EXPECT_EQ(ctx.counters().pages_to_device, 0u);
  ctx.free(r);
  EXPECT_EQ(code([&] { ctx.advise(r, kPageSize, Advice::set_read_mostly); }), Errc::out_of_range);
}

// Fault-ahead on a device block: what a CPU fault brings back with it.
class FaultAheadAdviceTest : public ::testing::Test {
 protected:
  Context ctx{cpu_options(16 * MiB, /*fault_ahead=*/true, /*devices=*/2)};
  void* block = nullptr;
  void SetUp() override {
    block = ctx.allocate(kBlockSize);
    fill(block, kBlockSize, 7);
  }
  void TearDown() override { ctx.free(block); }
};

TEST_F(FaultAheadAdviceTest, ACpuFaultLeavesDevicePreferringNeighboursOnTheDevice) {
  ctx.advise(block, 256 * kPageSize, Advice::set_preferred_location, Location::device(kDev1));
  ctx.advise(page(block, 256), 64 * kPageSize, Advice::set_preferred_location, Location::host());
  ASSERT_EQ(ctx.migrate_to_device(block, kBlockSize, kDev1).failed, 0u);
  EXPECT_EQ(read_word(block, 300), pattern(7, 300 * kPageSize / 8));
  EXPECT_EQ(pages_in(ctx, block, kBlockSize, Residency::Device), 256u);
  for (std::size_t p = 0; p < 256; ++p) ASSERT_EQ(residency_of(ctx, block, p), Residency::Device) << p;
  EXPECT_EQ(ctx.counters().advice_not_prefetched, 256u);
  // A faulting page itself always comes back, alone.
  EXPECT_EQ(read_word(block, 5), pattern(7, 5 * kPageSize / 8));
  EXPECT_EQ(residency_of(ctx, block, 5), Residency::System);
  EXPECT_EQ(pages_in(ctx, block, kBlockSize, Residency::Device), 255u);
  expect_pattern(block, kBlockSize, 7);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
}

TEST_F(FaultAheadAdviceTest, PreferringAnotherDeviceDoesNotKeepAPage) {
  ctx.advise(block, kBlockSize, Advice::set_preferred_location, Location::device(kDev2));
  ASSERT_EQ(ctx.migrate_to_device(block, kBlockSize, kDev1).failed, 0u);
  EXPECT_EQ(read_word(block, 0), pattern(7, 0));
  EXPECT_EQ(pages_in(ctx, block, kBlockSize, Residency::Device), 0u);
  EXPECT_EQ(ctx.counters().advice_not_prefetched, 0u);
}

TEST_F(FaultAheadAdviceTest, AccessedByKeepsThatDevicesPagesThere) {
  ctx.advise(block, kBlockSize / 2, Advice::set_accessed_by, Location::device(kDev2));
  ctx.advise(block, kBlockSize, Advice::set_accessed_by, Location::device(kDev1));
  ASSERT_EQ(ctx.migrate_to_device(block, kBlockSize / 2, kDev2).failed, 0u);
  ASSERT_EQ(ctx.migrate_to_device(page(block, 256), kBlockSize / 2, kDev1).failed, 0u);
  ctx.advise(block, kBlockSize, Advice::unset_accessed_by, Location::device(kDev1));
  EXPECT_EQ(read_word(block, 511), pattern(7, 511 * kPageSize / 8));
  // Device 2's pages stay (it accesses them); device 1's come back (no longer advised).
  EXPECT_EQ(pages_in(ctx, block, kBlockSize, Residency::Device), 256u);
  for (std::size_t p = 0; p < 256; ++p) ASSERT_EQ(ctx.residency(page(block, p), kPageSize)[0].device.owner, kDev2);
  expect_pattern(block, kBlockSize, 7);
  EXPECT_EQ(pages_in(ctx, block, kBlockSize, Residency::Device), 0u);
}

// Pool of 4 chunks, ranges of one chunk each: which one eviction takes.
TEST(AdviceTest, EvictionTakesHostPreferringChunksFirstAndDevicePreferringLast) {
  Context ctx(cpu_options(8 * MiB));
  std::vector<void*> r;
  for (int i = 0; i < 6; ++i) {
    r.push_back(ctx.allocate(kBlockSize));
    fill(r.back(), kBlockSize, 100 + i);
  }
  ctx.advise(r[0], kBlockSize, Advice::set_preferred_location, Location::device(kDev1));
  for (int i = 0; i < 4; ++i) ASSERT_EQ(ctx.prefetch(r[i], kBlockSize, Location::device(kDev1)).failed, 0u);
  // r[0] is the least recently used, but prefers the device: r[1] goes.
  ASSERT_EQ(ctx.prefetch(r[4], kBlockSize, Location::device(kDev1)).failed, 0u);
  EXPECT_EQ(pages_in(ctx, r[0], kBlockSize, Residency::Device), kPagesPerBlock);
  EXPECT_EQ(pages_in(ctx, r[1], kBlockSize, Residency::System), kPagesPerBlock);
  // r[4] is the most recently used, but prefers the host: it goes before r[2].
  ctx.advise(r[4], kBlockSize, Advice::set_preferred_location, Location::host());
  ASSERT_EQ(ctx.prefetch(r[5], kBlockSize, Location::device(kDev1)).failed, 0u);
  EXPECT_EQ(pages_in(ctx, r[4], kBlockSize, Residency::System), kPagesPerBlock);
  EXPECT_EQ(pages_in(ctx, r[2], kBlockSize, Residency::Device), kPagesPerBlock);
  EXPECT_GE(ctx.counters().advice_ranked_evictions, 2u);
  for (int i = 0; i < 6; ++i) expect_pattern(r[i], kBlockSize, 100 + i);
  for (void* p : r) ctx.free(p);
}

TEST(AdviceTest, PrefetchMovesPagesBothWaysAndBetweenDevices) {
  Context ctx(cpu_options(16 * MiB, true, /*devices=*/2));
  void* r = ctx.allocate(3 * MiB);
  fill(r, 3 * MiB, 11);
  const std::size_t n = 3 * MiB / kPageSize;
  EXPECT_EQ(ctx.prefetch(r, 3 * MiB, Location::device(kDev1)).migrated, n);
  for (const auto& s : ctx.residency(r, 3 * MiB)) ASSERT_EQ(s.device.owner, kDev1);
  EXPECT_EQ(ctx.prefetch(r, 3 * MiB, Location::device(kDev2)).migrated, n);
  for (const auto& s : ctx.residency(r, 3 * MiB)) {
    ASSERT_EQ(s.residency, Residency::Device);
    ASSERT_EQ(s.device.owner, kDev2);
  }
  EXPECT_EQ(ctx.prefetch(r, 3 * MiB, Location::device(kDev2)).already, n);
  EXPECT_EQ(ctx.prefetch(r, 3 * MiB, Location::host()).migrated, n);
  EXPECT_EQ(pages_in(ctx, r, 3 * MiB, Residency::System), n);
  expect_pattern(r, 3 * MiB, 11);

  Stream s = ctx.create_stream(kDev1);
  auto to2 = ctx.prefetch_async(s, r, 3 * MiB, Location::device(kDev2));  // not the stream's device
  auto back = ctx.prefetch_async(s, page(r, 10), kPageSize, Location::host());
  EXPECT_EQ(to2.get().migrated, n);
  EXPECT_EQ(back.get().migrated, 1u);
  EXPECT_EQ(residency_of(ctx, r, 10), Residency::System);
  EXPECT_EQ(ctx.residency(page(r, 11), kPageSize)[0].device.owner, kDev2);
  expect_pattern(r, 3 * MiB, 11);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  ctx.free(r);
}

TEST(AdviceTest, DiscardDropsHostAndDevicePagesWhichThenReadZero) {
  Context ctx(cpu_options(16 * MiB, true, /*devices=*/2));
  void* r = ctx.allocate(4 * MiB);
  fill(r, 4 * MiB, 21);
  ASSERT_EQ(ctx.prefetch(r, MiB, Location::device(kDev1)).failed, 0u);
  ASSERT_EQ(ctx.prefetch(page(r, 256), MiB, Location::device(kDev2)).failed, 0u);
  const Counters before = ctx.counters();
  // Discard [0.5 MiB, 3 MiB): device pages of both devices and host pages.
  EXPECT_EQ(ctx.discard(page(r, 128), 640 * kPageSize), 640u);
  const Counters after = ctx.counters();
  EXPECT_EQ(after.pages_discarded_by_call - before.pages_discarded_by_call, 640u);
  EXPECT_EQ(after.pages_to_host, before.pages_to_host) << "a discard copies nothing back";
  EXPECT_EQ(after.device_pages_in_use, 128u);  // device 1's pages 0..127
  EXPECT_EQ(pages_in(ctx, page(r, 128), 640 * kPageSize, Residency::Empty), 640u);
  EXPECT_TRUE(all_zero(page(r, 128), 640 * kPageSize));
  // Neighbours keep their data, wherever they are.
  expect_pattern(r, 128 * kPageSize, 21);
  for (std::size_t p = 768; p < 1024; ++p)
    ASSERT_EQ(read_word(r, p), pattern(21, p * kPageSize / 8)) << p;
  // Discarded pages are ordinary again: written, migrated, read back.
  fill(page(r, 128), 640 * kPageSize, 22);
  ASSERT_EQ(ctx.prefetch(page(r, 128), 640 * kPageSize, Location::device(kDev2)).failed, 0u);
  expect_pattern(page(r, 128), 640 * kPageSize, 22);
  EXPECT_EQ(ctx.discard(r, 4 * MiB), 1024u);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
  EXPECT_EQ(ctx.discard(r, 4 * MiB), 0u) << "nothing left to discard";
  EXPECT_TRUE(all_zero(r, 4 * MiB));
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  ctx.free(r);
}

TEST(AdviceTest, DiscardOfPinnedPagesKeepsThemPinned) {
  Context ctx(cpu_options());
  void* r = ctx.allocate(kBlockSize);
  fill(r, kBlockSize, 5);
  ctx.pin(r, kBlockSize);
  EXPECT_EQ(ctx.discard(r, kBlockSize), kPagesPerBlock);
  EXPECT_TRUE(all_zero(r, kBlockSize));
  EXPECT_TRUE(ctx.residency(r, kPageSize)[0].pinned);
  EXPECT_EQ(ctx.migrate_to_device(r, kBlockSize).skipped, kPagesPerBlock);
  ctx.free(r);
}

// Threads fault device pages back while another discards them: each read sees
// the old value or zero, never anything else; afterwards every page is zero.
TEST(AdviceTest, DiscardDuringConcurrentFaultsLeavesOnlyZeros) {
  Context ctx(cpu_options(64 * MiB, /*fault_ahead=*/false));
  constexpr std::size_t kBytes = 8 * MiB;
  constexpr std::size_t kPages = kBytes / kPageSize;
  void* r = ctx.allocate(kBytes);
  for (int round = 0; round < 5; ++round) {
    for (std::size_t p = 0; p < kPages; ++p) *reinterpret_cast<std::uint64_t*>(page(r, p)) = p + 1;
    ASSERT_EQ(ctx.migrate_to_device(r, kBytes).failed, 0u);
    std::atomic<bool> bad{false};
    std::atomic<int> started{0};
    std::vector<std::thread> readers;
    for (int t = 0; t < 3; ++t)
      readers.emplace_back([&, t] {
        ++started;
        for (std::size_t p = static_cast<std::size_t>(t); p < kPages; p += 3) {
          const std::uint64_t v = read_word(r, p);
          if (v != 0 && v != p + 1) bad = true;
        }
      });
    while (started.load() < 3) std::this_thread::yield();
    ctx.discard(r, kBytes);
    for (auto& t : readers) t.join();
    EXPECT_FALSE(bad.load()) << "round " << round;
    EXPECT_TRUE(all_zero(r, kBytes)) << "round " << round;
    EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
    ASSERT_TRUE(ctx.validate()) << ctx.validate().message;
  }
  ctx.free(r);
}

// A discard waits for a migration holding its pages, then drops what it
// moved: the pages end Empty (zeros) and no device page is left behind.
TEST(AdviceTest, DiscardDuringConcurrentMigrationsLeavesNothingBehind) {
  Context ctx(cpu_options(64 * MiB));
  constexpr std::size_t kBytes = 8 * MiB;
  void* r = ctx.allocate(kBytes);
  for (int round = 0; round < 5; ++round) {
    fill(r, kBytes, 40 + round);
    std::thread mover([&] {
      for (int k = 0; k < 4; ++k) {
        ctx.migrate_to_device(r, kBytes);
        ctx.migrate_to_host(r, kBytes);
      }
    });
    ctx.discard(r, kBytes);
    mover.join();
    // What the mover did after the discard moved zeros around; a final discard
    // settles it, and the pages hold zeros wherever they are.
    ctx.discard(r, kBytes);
    EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
    EXPECT_TRUE(all_zero(r, kBytes)) << "round " << round;
    ASSERT_TRUE(ctx.validate()) << ctx.validate().message;
  }
  ctx.free(r);
}

// A discard drops each page of its span at most once. It takes a block's free
// pages, then waits for a page a kernel holds; meanwhile another thread
// writes a page it already dropped. That page now holds data written after
// the discard began, and the discard leaves it: its count is at most the span's
// pages (it was 2 more than that when later passes took repopulated pages).
TEST(AdviceTest, DiscardDropsEachPageAtMostOnceWhileOthersRepopulateIt) {
  Context ctx(cpu_options());
  constexpr std::size_t kPages = 8;
  void* r = ctx.allocate(kPages * kPageSize);
  fill(r, kPages * kPageSize, 3);
  std::atomic<bool> kernel_holds{false}, release_kernel{false};
  std::thread kernel([&] {
    ctx.launch_device(
        [&](const LaunchStream&, device_span<std::uint64_t>) {
          kernel_holds = true;
          while (!release_kernel) std::this_thread::yield();
        },
        std::span<std::uint64_t>(reinterpret_cast<std::uint64_t*>(r), kPageSize / 8));
  });
  while (!kernel_holds) std::this_thread::yield();
  std::size_t dropped = 0;
  std::thread discarder([&] { dropped = ctx.discard(r, kPages * kPageSize); });
  // The discard's first pass has dropped pages 1..7 once page 1 reads Empty.
  while (residency_of(ctx, r, 1) != Residency::Empty) std::this_thread::yield();
  *reinterpret_cast<volatile std::uint64_t*>(page(r, 1)) = 77;
  *reinterpret_cast<volatile std::uint64_t*>(page(r, 2)) = 78;
  release_kernel = true;
  kernel.join();
  discarder.join();
  EXPECT_EQ(dropped, kPages) << "pages 0..7, each once";
  EXPECT_EQ(read_word(r, 1), 77u) << "a store after the page was dropped is kept";
  EXPECT_EQ(read_word(r, 2), 78u);
  EXPECT_EQ(read_word(r, 0), 0u);
  EXPECT_TRUE(all_zero(page(r, 3), 5 * kPageSize));
  ctx.free(r);
}

// Advice changes under threads that fault pages back and migrations that
// move them: the data stays right and the mirror stays consistent.
TEST(AdviceTest, AdviceChangesWhileThreadsFaultAndMigrate) {
  Context ctx(cpu_options(64 * MiB, true, /*devices=*/2));
  constexpr std::size_t kBytes = 8 * MiB;
  constexpr std::size_t kPages = kBytes / kPageSize;
  void* r = ctx.allocate(kBytes);
  fill(r, kBytes, 9);
  std::atomic<bool> stop{false};
  std::atomic<bool> bad{false};
  std::thread advisor([&] {
    std::uint64_t x = 1;
    while (!stop.load()) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      const std::size_t first = (x >> 20) % kPages;
      const std::size_t n = 1 + (x >> 40) % (kPages - first);
      const auto kind = static_cast<Advice>((x >> 8) % 6);
      const Location where = (x >> 4) % 3 == 0 ? Location::host() : Location::device((x >> 12) % 2 ? kDev1 : kDev2);
      try {
        ctx.advise(page(r, first), n * kPageSize, kind, where);
      } catch (const Error&) {
        if (!where.is_host()) bad = true;  // only host as accessed-by is refused here
      }
    }
  });
  std::thread mover([&] {
    for (int k = 0; k < 20; ++k) {
      ctx.prefetch(r, kBytes, Location::device(k % 2 ? kDev1 : kDev2));
      ctx.prefetch(page(r, 512), 4 * MiB, Location::host());
    }
  });
  for (std::size_t pass = 0; pass < 20; ++pass)
    for (std::size_t p = (pass * 37) % 64; p < kPages; p += 64)
      if (read_word(r, p) != pattern(9, p * kPageSize / 8)) bad = true;
  mover.join();
  stop = true;
  advisor.join();
  EXPECT_FALSE(bad.load());
  expect_pattern(r, kBytes, 9);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  ctx.free(r);
}


// Read-mostly: a copy on each side, reads on either side move nothing, a
// write collapses the page to the writer's side.
class ReadMostlyTest : public ::testing::Test {
 protected:
  Context ctx{cpu_options(16 * MiB, /*fault_ahead=*/true)};
  std::uint64_t* data = nullptr;
  static constexpr std::size_t kWords = kBlockSize / 8;
  void SetUp() override {
    data = static_cast<std::uint64_t*>(ctx.allocate(kBlockSize));
    fill(data, kBlockSize, 3);
    ctx.advise(data, kBlockSize, Advice::set_read_mostly);
    ASSERT_EQ(ctx.prefetch(data, kBlockSize, Location::device(kDev1)).migrated, kPagesPerBlock);
  }
  void TearDown() override { ctx.free(data); }
  std::size_t duplicated() { return pages_in(ctx, data, kBlockSize, Residency::Duplicated); }
};

TEST_F(ReadMostlyTest, APrefetchMakesAReadOnlyCopyOnEachSide) {
  EXPECT_EQ(duplicated(), kPagesPerBlock);
  EXPECT_EQ(ctx.counters().pages_duplicated, kPagesPerBlock);
  EXPECT_EQ(ctx.counters().device_pages_in_use, kPagesPerBlock);
  for (const auto& st : ctx.residency(data, kBlockSize)) {
    EXPECT_FALSE(st.writable);
    EXPECT_EQ(st.device.owner, kDev1);
  }
  const Counters before = ctx.counters();
  expect_pattern(data, kBlockSize, 3);  // CPU reads: no fault, no migration
  EXPECT_EQ(counter_diff(before, ctx.counters()), "");
  // Asking again: the pages are there already, on both sides.
  EXPECT_EQ(ctx.prefetch(data, kBlockSize, Location::device(kDev1)).already, kPagesPerBlock);
  EXPECT_EQ(ctx.prefetch(data, kBlockSize, Location::host()).already, kPagesPerBlock);
  EXPECT_EQ(duplicated(), kPagesPerBlock);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
}

TEST_F(ReadMostlyTest, ACpuWriteCollapsesThePageToItsHostCopy) {
  data[3 * kPageSize / 8] = 77;  // page 3
  EXPECT_EQ(residency_of(ctx, data, 3), Residency::System);
  EXPECT_TRUE(ctx.residency(page(data, 3), kPageSize)[0].writable);
  EXPECT_EQ(duplicated(), kPagesPerBlock - 1);
  EXPECT_EQ(ctx.counters().duplicates_collapsed, 1u);
  EXPECT_EQ(ctx.counters().device_pages_in_use, kPagesPerBlock - 1);
  EXPECT_EQ(ctx.counters().faults_from_device, 0u);
  data[3 * kPageSize / 8] = pattern(3, 3 * kPageSize / 8);
  expect_pattern(data, kBlockSize, 3);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
}

TEST_F(ReadMostlyTest, AKernelReadingKeepsBothCopiesAndAKernelWritingCollapsesToTheDevice) {
  std::atomic<std::size_t> wrong{0};
  ctx.launch(
      kWords,
      [&](std::size_t i, device_span<const std::uint64_t> x) {
        if (x[i] != pattern(3, i)) ++wrong;
      },
      std::span<const std::uint64_t>(data, kWords));
  EXPECT_EQ(wrong.load(), 0u);
  EXPECT_EQ(duplicated(), kPagesPerBlock);
  ctx.launch(kWords / 2, [](std::size_t i, device_span<std::uint64_t> x) { x[i] += 1; },
             std::span<std::uint64_t>(data, kWords / 2));
  EXPECT_EQ(duplicated(), kPagesPerBlock / 2);
  EXPECT_EQ(pages_in(ctx, data, kBlockSize / 2, Residency::Device), kPagesPerBlock / 2);
  EXPECT_EQ(ctx.counters().duplicates_collapsed, kPagesPerBlock / 2);
  for (std::size_t i = 0; i < kWords; ++i)
    ASSERT_EQ(data[i], pattern(3, i) + (i < kWords / 2 ? 1 : 0)) << i;
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
}

TEST_F(ReadMostlyTest, EvictionAndUnsetKeepTheHostCopyWithoutACopy) {
  const std::uint64_t to_host = ctx.counters().pages_to_host;
  EXPECT_EQ(ctx.set_device_pool_limit(kDev1, 0), kPagesPerBlock);  // evicts the block's chunk
  EXPECT_EQ(duplicated(), 0u);
  EXPECT_EQ(pages_in(ctx, data, kBlockSize, Residency::System), kPagesPerBlock);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
  ctx.set_device_pool_limit(kDev1, 16 * MiB);
  ASSERT_EQ(ctx.prefetch(data, kBlockSize, Location::device(kDev1)).migrated, kPagesPerBlock);
  EXPECT_EQ(duplicated(), kPagesPerBlock);
  ctx.advise(data, kBlockSize, Advice::unset_read_mostly);
  EXPECT_EQ(duplicated(), 0u);
  EXPECT_EQ(pages_in(ctx, data, kBlockSize, Residency::System), kPagesPerBlock);
  EXPECT_EQ(ctx.counters().pages_to_host, to_host) << "both kept the host copy: nothing to copy";
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
  data[0] = 1;  // writable, no fault to collapse anything
  data[0] = pattern(3, 0);
  expect_pattern(data, kBlockSize, 3);
  // Without the advice, a migration moves the pages as usual.
  ASSERT_EQ(ctx.prefetch(data, kBlockSize, Location::device(kDev1)).migrated, kPagesPerBlock);
  EXPECT_EQ(pages_in(ctx, data, kBlockSize, Residency::Device), kPagesPerBlock);
  expect_pattern(data, kBlockSize, 3);
}

TEST_F(ReadMostlyTest, DiscardDropsBothCopies) {
  EXPECT_EQ(ctx.discard(data, kBlockSize), kPagesPerBlock);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
  EXPECT_TRUE(all_zero(data, kBlockSize));
}

// Writers and readers on the CPU while kernels read and migrations come and
// go: every value is one that was written, and the copies never diverge.
TEST_F(ReadMostlyTest, ConcurrentReadersAndWritersSeeOneValuePerPage) {
  std::atomic<bool> stop{false}, bad{false};
  std::thread mover([&] {
    for (int k = 0; k < 30 && !bad.load(); ++k) ctx.prefetch(data, kBlockSize, Location::device(kDev1));
    stop = true;
  });
  std::thread writer([&] {
    for (std::size_t round = 1; !stop.load(); ++round)
      for (std::size_t p = 0; p < kPagesPerBlock; p += 16) data[p * kPageSize / 8] = round;
  });
  std::size_t reads = 0;
  do {
    for (std::size_t p = 8; p < kPagesPerBlock; p += 16, ++reads)
      if (data[p * kPageSize / 8] != pattern(3, p * kPageSize / 8)) bad = true;
  } while (!stop.load());
  mover.join();
  writer.join();
  EXPECT_FALSE(bad.load());
  EXPECT_GT(reads, 0u);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
}

}  // namespace
