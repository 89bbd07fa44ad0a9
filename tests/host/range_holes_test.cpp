// A managed range allocated into a hole the application unmapped in another
// managed range (issue 13 item 3): the inner range lies inside the outer one's
// address span and shares its userfaultfd. Faults, fault-ahead and lookups by
// address must serve the inner range's pages as the inner range's, never as
// the outer one's hole. Userfaultfd mode: signal mode follows no munmap
// (no mapping events), so the hole is never reused while uhmm manages it.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "test_support.hpp"
#include "uhmm/detail/test_points.hpp"

namespace uhmm::test {
namespace {

constexpr std::size_t kBlock = 2 * MiB;
constexpr std::size_t kBlockPages = kBlock / kPageSize;

std::byte* at(void* base, std::size_t bytes) { return static_cast<std::byte*>(base) + bytes; }

bool events_followed(const Context& ctx) { return std::string_view(ctx.fault_mode()) != "signal"; }
constexpr const char* kNoEvents =
    "signal fault mode: the application's munmap of managed memory is not followed (no userfaultfd mapping "
    "events), so allocate refuses an address uhmm still manages and no range can be allocated into a hole";

// Where the kernel puts the next mapping of a size is its first free gap of
// that size in search order. Placeholders fill the gaps the search meets
// before [lo, hi); the one that meets [lo, hi) is unmapped again, so that
// the next mapping of the same size goes there.
class GapFiller {
 public:
  GapFiller() = default;
  GapFiller(const GapFiller&) = delete;
  GapFiller& operator=(const GapFiller&) = delete;
  ~GapFiller() {
    for (auto [p, bytes] : placeholders_) ::munmap(p, bytes);
  }
  // False if no placeholder met [lo, hi) within the bound.
  bool vacate_slot_in(const std::byte* lo, const std::byte* hi, std::size_t bytes) {
    for (int k = 0; k < 4096; ++k) {
      void* p = ::mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) return false;
      if (p < hi && at(p, bytes) > lo) {
        ::munmap(p, bytes);
        return true;
      }
      keep(p, bytes);
    }
    return false;
  }
  void keep(void* p, std::size_t bytes) { placeholders_.emplace_back(p, bytes); }

 private:
  std::vector<std::pair<void*, std::size_t>> placeholders_;
};

// Allocates a managed range of `bytes` inside [lo, hi) (a hole), or returns
// nullptr. A range uhmm put elsewhere meanwhile is freed.
void* allocate_in(Context& ctx, GapFiller& filler, std::byte* lo, std::byte* hi, std::size_t bytes) {
  // allocate() maps a block more than it needs and trims it to a block boundary.
  for (int attempt = 0; attempt < 8; ++attempt) {
    if (!filler.vacate_slot_in(lo, hi, bytes + kBlock)) return nullptr;
    void* p = ctx.allocate(bytes);
    if (p >= lo && at(p, bytes) <= hi) return p;
    ctx.free(p);
  }
  return nullptr;
}

// Reads one word of a page on its own thread (the page faults).
std::thread reader(const void* page, std::uint64_t& out) {
  return std::thread([page, &out] { out = *static_cast<const volatile std::uint64_t*>(page); });
}

struct BatchOf {
  explicit BatchOf(std::size_t n) { detail::test_points::fault_batch_min.store(n); }
  ~BatchOf() { detail::test_points::fault_batch_min.store(0); }
};

class RangeHoles : public ::testing::Test {
 protected:
  Context ctx{cpu_options()};
  GapFiller filler;
};

// A batch holding a fault of the outer range and, after it, a fault of the
// range allocated in its hole: the second fault (and fault-ahead over its
// block) used to be resolved as the outer range's: zeros mapped over the
// inner range's device pages.
TEST_F(RangeHoles, ABatchSpanningAHoleServesTheRangeAllocatedInItAsItsOwn) {
  if (!events_followed(ctx)) GTEST_SKIP() << kNoEvents;
  constexpr std::size_t kOuter = 6 * kBlock;
  void* outer = ctx.allocate(kOuter);
  std::byte* hole = at(outer, 2 * kBlock);
  constexpr std::size_t kHole = 3 * kBlock;
  ASSERT_EQ(::munmap(hole, kHole), 0);
  fill(outer, 2 * kBlock, 1);
  fill(hole + kHole, kBlock, 3);
  void* inner = allocate_in(ctx, filler, hole, hole + kHole, kBlock);
  if (inner == nullptr) GTEST_SKIP() << "the kernel would not place a mapping in the hole";
  fill(inner, kBlock, 2);
  ASSERT_EQ(ctx.migrate_to_device(outer, 2 * kBlock).migrated, 2 * kBlockPages);
  ASSERT_EQ(ctx.migrate_to_device(hole + kHole, kBlock).migrated, kBlockPages);
  ASSERT_EQ(ctx.migrate_to_device(inner, kBlock).migrated, kBlockPages);
  const std::size_t in_use = ctx.counters().device_pages_in_use;
  ASSERT_EQ(in_use, 4 * kBlockPages);

  // The outer fault sorts first in the batch: the inner one follows it.
  std::uint64_t outer_word = 0, inner_word = 0;
  {
    BatchOf both(2);
    std::thread a = reader(at(outer, kBlock), outer_word);
    std::thread b = reader(at(inner, 8 * kPageSize), inner_word);
    a.join();
    b.join();
  }
  EXPECT_EQ(outer_word, pattern(1, kBlock / 8));
  EXPECT_EQ(inner_word, pattern(2, 8 * kPageSize / 8));
  // Each fault brought back its own range's block (fault-ahead), nothing else.
  const auto inner_states = ctx.residency(inner, kBlock);
  EXPECT_EQ(count(inner_states, Residency::System), kBlockPages);
  EXPECT_EQ(ctx.counters().device_pages_in_use, in_use - 2 * kBlockPages);
  expect_pattern(inner, kBlock, 2);

  // What stays on the device comes back whole, and the pool ends empty.
  EXPECT_EQ(ctx.migrate_to_host(inner, kBlock).migrated, 0u);
  EXPECT_EQ(ctx.migrate_to_host(outer, 2 * kBlock).migrated, kBlockPages);
  EXPECT_EQ(ctx.migrate_to_host(hole + kHole, kBlock).migrated, kBlockPages);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
  expect_pattern(outer, 2 * kBlock, 1);
  expect_pattern(hole + kHole, kBlock, 3);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  ctx.free(inner);
  ctx.free(outer);
}

// A small range allocated at the start of a hole that ends inside one of the
// outer range's blocks: the block holds the outer range's live pages after it.
// A first touch there maps zeros over the block's never-touched pages
// (fault-ahead), and used to take the inner range's pages for the outer's.
TEST_F(RangeHoles, FaultAheadInABlockSharedWithARangeInItsHoleLeavesThatRangesPages) {
  if (!events_followed(ctx)) GTEST_SKIP() << kNoEvents;
  constexpr std::size_t kOuter = 4 * kBlock;
  constexpr std::size_t kInnerPages = 16;
  constexpr std::size_t kInner = kInnerPages * kPageSize;
  void* outer = ctx.allocate(kOuter);
  // The hole: block 0 and block 1's first pages, one page more than the inner range.
  constexpr std::size_t kHole = kBlock + kInner + kPageSize;
  ASSERT_EQ(::munmap(outer, kHole), 0);
  void* inner = allocate_in(ctx, filler, static_cast<std::byte*>(outer), at(outer, kHole), kInner);
  if (inner == nullptr) GTEST_SKIP() << "the kernel would not place a mapping in the hole";
  ASSERT_EQ(inner, at(outer, kBlock));  // block aligned: the block's other pages are the outer range's
  fill(inner, kInner, 2);
  ASSERT_EQ(ctx.migrate_to_device(inner, kInner).migrated, kInnerPages);
  ASSERT_EQ(ctx.counters().device_pages_in_use, kInnerPages);

  // A first touch of the outer range's part of the block: zeros there only.
  const auto* touched = reinterpret_cast<const volatile std::uint64_t*>(at(outer, kBlock + 100 * kPageSize));
  EXPECT_EQ(*touched, 0u);
  EXPECT_EQ(count(ctx.residency(inner, kInner), Residency::Device), kInnerPages);
  EXPECT_EQ(ctx.counters().device_pages_in_use, kInnerPages);
  expect_pattern(inner, kInner, 2);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  ctx.free(inner);
  ctx.free(outer);
}

// The application unmapped a range's first pages and a new range was
// allocated there: both start at the same address. Each call names the range
// live at its address (the new one), and the old range's live part stays its own.
TEST_F(RangeHoles, ARangeAllocatedWhereAnotherRangesHeadWasUnmappedIsCalledByItsBase) {
  if (!events_followed(ctx)) GTEST_SKIP() << kNoEvents;
  constexpr std::size_t kOuter = 4 * kBlock;
  auto* outer = static_cast<std::byte*>(ctx.allocate(kOuter));
  constexpr std::size_t kHole = 2 * kBlock;
  ASSERT_EQ(::munmap(outer, kHole), 0);
  fill(outer + kHole, kOuter - kHole, 1);
  void* inner = allocate_in(ctx, filler, outer, outer + kHole, kBlock);
  if (inner == nullptr) GTEST_SKIP() << "the kernel would not place a mapping in the hole";
  ASSERT_EQ(inner, outer);
  // Checked before any access: with the wrong range, the access would fault forever.
  ASSERT_EQ(ctx.range_size(inner), kBlock);
  ASSERT_EQ(ctx.residency(inner, kBlock).size(), kBlockPages);
  fill(inner, kBlock, 2);
  EXPECT_EQ(ctx.migrate_to_device(inner, kBlock).migrated, kBlockPages);
  EXPECT_EQ(ctx.migrate_to_device(outer + kHole, kOuter - kHole).migrated, (kOuter - kHole) / kPageSize);
  expect_pattern(inner, kBlock, 2);
  expect_pattern(outer + kHole, kOuter - kHole, 1);

  ctx.free(inner);  // the range live at that address
  EXPECT_EQ(ctx.range_size(outer), kOuter);
  EXPECT_EQ(ctx.migrate_to_device(outer + kHole, kOuter - kHole).migrated, (kOuter - kHole) / kPageSize);
  expect_pattern(outer + kHole, kOuter - kHole, 1);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  ctx.free(outer);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
  EXPECT_THROW(ctx.free(outer), Error);
}

// Signal mode follows no munmap: the hole still belongs to the old range as
// far as uhmm knows, and a new range the kernel places there is refused
// (system_error naming the cause), registering nothing.
TEST_F(RangeHoles, SignalModeRefusesARangeTheKernelPlacesInAnUnfollowedHole) {
  if (events_followed(ctx)) GTEST_SKIP() << "userfaultfd mode follows munmap: the other cases cover it";
  constexpr std::size_t kOuter = 6 * kBlock;
  auto* outer = static_cast<std::byte*>(ctx.allocate(kOuter));
  fill(outer, 2 * kBlock, 1);
  std::byte* hole = outer + 2 * kBlock;
  constexpr std::size_t kHole = 3 * kBlock;
  ASSERT_EQ(::munmap(hole, kHole), 0);
  ASSERT_TRUE(filler.vacate_slot_in(hole, hole + kHole, 2 * kBlock));
  try {
    void* inner = ctx.allocate(kBlock);
    ctx.free(inner);  // placed elsewhere after all: nothing to check
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::system_error) << e.what();
    EXPECT_NE(std::string(e.what()).find("without free()"), std::string::npos) << e.what();
  }
  expect_pattern(outer, 2 * kBlock, 1);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  ctx.free(outer);
}

// The application unmaps part of a range while a migration holds its pages:
// the holder leaves them on the device (mapping_events.hpp), in the hole.
// They are not the range's any more: evicting them releases them and installs
// nothing (it used to try to install them: ENOENT in the empty part of the
// hole, so the pool could never shrink below them; and in a range allocated
// there, the old range's bytes over its missing pages).
std::byte* g_unmap_at = nullptr;
std::size_t g_unmap_bytes = 0;
void unmap_once_in_pool() {
  if (std::byte* p = std::exchange(g_unmap_at, nullptr)) {
    ASSERT_EQ(::munmap(p, g_unmap_bytes), 0);
  }
}

struct PoolHook {
  explicit PoolHook(void (*hook)()) { detail::test_points::pool_locked.store(hook); }
  ~PoolHook() { detail::test_points::pool_locked.store(nullptr); }
};

TEST(RangeHolesLeftovers, PagesLeftOnADeviceInAHoleAreReleasedNeverInstalled) {
  Context ctx{cpu_options(64 * MiB, true, 2)};
  if (!events_followed(ctx)) GTEST_SKIP() << kNoEvents;
  GapFiller filler;
  const OwnerId first = ctx.device_owner(0), second = ctx.device_owner(1);
  constexpr std::size_t kOuter = 6 * kBlock;
  auto* outer = static_cast<std::byte*>(ctx.allocate(kOuter));
  fill(outer, kOuter, 1);
  ASSERT_EQ(ctx.migrate_to_device(outer, kOuter, first).migrated, 6 * kBlockPages);
  // Moving the middle to the second device; the application unmaps it while
  // the move holds its pages (the move allocates there: device to device,
  // nothing is read through the mapping).
  std::byte* hole = outer + 2 * kBlock;
  constexpr std::size_t kHole = 3 * kBlock;
  g_unmap_at = hole;
  g_unmap_bytes = kHole;
  {
    PoolHook hook(&unmap_once_in_pool);
    ctx.migrate_to_device(hole, kHole, second);
  }
  ASSERT_EQ(g_unmap_at, nullptr);
  const std::size_t left_over = ctx.counters().device_pages_in_use - 3 * kBlockPages;
  void* inner = allocate_in(ctx, filler, hole, hole + kHole, kBlock);
  if (inner == nullptr) GTEST_SKIP() << "the kernel would not place a mapping in the hole";
  // Never touched: zero-filled on the device, nothing of it mapped on the host
  // (a host page's drop would discard what is left at its address).
  ASSERT_EQ(ctx.migrate_to_device(inner, kBlock, first).migrated, kBlockPages);

  // The second device's pages go (the pool can shrink): none lands in the inner range.
  EXPECT_NO_THROW(ctx.set_device_pool_limit(second, 0));
  EXPECT_EQ(ctx.counters().device_pages_in_use, 4 * kBlockPages);
  const std::vector<std::byte> zeros(kBlock);
  EXPECT_EQ(std::memcmp(inner, zeros.data(), kBlock), 0);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 3 * kBlockPages);
  // The UNMAP marked the pages the move held (DISCARDED): its unlock released
  // their new device pages at once (held_discard_test); nothing is left.
  EXPECT_EQ(left_over, 0u);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  ctx.free(inner);
  ctx.free(outer);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
}

// The application unmaps pages while an eviction brings them back (copied,
// not yet installed): nothing is mapped there (ENOENT). They are gone, not
// failed: their device copies are released and the pool shrinks (the
// eviction used to fail with system_error, the pages left on the device).
constexpr std::size_t kUnmappedMidway = 16;
void unmap_pages_being_installed(void* first) {
  detail::test_points::bring_back_copied.store(nullptr);  // once
  ASSERT_EQ(::munmap(first, kUnmappedMidway * kPageSize), 0);
}

TEST_F(RangeHoles, PagesUnmappedWhileAnEvictionInstallsThemAreReleased) {
  if (!events_followed(ctx)) GTEST_SKIP() << kNoEvents;
  auto* p = static_cast<std::byte*>(ctx.allocate(kBlock));
  fill(p, kBlock, 1);
  ASSERT_EQ(ctx.migrate_to_device(p, kBlock).migrated, kBlockPages);
  detail::test_points::bring_back_copied.store(&unmap_pages_being_installed);
  std::size_t evicted = 0;
  EXPECT_NO_THROW(evicted = ctx.set_device_pool_limit(ctx.device_owner(0), 0));
  detail::test_points::bring_back_copied.store(nullptr);
  EXPECT_EQ(evicted, kBlockPages);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
  EXPECT_EQ(ctx.counters().pages_lost, 0u);
  // The pages still mapped came back with their data; the unmapped ones fail calls.
  EXPECT_EQ(count(ctx.residency(p + kUnmappedMidway * kPageSize, kBlock - kUnmappedMidway * kPageSize),
                  Residency::System),
            kBlockPages - kUnmappedMidway);
  const auto* words = reinterpret_cast<const std::uint64_t*>(p);
  for (std::size_t w = kUnmappedMidway * kPageSize / 8; w < kBlock / 8; ++w)
    ASSERT_EQ(words[w], pattern(1, w)) << "word " << w;
  EXPECT_THROW(ctx.residency(p, kPageSize), Error);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  ctx.free(p);
}

}  // namespace
}  // namespace uhmm::test
