// Interval notifiers (mmu_interval_notifier): which mirror changes invalidate,
// what the event says, the read_begin / read_retry loop, what a callback may
// call, unregistration against running callbacks, and a dmirror-like driver
// that keeps its own page table in sync through notifiers alone while other
// threads fault and migrate.
#include <gtest/gtest.h>

#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "test_support.hpp"
#include "uhmm/uhmm.hpp"

namespace uhmm::test {
namespace {

// Records every event it hears.
struct Recorder {
  std::mutex mutex;
  std::vector<InvalidateEvent> events;
  IntervalNotifier::Callback callback() {
    return [this](const InvalidateEvent& e) {
      std::lock_guard lock(mutex);
      events.push_back(e);
    };
  }
  std::vector<InvalidateEvent> take() {
    std::lock_guard lock(mutex);
    return std::exchange(events, {});
  }
  bool heard(InvalidateKind kind, OwnerId owner) {
    std::lock_guard lock(mutex);
    for (const auto& e : events)
      if (e.kind == kind && e.owner == owner) return true;
    return false;
  }
};

TEST(IntervalNotifier, MigrationToADeviceNamesKindOwnerSpanAndSequence) {
  Context ctx(cpu_options());
  const std::size_t n = 64;
  auto* p = static_cast<std::byte*>(ctx.allocate(n * kPageSize));
  fill(p, n * kPageSize, 1);
  Recorder rec;
  IntervalNotifier notifier(ctx, p, n * kPageSize, rec.callback());
  const std::uint64_t seq = notifier.read_begin();
  EXPECT_FALSE(notifier.read_retry(seq));
  const Counters before = ctx.counters();
  ctx.migrate_to_device(p + 8 * kPageSize, 8 * kPageSize, 1);
  const auto events = rec.take();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].kind, InvalidateKind::migrate);
  EXPECT_EQ(events[0].owner, 1);
  EXPECT_EQ(events[0].start, p + 8 * kPageSize);
  EXPECT_EQ(events[0].end, p + 16 * kPageSize);
  EXPECT_EQ(events[0].seq, notifier.seq());
  EXPECT_TRUE(notifier.read_retry(seq));
  EXPECT_FALSE(notifier.read_retry(notifier.read_begin()));
  EXPECT_EQ(ctx.counters().notifier_invalidations - before.notifier_invalidations, 1u);
  EXPECT_STREQ(to_string(InvalidateKind::migrate), "migrate");
  ctx.free(p);
}

TEST(IntervalNotifier, EveryMirrorChangeThatInvalidatesIsHeard) {
  Context ctx(cpu_options(64 * MiB, true, 2));
  const std::size_t n = 1024;
  auto* p = static_cast<std::byte*>(ctx.allocate(n * kPageSize));
  fill(p, n * kPageSize, 2);
  Recorder rec;
  auto notifier = std::make_unique<IntervalNotifier>(ctx, p, n * kPageSize, rec.callback());

  ctx.migrate_to_device(p, 2 * MiB, 1);
  EXPECT_TRUE(rec.heard(InvalidateKind::migrate, 1));
  rec.take();
  ctx.migrate_to_device(p, kPageSize, 2);  // device to device
  EXPECT_TRUE(rec.heard(InvalidateKind::migrate, 2));
  rec.take();
  // A CPU fault brings the page (and fault-ahead its block) back.
  EXPECT_EQ(first_mismatch(p, kPageSize, 2), SIZE_MAX);
  EXPECT_TRUE(rec.heard(InvalidateKind::migrate, kNoOwner));
  rec.take();
  ctx.migrate_to_device(p, 2 * MiB, 1);
  rec.take();
  ctx.migrate_to_host(p, 64 * kPageSize);
  EXPECT_TRUE(rec.heard(InvalidateKind::migrate, kNoOwner));
  rec.take();
  const auto states = ctx.residency(p + 100 * kPageSize, kPageSize);
  migrate_device_range(ctx, 1, states[0].device.index, 1);
  EXPECT_TRUE(rec.heard(InvalidateKind::eviction, 1));
  rec.take();
  ctx.pin(p + 200 * kPageSize, 4 * kPageSize);
  EXPECT_TRUE(rec.heard(InvalidateKind::protection_change, kNoOwner));
  EXPECT_TRUE(rec.heard(InvalidateKind::migrate, kNoOwner));  // the pinned pages came back
  ctx.unpin(p + 200 * kPageSize, 4 * kPageSize);
  rec.take();
  ctx.set_device_pool_limit(1, 0);  // shrinking evicts the rest
  EXPECT_TRUE(rec.heard(InvalidateKind::eviction, 1));
  ctx.set_device_pool_limit(1, 64 * MiB);
  rec.take();
  ctx.free(p);
  const auto events = rec.take();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].kind, InvalidateKind::free);
  EXPECT_EQ(events[0].start, p);
  EXPECT_EQ(events[0].end, p + n * kPageSize);
}

// Advice changes the mirror too: a read-mostly page collapses to one copy on a
// write (either side), and discard drops pages. Devices must hear each.
TEST(IntervalNotifier, ReadMostlyCollapsesAndDiscardAreHeard) {
  Context ctx(cpu_options());
  const std::size_t n = 16;
  auto* p = static_cast<std::byte*>(ctx.allocate(n * kPageSize));
  fill(p, n * kPageSize, 3);
  Recorder rec;
  IntervalNotifier notifier(ctx, p, n * kPageSize, rec.callback());
  ctx.advise(p, n * kPageSize, Advice::set_read_mostly);
  ctx.migrate_to_device(p, n * kPageSize, 1);
  ASSERT_EQ(ctx.residency(p, kPageSize)[0].residency, Residency::Duplicated);
  rec.take();

  p[0] = std::byte{7};  // a CPU store: the host copy stays, the device copy goes
  EXPECT_TRUE(rec.heard(InvalidateKind::migrate, kNoOwner));
  EXPECT_EQ(ctx.residency(p, kPageSize)[0].residency, Residency::System);
  rec.take();

  // A kernel that may write collapses the pages to the device copy.
  std::span<std::byte> span(p + 8 * kPageSize, 4 * kPageSize);
  ctx.launch(1, [](std::size_t, device_span<std::byte>) {}, span);
  EXPECT_TRUE(rec.heard(InvalidateKind::protection_change, 1));
  EXPECT_EQ(ctx.residency(p + 8 * kPageSize, kPageSize)[0].residency, Residency::Device);
  rec.take();

  const std::uint64_t seq = notifier.read_begin();
  ctx.discard(p, n * kPageSize);
  EXPECT_TRUE(rec.heard(InvalidateKind::discard, kNoOwner));
  EXPECT_TRUE(notifier.read_retry(seq));
  ctx.free(p);
}

TEST(IntervalNotifier, TheApplicationsDiscardAndUnmapAreHeard) {
  Context ctx(cpu_options());
  if (std::string(ctx.fault_mode()) == "signal") GTEST_SKIP() << "signal mode does not follow madvise/munmap";
  const std::size_t n = 64;
  auto* p = static_cast<std::byte*>(ctx.allocate(n * kPageSize));
  fill(p, n * kPageSize, 3);
  ctx.migrate_to_device(p, n * kPageSize, 1);
  Recorder rec;
  IntervalNotifier notifier(ctx, p, n * kPageSize, rec.callback());
  ASSERT_EQ(::madvise(p, 4 * kPageSize, MADV_DONTNEED), 0);
  ctx.counters();  // waits until the event is applied
  EXPECT_TRUE(rec.heard(InvalidateKind::discard, kNoOwner));
  rec.take();
  // uhmm's own zaps (migrating host pages) are not heard as discards.
  ctx.migrate_to_host(p, 8 * kPageSize);
  ctx.migrate_to_device(p, 8 * kPageSize, 1);
  ctx.counters();
  EXPECT_FALSE(rec.heard(InvalidateKind::discard, kNoOwner));
  ASSERT_EQ(::munmap(p + 32 * kPageSize, 32 * kPageSize), 0);
  ctx.counters();
  EXPECT_TRUE(rec.heard(InvalidateKind::unmap, kNoOwner));
  ctx.free(p);
}

TEST(IntervalNotifier, OnlyOverlappingNotifiersHearAndTheEventIsClipped) {
  Context ctx(cpu_options());
  const std::size_t n = 64;
  auto* p = static_cast<std::byte*>(ctx.allocate(n * kPageSize));
  fill(p, n * kPageSize, 4);
  Recorder low, high;
  IntervalNotifier a(ctx, p, 16 * kPageSize, low.callback());
  IntervalNotifier b(ctx, p + 32 * kPageSize, 32 * kPageSize, high.callback());
  ctx.migrate_to_device(p + 8 * kPageSize, 16 * kPageSize, 1);
  const auto events = low.take();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].start, p + 8 * kPageSize);
  EXPECT_EQ(events[0].end, p + 16 * kPageSize);
  EXPECT_TRUE(high.take().empty());
  ctx.free(p);
}

TEST(IntervalNotifier, ACallbackMaySnapshotAndReadRetryButNotWait) {
  Context ctx(cpu_options());
  const std::size_t n = 16;
  auto* p = static_cast<std::byte*>(ctx.allocate(n * kPageSize));
  fill(p, n * kPageSize, 5);
  IntervalNotifier* self = nullptr;
  std::vector<std::uint64_t> seen(n, 1);
  Status plain, populate;
  bool retry = false, read_begin_refused = false;
  // The callback may run on the fault service's thread: what it records is
  // read here under this mutex (a userfaultfd wake is no happens-before edge
  // TSan can see).
  std::mutex m;
  IntervalNotifier notifier(ctx, p, n * kPageSize, [&](const InvalidateEvent& e) {
    std::lock_guard lock(m);
    SnapshotRange r;
    r.start = p;
    r.end = p + n * kPageSize;
    r.pfns = seen.data();
    r.owner = 1;
    plain = snapshot_range(ctx, r);
    r.default_flags = SNAPSHOT_REQ_POPULATE;
    populate = snapshot_range(ctx, r);
    retry = self->read_retry(e.seq - 1);
    try {
      self->read_begin();
    } catch (const Error& err) {
      read_begin_refused = err.code() == Errc::busy;
    }
  });
  self = &notifier;
  ctx.migrate_to_device(p, n * kPageSize, 1);
  {
    std::lock_guard lock(m);
    EXPECT_TRUE(plain) << plain.message;
    for (std::uint64_t w : seen) EXPECT_EQ(w, 0u);  // locked by the migration: not valid
    EXPECT_EQ(populate.code, Errc::busy);
    EXPECT_TRUE(retry);
    EXPECT_TRUE(read_begin_refused);
    // The same from the fault service's thread (a CPU fault brings pages back).
    plain = {};
  }
  EXPECT_EQ(first_mismatch(p, n * kPageSize, 5), SIZE_MAX);
  {
    std::lock_guard lock(m);
    EXPECT_TRUE(plain) << plain.message;
  }
  ctx.free(p);
}

TEST(IntervalNotifier, UnregisterWaitsForItsRunningCallback) {
  Context ctx(cpu_options());
  const std::size_t n = 16;
  auto* p = static_cast<std::byte*>(ctx.allocate(n * kPageSize));
  fill(p, n * kPageSize, 6);
  std::atomic<bool> entered{false}, release{false}, finished{false};
  auto notifier = std::make_unique<IntervalNotifier>(ctx, p, n * kPageSize, [&](const InvalidateEvent&) {
    entered = true;
    while (!release) std::this_thread::yield();
    finished = true;
  });
  std::thread migrate([&] { ctx.migrate_to_device(p, n * kPageSize, 1); });
  while (!entered) std::this_thread::yield();
  std::atomic<bool> destroyed{false};
  std::thread destroy([&] {
    notifier.reset();
    destroyed = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(destroyed.load());
  release = true;
  destroy.join();
  EXPECT_TRUE(finished.load());
  migrate.join();
  // Gone: a new change calls nothing.
  ctx.migrate_to_host(p, n * kPageSize);
  ctx.free(p);
}

TEST(IntervalNotifier, ReadBeginWaitsForAnInvalidationInProgress) {
  Context ctx(cpu_options());
  if (std::string(ctx.fault_mode()) == "signal") GTEST_SKIP() << "needs the application's discard events";
  const std::size_t n = 16;
  auto* p = static_cast<std::byte*>(ctx.allocate(n * kPageSize));
  fill(p, n * kPageSize, 7);
  ctx.migrate_to_device(p, n * kPageSize, 1);
  // A discard keeps its invalidation open until the entries changed: a
  // read_begin that follows sees the pages Empty, never the freed device pages.
  std::atomic<bool> in_callback{false}, release{false};
  IntervalNotifier* self = nullptr;
  IntervalNotifier notifier(ctx, p, n * kPageSize, [&](const InvalidateEvent& e) {
    if (e.kind != InvalidateKind::discard) return;
    in_callback = true;
    while (!release) std::this_thread::yield();
  });
  self = &notifier;
  std::thread app([&] { ::madvise(p, n * kPageSize, MADV_DONTNEED); });
  while (!in_callback) std::this_thread::yield();
  std::atomic<bool> began{false};
  std::uint64_t seq = 0;
  std::thread driver([&] {
    seq = self->read_begin();
    began = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(began.load());
  release = true;
  driver.join();
  app.join();
  std::vector<std::uint64_t> pfns(n);
  SnapshotRange r;
  r.start = p;
  r.end = p + n * kPageSize;
  r.pfns = pfns.data();
  r.owner = 1;
  ASSERT_TRUE(snapshot_range(ctx, r));
  EXPECT_FALSE(notifier.read_retry(seq));
  for (std::uint64_t w : pfns) EXPECT_EQ(w, 0u);
  ctx.free(p);
}

TEST(IntervalNotifier, BadInputIsRefusedAndRegistersNothing) {
  Context ctx(cpu_options());
  auto* p = static_cast<std::byte*>(ctx.allocate(2 * MiB));
  auto noop = [](const InvalidateEvent&) {};
  auto code = [&](void* start, std::size_t bytes, IntervalNotifier::Callback cb) {
    try {
      IntervalNotifier n(ctx, start, bytes, std::move(cb));
    } catch (const Error& e) {
      return e.code();
    }
    return Errc::ok;
  };
  EXPECT_EQ(code(p, 0, noop), Errc::zero_length);
  EXPECT_EQ(code(p + 1, kPageSize, noop), Errc::not_aligned);
  EXPECT_EQ(code(p, 4 * MiB, noop), Errc::out_of_range);
  EXPECT_EQ(code(nullptr, kPageSize, noop), Errc::invalid_argument);
  EXPECT_EQ(code(p, kPageSize, nullptr), Errc::invalid_argument);
  const Counters before = ctx.counters();
  fill(p, kPageSize, 8);
  ctx.migrate_to_device(p, kPageSize, 1);
  EXPECT_EQ(ctx.counters().notifier_invalidations, before.notifier_invalidations);
  ctx.free(p);
}

// A device driver in miniature (lib/test_hmm.c's dmirror): its own page table
// of snapshot words, filled through the retry loop and cleared by the
// callback, never looked after otherwise.
class Dmirror {
 public:
  Dmirror(Context& ctx, std::byte* base, std::size_t npages, OwnerId owner)
      : ctx_(ctx), base_(base), table_(npages, 0), owner_(owner),
        notifier_(ctx, base, npages * kPageSize, [this](const InvalidateEvent& e) { invalidate(e); }) {}

  // The kernel's pattern: snapshot between read_begin and read_retry, install under the lock.
  void update() {
    std::vector<std::uint64_t> words(table_.size());
    for (;;) {
      const std::uint64_t seq = notifier_.read_begin();
      SnapshotRange r;
      r.start = base_;
      r.end = base_ + table_.size() * kPageSize;
      r.pfns = words.data();
      r.owner = owner_;
      ASSERT_TRUE(snapshot_range(ctx_, r));
      std::lock_guard lock(mutex_);
      if (notifier_.read_retry(seq)) {
        ++retries_;
        continue;
      }
      table_ = words;
      ++updates_;
      return;
    }
  }

  // Under the driver lock nothing it holds can have gone stale: every change
  // calls the callback (which needs this lock) before it lands.
  std::size_t stale_entries() {
    std::lock_guard lock(mutex_);
    const auto states = ctx_.residency(base_, table_.size() * kPageSize);
    std::size_t stale = 0;
    for (std::size_t i = 0; i < table_.size(); ++i) {
      const std::uint64_t w = table_[i];
      if ((w & (SNAPSHOT_PFN_VALID | SNAPSHOT_PFN_OTHER_DEVICE)) == 0) continue;
      const PageState& s = states[i];
      if (w & (SNAPSHOT_PFN_DEVICE_PRIVATE | SNAPSHOT_PFN_OTHER_DEVICE)) {
        stale += !(s.residency == Residency::Device && s.device == snapshot_pfn_to_device_page(w));
      } else {
        stale += s.residency != Residency::System;
      }
    }
    ++checks_;
    return stale;
  }

  std::size_t updates() const { return updates_; }
  std::size_t retries() const { return retries_; }
  std::size_t checks() const { return checks_; }

 private:
  void invalidate(const InvalidateEvent& e) {
    std::lock_guard lock(mutex_);
    const std::size_t first = static_cast<std::size_t>(static_cast<std::byte*>(e.start) - base_) / kPageSize;
    const std::size_t end = static_cast<std::size_t>(static_cast<std::byte*>(e.end) - base_) / kPageSize;
    for (std::size_t i = first; i < end; ++i) table_[i] = 0;
  }

  Context& ctx_;
  std::byte* base_;
  std::mutex mutex_;
  std::vector<std::uint64_t> table_;
  OwnerId owner_;
  std::size_t updates_ = 0, retries_ = 0, checks_ = 0;
  IntervalNotifier notifier_;  // last: unregistered first
};

TEST(IntervalNotifier, DmirrorStaysInSyncWhileOthersFaultAndMigrate) {
  Context ctx(cpu_options(64 * MiB, true, 2));
  const std::size_t n = 2048;  // 4 blocks
  auto* p = static_cast<std::byte*>(ctx.allocate(n * kPageSize));
  fill(p, n * kPageSize, 9);
  Dmirror mirror(ctx, p, n, 1);
  std::atomic<bool> stop{false};
  std::atomic<std::size_t> stale{0};
  std::vector<std::thread> threads;
  // Migrations both ways, to both devices.
  for (unsigned t = 0; t < 2; ++t)
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      while (!stop) {
        const std::size_t first = rng() % (n - 64);
        const std::size_t count = 1 + rng() % 64;
        if (rng() % 3 == 0) ctx.migrate_to_host(p + first * kPageSize, count * kPageSize);
        else ctx.migrate_to_device(p + first * kPageSize, count * kPageSize, static_cast<OwnerId>(1 + rng() % 2));
      }
    });
  // CPU faults (reads and writes of the same values).
  threads.emplace_back([&] {
    std::mt19937 rng(7);
    auto* w = reinterpret_cast<volatile std::uint64_t*>(p);
    while (!stop) {
      const std::size_t page = rng() % n;
      const std::size_t word = page * (kPageSize / 8) + rng() % (kPageSize / 8);
      w[word] = w[word];
    }
  });
  // The driver.
  threads.emplace_back([&] {
    while (!stop) {
      mirror.update();
      stale += mirror.stale_entries();
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  stop = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(stale.load(), 0u);
  EXPECT_GT(mirror.checks(), 0u);
  mirror.update();
  EXPECT_EQ(mirror.stale_entries(), 0u);
  EXPECT_EQ(first_mismatch(p, n * kPageSize, 9), SIZE_MAX);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  RecordProperty("updates", static_cast<int>(mirror.updates()));
  RecordProperty("retries", static_cast<int>(mirror.retries()));
  ctx.free(p);
}

}  // namespace
}  // namespace uhmm::test
