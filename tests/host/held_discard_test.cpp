// The application discards (MADV_DONTNEED) a page that an operation holds
// LOCKED while it maps it on the host: a bring-back for a CPU fault,
// migrate_to_host, an eviction (migrate_device_range) or a snapshot's
// populate. The REMOVE event marks the held page and its holder's unlock
// finishes it as a FREED host page, so the mirror agrees with the page tables
// once it learns from them that the page is gone: the page reads zeros,
// and the next migration neither hangs on it (a host page the kernel zapped
// under a holder that then recorded it as on the host: its copy engine faulted
// and parked on its own lock) nor moves stale data; no pool page leaks.
// The interleavings are forced at the holder's test point (held_install),
// both before it maps the pages and after; a migration to a device is caught
// between migrate_vma_setup and its copy. An munmap there (UNMAP) marks the
// page the same way, but its holder leaves alone what is mapped there next.
// Mapping events exist in userfaultfd mode only: the tests skip under
// UHMM_FAULT_MODE=signal.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <string_view>
#include <thread>

#include "context_core.hpp"
#include "mm.hpp"
#include "signal_fault_handler.hpp"
#include "signal_test_support.hpp"
#include "test_support.hpp"
#include "uhmm/detail/test_points.hpp"
#include "uhmm/migrate.hpp"
#include "uhmm/range_snapshot.hpp"

namespace uhmm::test {
namespace {

constexpr std::size_t kPages = 16;  // one block: a holder takes them in one go
constexpr std::size_t kBytes = kPages * kPageSize;
constexpr std::size_t kVictim = 1;  // the page discarded under its holder
constexpr std::uint64_t kSeed = 7;

std::byte* page(void* base, std::size_t i) { return static_cast<std::byte*>(base) + i * kPageSize; }

// Whether the page tables hold a page at `page` (present or swapped out).
bool host_page_mapped(const void* page) {
  const int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  std::uint64_t word = 0;
  const auto offset = static_cast<off_t>(reinterpret_cast<std::uintptr_t>(page) / kPageSize * sizeof word);
  const bool read = fd >= 0 && ::pread(fd, &word, sizeof word, offset) == static_cast<ssize_t>(sizeof word);
  if (fd >= 0) ::close(fd);
  EXPECT_TRUE(read) << "reading /proc/self/pagemap failed";
  return (word >> 62) != 0;  // bit 63 present, bit 62 swapped
}

// The mirror says what the page tables hold for `page`: System where a page
// is mapped, Empty where none is.
void expect_mirror_agrees(Context& ctx, const std::byte* page) {
  const bool mapped = host_page_mapped(page);
  EXPECT_EQ(ctx.residency(page, kPageSize)[0].residency, mapped ? Residency::System : Residency::Empty)
      << (mapped ? "a host page is mapped there" : "no host page is mapped there");
}

// Whether page i of base reads as fill(base, .., seed) left it, or zeros
// (`filled` false).
bool page_reads(const std::byte* base, std::size_t i, bool filled) {
  const auto* w = reinterpret_cast<const std::uint64_t*>(base + i * kPageSize);
  for (std::size_t k = 0; k < kPageSize / 8; ++k)
    if (w[k] != (filled ? pattern(kSeed, i * kPageSize / 8 + k) : 0)) return false;
  return true;
}

// What the test point does: once, at the chosen moment of a holder of the
// range's pages, madvise(MADV_DONTNEED) the victim page.
struct Discarder {
  Context* ctx = nullptr;
  std::byte* base = nullptr;
  bool after_install = false;
  bool unmap = false;  // munmap the victim and map other memory there instead
  std::atomic<bool> move{false};  // mremap the range's tail to `moved` instead
  std::atomic<std::byte*> moved{nullptr};
  // Atomics: a test arms them after the test point is installed, and the
  // fault service's thread reads them (no happens-before through a fault).
  std::atomic<int> advice{MADV_DONTNEED};
  // After the madvise, another thread stores kStored to the victim while the
  // holder still holds it (a store that faults waits for the service).
  std::atomic<bool> store_after{false};
  std::thread storer;
  std::atomic<bool> stored{false};
  std::atomic<bool> fired{false};
  std::atomic<int> rc{-1};
};
Discarder discarder;

constexpr std::uint64_t kOtherMemory = 0x5eed;
constexpr std::uint64_t kStored = 0x570fed;

// The application moves the range's tail (pages kMoveFirst on) elsewhere
// (mremap to a place it reserved): a call that follows finds the data there.
constexpr std::size_t kMoveFirst = kPages / 2;
constexpr std::size_t kMovedBytes = kBytes - kMoveFirst * kPageSize;
void move_range() {
  void* target = ::mmap(nullptr, kMovedBytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (target == MAP_FAILED) return;
  void* moved =
      ::mremap(page(discarder.base, kMoveFirst), kMovedBytes, kMovedBytes, MREMAP_MAYMOVE | MREMAP_FIXED, target);
  if (moved != target) {
    ::munmap(target, kMovedBytes);
    return;
  }
  discarder.moved = static_cast<std::byte*>(moved);
  discarder.rc = 0;
}

void discard_victim() {
  void* victim = page(discarder.base, kVictim);
  if (discarder.move) {
    move_range();
    return;
  }
  if (!discarder.unmap) {
    discarder.rc = ::madvise(victim, kPageSize, discarder.advice);
    if (discarder.store_after) {
      // Where the store needs no fault (the page is mapped) it lands before
      // the holder goes on; one that faults waits for the holder's unlock.
      discarder.storer = std::thread([victim] {
        *static_cast<volatile std::uint64_t*>(victim) = kStored;
        discarder.stored = true;
      });
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
      while (!discarder.stored && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
    }
    return;
  }
  discarder.rc = ::munmap(victim, kPageSize);
  detail::core(*discarder.ctx).ranges.gate().wait_applied();  // the address is free for reuse now
  void* other = ::mmap(victim, kPageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (other != victim) discarder.rc = -1;
  else *static_cast<std::uint64_t*>(other) = kOtherMemory;
}

// The fault service holds the page: the madvise waits until this very thread
// reads its event, so another thread makes it; once the event is pending, an
// ioctl of the service meets it (EAGAIN) and reads it (the pump), as any of
// its ioctls would. Joined: the kernel has zapped the page when this returns.
void discard_victim_from_the_service() {
  std::thread changer(discard_victim);
  auto& impl = detail::core(*discarder.ctx);
  pollfd pending{impl.mechanism->poll_fd(), POLLIN, 0};
  while (::poll(&pending, 1, -1) < 0) {
  }
  const detail::RangeSpan span = impl.ranges.resolve(discarder.base, kBytes, "held_discard_test");
  (void)impl.mechanism->write_protect(span.range(), kPages - 1, 1, false);  // a held page: changes nothing
  changer.join();
}

void at_held_install(void* first_page, bool installed) {
  auto* p = static_cast<std::byte*>(first_page);
  if (installed != discarder.after_install || p < discarder.base || p >= discarder.base + kBytes) return;
  if (discarder.fired.exchange(true)) return;
  if (detail::signal_faults::on_service_thread()) {
    discard_victim_from_the_service();  // the service applied the event as it read it
    return;
  }
  discard_victim();  // waits until the fault service has read the event
  // Applied, too, before the holder goes on (as a call that follows the
  // madvise would see it: event_gate.hpp).
  detail::core(*discarder.ctx).ranges.gate().wait_applied();
}

class HeldDiscard : public ::testing::TestWithParam<bool> {
 protected:
  Context ctx{cpu_options()};
  std::byte* p = nullptr;

  void SetUp() override {
    if (std::string_view(ctx.fault_mode()) == "signal")
      GTEST_SKIP() << "signal fault mode: the application's madvise is not followed (no userfaultfd mapping events)";
    p = static_cast<std::byte*>(ctx.allocate(kBytes));
    fill(p, kBytes, kSeed);
    discarder.ctx = &ctx;
    discarder.base = p;
    discarder.after_install = GetParam();
    discarder.fired = false;
    discarder.unmap = false;
    discarder.move = false;
    discarder.moved = nullptr;
    discarder.advice = MADV_DONTNEED;
    discarder.store_after = false;
    discarder.stored = false;
    discarder.rc = -1;
    detail::test_points::held_install.store(&at_held_install);
  }
  void TearDown() override {
    detail::test_points::held_install.store(nullptr);
    if (discarder.storer.joinable()) discarder.storer.join();
    if (discarder.moved != nullptr) ::munmap(discarder.moved, kMovedBytes);
  }

  void on_device() { ASSERT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kPages); }

  // The discard happened under the holder; now the victim reads zeros and the
  // mirror agrees with the page tables (a host page where one is mapped: the
  // zeros a fault or a populate installed, which the application may have
  // written since; Empty where none is), every other page keeps what it held
  // (the pattern, or zeros where `filled` is false), and a migration of the
  // range neither hangs nor carries stale data. The pool holds exactly the
  // device pages.
  void expect_victim_empty_and_migratable(bool filled = true) {
    detail::test_points::held_install.store(nullptr);
    ASSERT_TRUE(discarder.fired.load()) << "the holder never reached its test point";
    ASSERT_EQ(discarder.rc, 0) << "the application's madvise failed";
    expect_mirror_agrees(ctx, page(p, kVictim));
    EXPECT_TRUE(page_reads(p, kVictim, false));
    EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
    {
      Watchdog watchdog("migrate_to_device of a page discarded under its holder", std::chrono::seconds(30));
      EXPECT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kPages);
    }
    EXPECT_EQ(ctx.counters().device_pages_in_use, kPages);
    for (std::size_t i = 0; i < kPages; ++i) EXPECT_TRUE(page_reads(p, i, filled && i != kVictim)) << "page " << i;
    const Status valid = detail::core(ctx).validate(/*quiescent=*/true);
    EXPECT_TRUE(valid) << valid.message;
  }
};

TEST_P(HeldDiscard, MigrateToHost) {
  on_device();
  const MigrationResult r = ctx.migrate_to_host(p, kBytes);
  EXPECT_EQ(r.failed, 0u);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);  // the victim's device page too
  expect_victim_empty_and_migratable();
}

TEST_P(HeldDiscard, Eviction) {
  on_device();
  const std::size_t capacity = detail::core(ctx).rmap(1).capacity();
  migrate_device_range(ctx, 1, 0, capacity);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
  expect_victim_empty_and_migratable();
}

TEST_P(HeldDiscard, FaultServiceBringBack) {
  on_device();
  // A read of page 0 brings its block back (fault-ahead); the victim is its
  // neighbour, which nothing touches until the migration.
  std::uint64_t first_word = 0;
  std::thread reader([&] { first_word = *reinterpret_cast<volatile std::uint64_t*>(p); });
  reader.join();
  EXPECT_EQ(first_word, pattern(kSeed, 0));
  expect_victim_empty_and_migratable();
}

TEST_P(HeldDiscard, SnapshotPopulate) {
  // Never-touched pages, populated on the host (zeros) by a snapshot request.
  p = static_cast<std::byte*>(ctx.allocate(kBytes));
  discarder.base = p;
  std::uint64_t pfns[kPages] = {};
  SnapshotRange r;
  r.start = p;
  r.end = p + kBytes;
  r.pfns = pfns;
  r.default_flags = SNAPSHOT_REQ_POPULATE;
  ASSERT_TRUE(snapshot_range(ctx, r));
  EXPECT_EQ(pfns[kVictim], 0u);  // not valid: discarded under its holder
  EXPECT_NE(pfns[0] & SNAPSHOT_PFN_VALID, 0u);
  expect_victim_empty_and_migratable(/*filled=*/false);
}

// The application frees (MADV_FREE: the kernel keeps the page) or drops the
// victim under its holder and stores to it at once: the store is the page's
// content from then on, whatever the holder mapped and whenever the kernel
// zapped; the unlock must not zap it again.
class HeldDiscardThenStore : public HeldDiscard {
 protected:
  void arm(int advice) {
    discarder.advice = advice;
    discarder.store_after = true;
  }
  void expect_store_kept() {
    detail::test_points::held_install.store(nullptr);
    ASSERT_TRUE(discarder.fired.load()) << "the holder never reached its test point";
    ASSERT_EQ(discarder.rc, 0) << "the application's madvise failed";
    discarder.storer.join();
    EXPECT_EQ(*reinterpret_cast<volatile std::uint64_t*>(page(p, kVictim)), kStored);
    expect_mirror_agrees(ctx, page(p, kVictim));
    {
      Watchdog watchdog("migrate_to_device of a page stored to under its holder", std::chrono::seconds(30));
      EXPECT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kPages);
    }
    EXPECT_EQ(*reinterpret_cast<volatile std::uint64_t*>(page(p, kVictim)), kStored);
    for (std::size_t i = 0; i < kPages; ++i) EXPECT_TRUE(i == kVictim || page_reads(p, i, true)) << "page " << i;
    const Status valid = detail::core(ctx).validate(/*quiescent=*/true);
    EXPECT_TRUE(valid) << valid.message;
  }
};

TEST_P(HeldDiscardThenStore, FreeUnderMigrateToHost) {
  on_device();
  arm(MADV_FREE);
  EXPECT_EQ(ctx.migrate_to_host(p, kBytes).failed, 0u);
  expect_store_kept();
}

TEST_P(HeldDiscardThenStore, DontneedUnderMigrateToHost) {
  on_device();
  arm(MADV_DONTNEED);
  EXPECT_EQ(ctx.migrate_to_host(p, kBytes).failed, 0u);
  expect_store_kept();
}

TEST_P(HeldDiscardThenStore, FreeUnderEviction) {
  on_device();
  arm(MADV_FREE);
  migrate_device_range(ctx, 1, 0, detail::core(ctx).rmap(1).capacity());
  expect_store_kept();
}

TEST_P(HeldDiscardThenStore, FreeUnderFaultServiceBringBack) {
  on_device();
  arm(MADV_FREE);
  std::thread reader([&] { (void)*reinterpret_cast<volatile std::uint64_t*>(p); });
  reader.join();
  expect_store_kept();
}

// An UNMAP marks the held page too, and its holder's unlock empties it; it
// does not zap it again: the application may have mapped other memory there.
TEST_P(HeldDiscard, UnmapThenOtherMemoryThereUnderMigrateToHost) {
  on_device();
  discarder.unmap = true;
  const MigrationResult r = ctx.migrate_to_host(p, kBytes);
  detail::test_points::held_install.store(nullptr);
  ASSERT_TRUE(discarder.fired.load());
  ASSERT_EQ(discarder.rc, 0) << "munmap, or mapping other memory in its place, failed";
  EXPECT_EQ(r.failed, 0u);
  EXPECT_EQ(*reinterpret_cast<volatile std::uint64_t*>(page(p, kVictim)), kOtherMemory);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
  const Status valid = detail::core(ctx).validate(/*quiescent=*/true);
  EXPECT_TRUE(valid) << valid.message;
  for (std::size_t i = 0; i < kPages; ++i) EXPECT_TRUE(i == kVictim || page_reads(p, i, true)) << "page " << i;
  ::munmap(page(p, kVictim), kPageSize);
}

// A migration to a device holds the host pages it copies: one discarded
// between setup and the copy is read as zeros by the copy engine, not moved,
// and left on the host by finalize (its destination page freed).
TEST(HeldDiscardMigration, HostPageDiscardedWhileSelectedStaysOnTheHostAsZeros) {
  Context ctx(cpu_options());
  if (std::string_view(ctx.fault_mode()) == "signal") GTEST_SKIP() << "signal fault mode: no mapping events";
  auto* p = static_cast<std::byte*>(ctx.allocate(kBytes));
  fill(p, kBytes, kSeed);
  std::uint64_t src[kPages] = {}, dst[kPages] = {};
  MigrateVma m;
  m.start = p;
  m.end = p + kBytes;
  m.src = src;
  m.dst = dst;
  m.flags = MIGRATE_VMA_SELECT_SYSTEM;
  m.destination = 1;
  migrate_vma_setup(ctx, m);
  ASSERT_EQ(m.cpages, kPages);
  ASSERT_EQ(::madvise(page(p, kVictim), kPageSize, MADV_DONTNEED), 0);
  {
    Watchdog watchdog("a migration copying a page discarded under it", std::chrono::seconds(30));
    ASSERT_TRUE(device_pagemap(ctx, 1).alloc_and_copy(m));
    EXPECT_EQ(migrate_vma_pages(ctx, m), kPages - 1);
    migrate_vma_finalize(ctx, m);
  }
  expect_mirror_agrees(ctx, page(p, kVictim));  // the copy engine's fault mapped zeros there
  EXPECT_EQ(ctx.counters().device_pages_in_use, kPages - 1);
  for (std::size_t i = 0; i < kPages; ++i) EXPECT_TRUE(page_reads(p, i, i != kVictim)) << "page " << i;
  const Status valid = detail::core(ctx).validate(/*quiescent=*/true);
  EXPECT_TRUE(valid) << valid.message;
}

// The application moves part of the range (mremap) while an operation holds
// its device pages, before or after the holder maps them at the old place:
// every moved page reads its data at the new place (the REMAP copies what
// the holder still has on the device; what the holder mapped moved with the
// page tables), the rest at the old one, and once the range is freed no pool
// page is left.
class HeldMove : public HeldDiscard {
 protected:
  void arm() {
    on_device();
    discarder.move = true;
  }
  void expect_moved_intact() {
    detail::test_points::held_install.store(nullptr);
    ASSERT_TRUE(discarder.fired.load()) << "the holder never reached its test point";
    ASSERT_EQ(discarder.rc, 0) << "the application's mremap failed";
    detail::core(ctx).ranges.gate().wait_applied();
    for (std::size_t i = 0; i < kPages; ++i) {
      const std::byte* base = i < kMoveFirst ? p : discarder.moved - kMoveFirst * kPageSize;
      EXPECT_TRUE(page_reads(base, i, true)) << "page " << i << (i < kMoveFirst ? "" : " at the new place");
    }
    const Status valid_live = detail::core(ctx).validate(/*quiescent=*/true);
    EXPECT_TRUE(valid_live) << valid_live.message;
    ctx.free(p);
    EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
  }
};

TEST_P(HeldMove, UnderMigrateToHost) {
  arm();
  (void)ctx.migrate_to_host(p, kBytes);  // its pages are not the range's any more: what it says is moot
  expect_moved_intact();
}

TEST_P(HeldMove, UnderEviction) {
  arm();
  migrate_device_range(ctx, 1, 0, detail::core(ctx).rmap(1).capacity());
  expect_moved_intact();
}

TEST_P(HeldMove, UnderFaultServiceBringBack) {
  arm();
  std::thread reader([&] { (void)*reinterpret_cast<volatile std::uint64_t*>(p); });
  reader.join();
  expect_moved_intact();
}

std::string install_order(const ::testing::TestParamInfo<bool>& param) {
  return param.param ? "AfterInstall" : "BeforeInstall";
}
INSTANTIATE_TEST_SUITE_P(, HeldDiscard, ::testing::Values(false, true), install_order);
INSTANTIATE_TEST_SUITE_P(, HeldDiscardThenStore, ::testing::Values(false, true), install_order);
INSTANTIATE_TEST_SUITE_P(, HeldMove, ::testing::Values(false, true), install_order);

}  // namespace
}  // namespace uhmm::test
