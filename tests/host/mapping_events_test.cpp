// Races between the application's own mapping changes (userfaultfd REMOVE,
// UNMAP, REMAP events; host/fault/mapping_events.hpp) and uhmm operations, forced
// with test points (uhmm/detail/test_points.hpp) rather than hoped for. A
// watchdog turns a hang into a named failure. Mapping events exist in
// userfaultfd mode only: with UHMM_FAULT_MODE=signal these tests skip.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "context_core.hpp"
#include "mm.hpp"
#include "signal_test_support.hpp"
#include "test_support.hpp"
#include "uhmm/detail/test_points.hpp"
#include "uhmm/migrate.hpp"

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21  // Linux 5.4
#endif

namespace uhmm::test {
namespace {

constexpr std::size_t kPages = 64;
constexpr std::size_t kBytes = kPages * kPageSize;
constexpr auto kLimit = std::chrono::seconds(60);
constexpr const char* kNoEvents =
    "signal fault mode: the application's madvise/munmap/mremap of managed memory is not followed (no userfaultfd "
    "mapping events)";

bool events_followed(const Context& ctx) { return std::string_view(ctx.fault_mode()) != "signal"; }

// A one-way signal between a hook (a plain function, so the state is global)
// and a test thread.
class Latch {
 public:
  void open() {
    {
      std::lock_guard lock(m_);
      open_ = true;
    }
    cv_.notify_all();
  }
  void wait() {
    std::unique_lock lock(m_);
    cv_.wait(lock, [&] { return open_; });
  }
  void reset() {
    std::lock_guard lock(m_);
    open_ = false;
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  bool open_ = false;
};

// Sets a test point for a scope.
class Hook {
 public:
  Hook(std::atomic<void (*)()>& point, void (*hook)()) : point_(point) { point_.store(hook); }
  Hook(const Hook&) = delete;
  Hook& operator=(const Hook&) = delete;
  ~Hook() { point_.store(nullptr); }

 private:
  std::atomic<void (*)()>& point_;
};

// A place to mremap a range to: reserved, then replaced by the move.
void* reserve(std::size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

// --- A REMAP read in the middle of a bring-back (issue 13, item 1) ---------

Latch g_mover_go;
std::atomic<int> g_uffd{-1};

// The fault service's bring-back has copied device pages into its staging
// buffer: another thread mremaps a device-resident range now, and the
// install that follows meets its REMAP (EAGAIN) and applies it first.
void remap_while_staged() {
  detail::test_points::bring_back_staged.store(nullptr);  // once
  g_mover_go.open();
  pollfd fd{g_uffd.load(), POLLIN, 0};
  while (::poll(&fd, 1, -1) < 0 && errno == EINTR) {
  }
}

TEST(MappingEventRaces, RemapAppliedDuringABringBackLeavesItsStagedPagesAlone) {
  Watchdog watchdog("RemapAppliedDuringABringBackLeavesItsStagedPagesAlone", kLimit);
  Context ctx(cpu_options());
  if (!events_followed(ctx)) GTEST_SKIP() << kNoEvents;
  // Two ranges block-aligned alike: page i of each has the same staging slot.
  void* a = ctx.allocate(kBytes);
  void* b = ctx.allocate(kBytes);
  fill(a, kBytes, 1);
  fill(b, kBytes, 2);
  ASSERT_EQ(ctx.migrate_to_device(a, kBytes).migrated, kPages);
  ASSERT_EQ(ctx.migrate_to_device(b, kBytes).migrated, kPages);
  void* target = reserve(kBytes);
  ASSERT_NE(target, nullptr);
  g_mover_go.reset();
  g_uffd.store(detail::core(ctx).mechanism->poll_fd());
  void* moved = nullptr;
  std::thread mover([&] {
    g_mover_go.wait();
    moved = ::mremap(b, kBytes, kBytes, MREMAP_MAYMOVE | MREMAP_FIXED, target);
  });
  {
    Hook hook(detail::test_points::bring_back_staged, remap_while_staged);
    expect_pattern(a, kBytes, 1);  // faults the block back; the hook fires in its bring-back
  }
  mover.join();
  ASSERT_EQ(moved, target) << std::strerror(errno);
  expect_pattern(a, kBytes, 1);
  expect_pattern(target, kBytes, 2);
  EXPECT_EQ(ctx.counters().pages_lost, 0u);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  ASSERT_EQ(::munmap(target, kBytes), 0);
}

// --- The REMAP copy's unlock is announced (issue 13, item 5) ---------------

Latch g_evictor_go;
Latch g_evictor_waiting;

// The REMAP handler holds the moved device pages: an eviction of them starts
// now, finds them locked and sleeps until an unlock is announced.
void evict_while_copied_out() {
  detail::test_points::remap_copy_locked.store(nullptr);  // once
  g_evictor_go.open();
  g_evictor_waiting.wait();
}
void note_waiting() { g_evictor_waiting.open(); }

TEST(MappingEventRaces, RemapCopyAnnouncesItsUnlockToAWaitingEviction) {
  Watchdog watchdog("RemapCopyAnnouncesItsUnlockToAWaitingEviction", kLimit);
  Context ctx(cpu_options());
  if (!events_followed(ctx)) GTEST_SKIP() << kNoEvents;
  void* a = ctx.allocate(kBytes);
  fill(a, kBytes, 3);
  ASSERT_EQ(ctx.migrate_to_device(a, kBytes).migrated, kPages);
  DevicePageIndex lo = ~DevicePageIndex{0}, hi = 0;
  for (const PageState& s : ctx.residency(a, kBytes)) {
    lo = std::min(lo, s.device.index);
    hi = std::max(hi, s.device.index);
  }
  void* target = reserve(kBytes);
  ASSERT_NE(target, nullptr);
  g_evictor_go.reset();
  g_evictor_waiting.reset();
  const OwnerId owner = ctx.device_owner(0);
  std::thread evictor([&] {
    g_evictor_go.wait();
    try {
      // Waits for locked pages; it may find them moved and fail, which is fine.
      migrate_device_range(ctx, owner, lo, hi - lo + 1);
    } catch (const Error&) {
    }
  });
  void* moved = nullptr;
  {
    Hook copying(detail::test_points::remap_copy_locked, evict_while_copied_out);
    Hook waiting(detail::test_points::unlock_wait, note_waiting);
    moved = ::mremap(a, kBytes, kBytes, MREMAP_MAYMOVE | MREMAP_FIXED, target);
    evictor.join();  // nothing else unlocks anything: only the copy's own announcement wakes it
  }
  ASSERT_EQ(moved, target) << std::strerror(errno);
  expect_pattern(target, kBytes, 3);
  EXPECT_EQ(ctx.counters().pages_lost, 0u);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  ASSERT_EQ(::munmap(target, kBytes), 0);
}

// --- The old place of a move is retired by its own UNMAP (issue 13) -------

// The kernel maps the old place of a move anew as soon as mremap has moved
// it, while the REMAP is read and applied, before it even queues the UNMAP of
// that place. A range allocated there then must not be registered before that
// UNMAP is applied, or the UNMAP hits it (the stress model's Mremap op lost
// such ranges: "not in any managed range"). allocate() waits while a live part
// of a registered range overlaps its mapping, so the REMAP must leave the old
// place live and let the UNMAP retire it. Where the kernel places a new
// mapping cannot be forced here: the test checks that rule at the moment the
// REMAP has been applied.
std::atomic<std::uintptr_t> g_old_place{0};
std::atomic<Context*> g_ctx{nullptr};
std::atomic<int> g_old_place_live{-1};

void note_old_place_liveness() {
  const std::uintptr_t lo = g_old_place.load();
  auto& impl = detail::core(*g_ctx.load());
  bool live = false;
  for (const auto& range : impl.ranges.overlapping(lo, lo + kBytes)) live |= !range->all_unmapped(0, kPages);
  g_old_place_live.store(live ? 1 : 0);
}

TEST(MappingEventRaces, TheOldPlaceOfAMoveStaysLiveUntilItsUnmapIsApplied) {
  Watchdog watchdog("TheOldPlaceOfAMoveStaysLiveUntilItsUnmapIsApplied", kLimit);
  Context ctx(cpu_options());
  if (!events_followed(ctx)) GTEST_SKIP() << kNoEvents;
  void* a = ctx.allocate(kBytes);
  fill(a, kBytes, 4);  // host pages only: a device page's copy would read (pump) the UNMAP early
  void* target = reserve(kBytes);
  ASSERT_NE(target, nullptr);
  g_old_place.store(reinterpret_cast<std::uintptr_t>(a));
  g_ctx.store(&ctx);
  g_old_place_live.store(-1);
  void* moved = nullptr;
  {
    Hook hook(detail::test_points::remap_applied, note_old_place_liveness);
    moved = ::mremap(a, kBytes, kBytes, MREMAP_MAYMOVE | MREMAP_FIXED, target);
    detail::core(ctx).ranges.gate().wait_applied();
  }
  ASSERT_EQ(moved, target) << std::strerror(errno);
  EXPECT_EQ(g_old_place_live.load(), 1) << "the REMAP retired the old place before its UNMAP came";
  EXPECT_THROW((void)ctx.residency(a, kPageSize), Error) << "the UNMAP that follows retires it";
  expect_pattern(target, kBytes, 4);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  ASSERT_EQ(::munmap(target, kBytes), 0);
}

// MREMAP_DONTUNMAP moves the pages and leaves the old place mapped, empty: no
// UNMAP follows its REMAP, and the old place stays a managed range reading
// zeros, which migrates and frees as any other.
TEST(MappingEventRaces, DontunmapLeavesTheOldPlaceManagedAndEmpty) {
  Watchdog watchdog("DontunmapLeavesTheOldPlaceManagedAndEmpty", kLimit);
  Context ctx(cpu_options());
  if (!events_followed(ctx)) GTEST_SKIP() << kNoEvents;
  void* a = ctx.allocate(kBytes);
  fill(a, kBytes, 5);
  ASSERT_EQ(ctx.migrate_to_device(a, kBytes / 2).migrated, kPages / 2);
  void* target = reserve(kBytes);
  ASSERT_NE(target, nullptr);
  void* moved = ::mremap(a, kBytes, kBytes, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, target);
  if (moved == MAP_FAILED && errno == EINVAL) GTEST_SKIP() << "this kernel has no MREMAP_DONTUNMAP for this mapping";
  ASSERT_EQ(moved, target) << std::strerror(errno);
  detail::core(ctx).ranges.gate().wait_applied();
  expect_pattern(target, kBytes, 5);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
  for (const PageState& st : ctx.residency(a, kBytes)) EXPECT_EQ(st.residency, Residency::Empty);
  const auto* words = static_cast<const std::uint64_t*>(a);
  EXPECT_TRUE(std::all_of(words, words + kBytes / 8, [](std::uint64_t w) { return w == 0; }));
  fill(a, kBytes, 6);
  EXPECT_EQ(ctx.migrate_to_device(a, kBytes).migrated, kPages);
  EXPECT_EQ(ctx.migrate_to_host(a, kBytes).migrated, kPages);
  expect_pattern(a, kBytes, 6);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  ctx.free(a);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
  ASSERT_EQ(::munmap(target, kBytes), 0);
}

// --- Mapping events apply in the order read (issue 13) ---------------------

// Whether thread `tid` sleeps until the fault service reads its mapping
// event (its REMAP or UNMAP is queued).
bool waits_for_its_event(pid_t tid) {
  std::ifstream wchan("/proc/self/task/" + std::to_string(tid) + "/wchan");
  std::string where;
  wchan >> where;
  return where == "userfaultfd_event_wait_completion";
}

// Waits (bounded) until both movers wait for their events to be read.
bool both_movers_wait(const std::atomic<pid_t> (&movers)[2]) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < give_up) {
    const pid_t a = movers[0].load(), b = movers[1].load();
    if (a != 0 && b != 0 && waits_for_its_event(a) && waits_for_its_event(b)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

Latch g_movers_go;
std::atomic<pid_t> g_movers[2];
std::atomic<bool> g_movers_queued{false};
std::atomic<bool> g_unmaps_queued{false};

// The fault service is about to install a bring-back: two threads mremap
// two ranges now, so both REMAPs are queued when its install meets them and
// its pump reads them in one go.
void move_two_while_staged() {
  detail::test_points::bring_back_staged.store(nullptr);  // once
  g_movers_go.open();
  g_movers_queued.store(both_movers_wait(g_movers));
}

// The first REMAP holds its pages: both movers have queued the UNMAP of
// their old place by now, and its copy's pump reads both.
void wait_for_both_unmaps() {
  detail::test_points::remap_copy_locked.store(nullptr);  // once
  g_unmaps_queued.store(both_movers_wait(g_movers));
}

TEST(MappingEventRaces, EventsReadWhileAnotherIsAppliedWaitTheirTurn) {
  Watchdog watchdog("EventsReadWhileAnotherIsAppliedWaitTheirTurn", kLimit);
  Context ctx(cpu_options());
  if (!events_followed(ctx)) GTEST_SKIP() << kNoEvents;
  void* ranges[3];
  for (std::uint64_t k = 0; k < 3; ++k) {
    ranges[k] = ctx.allocate(kBytes);
    fill(ranges[k], kBytes, 10 + k);
    ASSERT_EQ(ctx.migrate_to_device(ranges[k], kBytes).migrated, kPages);
  }
  void* targets[2] = {reserve(kBytes), reserve(kBytes)};
  ASSERT_NE(targets[0], nullptr);
  ASSERT_NE(targets[1], nullptr);
  g_movers_go.reset();
  g_movers[0].store(0);
  g_movers[1].store(0);
  void* moved[2] = {nullptr, nullptr};
  std::vector<std::thread> movers;
  for (int k = 0; k < 2; ++k)
    movers.emplace_back([&, k] {
      g_movers[k].store(::gettid());
      g_movers_go.wait();
      moved[k] = ::mremap(ranges[k], kBytes, kBytes, MREMAP_MAYMOVE | MREMAP_FIXED, targets[k]);
    });
  {
    Hook staged(detail::test_points::bring_back_staged, move_two_while_staged);
    Hook copying(detail::test_points::remap_copy_locked, wait_for_both_unmaps);
    expect_pattern(ranges[2], kBytes, 12);  // a fault brings the block back; the hooks fire under it
    for (auto& t : movers) t.join();
  }
  ASSERT_TRUE(g_movers_queued.load()) << "the movers' REMAPs were not both queued";
  ASSERT_TRUE(g_unmaps_queued.load()) << "the movers' UNMAPs were not both queued";
  for (int k = 0; k < 2; ++k) {
    ASSERT_EQ(moved[k], targets[k]) << std::strerror(errno);
    expect_pattern(targets[k], kBytes, 10 + k);
  }
  EXPECT_EQ(ctx.counters().pages_lost, 0u);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  for (void* t : targets) ASSERT_EQ(::munmap(t, kBytes), 0);
}

// --- A freed page the kernel reclaims while a migration copies it ---------

std::atomic<std::byte*> g_freed{nullptr};
std::atomic<bool> g_reclaimed{false};

// The migration holds the freed pages (its device pages are being taken from
// the pool): the kernel reclaims them now, as it may any time after MADV_FREE.
void reclaim_freed() {
  std::byte* p = g_freed.exchange(nullptr);
  if (p == nullptr) return;
  unsigned char resident[kPages];
  g_reclaimed.store(::madvise(p, kBytes, MADV_PAGEOUT) == 0 && ::mincore(p, kBytes, resident) == 0 &&
                    std::none_of(resident, resident + kPages, [](unsigned char c) { return (c & 1) != 0; }));
}

TEST(MappingEventRaces, FreedPagesReclaimedWhileAMigrationCopiesThemReadZerosAndNothingHangs) {
  Watchdog watchdog("FreedPagesReclaimedWhileAMigrationCopiesThemReadZerosAndNothingHangs", kLimit);
  Context ctx(cpu_options());
  if (!events_followed(ctx)) GTEST_SKIP() << kNoEvents;
  auto* p = static_cast<std::byte*>(ctx.allocate(kBytes));
  fill(p, kBytes, 4);
  ASSERT_EQ(::madvise(p, kBytes, MADV_FREE), 0);
  g_reclaimed.store(false);
  g_freed.store(p);
  MigrationResult r;
  {
    Hook hook(detail::test_points::pool_locked, reclaim_freed);
    r = ctx.migrate_to_device(p, kBytes);  // its copy engine faults on pages its own migration holds
  }
  if (!g_reclaimed.load()) GTEST_SKIP() << "MADV_PAGEOUT did not reclaim the freed pages here";
  // Each page got zeros for the copy and stayed on the host, where it reads zeros.
  EXPECT_EQ(r.migrated, 0u);
  EXPECT_EQ(count(ctx.residency(p, kBytes), Residency::Device), 0u);
  const std::vector<std::byte> zeros(kBytes);
  EXPECT_EQ(std::memcmp(p, zeros.data(), kBytes), 0);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  // And the range works on.
  fill(p, kBytes, 5);
  EXPECT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kPages);
  EXPECT_EQ(ctx.migrate_to_host(p, kBytes).migrated, kPages);
  expect_pattern(p, kBytes, 5);
  ctx.free(p);
}

// --- A store to a write-protected page the mirror has as Empty -------------

// MADV_FREE keeps a page's write-protection; a page the mirror has as Empty
// while it is still mapped and protected (found gone by the page tables in
// the moment before a late install) is this state, made here directly. The
// store faulted WP for ever: the service only woke it.
TEST(MappingEventRaces, AStoreToAWriteProtectedPageRecordedEmptyGoesThroughAndStays) {
  Watchdog watchdog("AStoreToAWriteProtectedPageRecordedEmptyGoesThroughAndStays", kLimit);
  Context ctx(cpu_options());
  if (!events_followed(ctx)) GTEST_SKIP() << kNoEvents;
  auto* p = static_cast<std::uint64_t*>(ctx.allocate(kBytes));
  fill(p, kBytes, 6);
  {
    detail::RangeSpan span = detail::core(ctx).ranges.find(p);
    ASSERT_TRUE(span);
    auto& range = span.range();
    ASSERT_EQ(detail::core(ctx).mechanism->write_protect(range, 0, 1, true), 0);
    std::lock_guard lock(range.table().block_mutex(0));
    range.table().entry(0) = detail::MirrorEntry{};
  }
  p[3] = 0x5707e;  // faults WP
  EXPECT_EQ(p[3], 0x5707eu);
  EXPECT_EQ(ctx.residency(p, kPageSize)[0].residency, Residency::System);
  EXPECT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kPages);
  EXPECT_EQ(ctx.migrate_to_host(p, kBytes).migrated, kPages);
  EXPECT_EQ(p[3], 0x5707eu);
  EXPECT_EQ(p[4], pattern(6, 4));
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  ctx.free(p);
}

}  // namespace
}  // namespace uhmm::test
