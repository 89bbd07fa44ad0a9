// NotifierRegistry (host/notifier_registry.*): a context's interval notifiers
// and the invalidations that reach them. The contract: an invalidation of
// [lo, hi) bumps and calls every notifier it overlaps (half-open: touching
// is not overlapping) with the overlap, the kind, the owner and the new
// sequence number, and none other; an empty span does nothing; a callback
// that throws is logged and the others still run; read_begin() waits while
// an overlapping invalidation is open (until end(), moves and assignments
// keeping exactly one end per invalidation) and returns the current
// sequence number; remove() stops calls and waits for a running callback;
// in_callback() is true inside a callback only; the counter counts calls.
//
// Waits are forced with latches, not sleeps: a "still waiting" check before
// the release can only pass vacuously, never fail wrongly.
#include <gtest/gtest.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <latch>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

#include "notifier_registry.hpp"

namespace uhmm::test {
namespace {

using detail::NotifierRegistry;
using detail::NotifierState;

constexpr std::uintptr_t kBase = std::uintptr_t{0x6000} << 32;  // addresses only: never touched

struct Recorder {
  std::vector<InvalidateEvent> events;
  std::vector<bool> in_callback;
};

class NotifierRegistryTest : public ::testing::Test {
 protected:
  std::shared_ptr<NotifierState> add(std::uintptr_t lo, std::uintptr_t hi, Recorder* rec) {
    auto n = std::make_shared<NotifierState>();
    n->lo = lo;
    n->hi = hi;
    n->callback = [rec](const InvalidateEvent& e) {
      rec->events.push_back(e);
      rec->in_callback.push_back(NotifierRegistry::in_callback());
    };
    registry_.add(n);
    return n;
  }

  std::atomic<std::uint64_t> invalidations_{0};
  NotifierRegistry registry_{invalidations_};
};

void* at(std::uintptr_t a) { return reinterpret_cast<void*>(a); }

TEST_F(NotifierRegistryTest, AnInvalidationCallsOverlappingNotifiersWithTheOverlap) {
  Recorder a, b, touching;
  auto na = add(kBase, kBase + 4 * kPageSize, &a);
  auto nb = add(kBase + 2 * kPageSize, kBase + 8 * kPageSize, &b);
  auto nt = add(kBase + 8 * kPageSize, kBase + 9 * kPageSize, &touching);  // starts where the span ends
  {
    auto inv = registry_.invalidate(kBase + kPageSize, kBase + 8 * kPageSize, InvalidateKind::eviction, 3);
  }
  ASSERT_EQ(a.events.size(), 1u);
  EXPECT_EQ(a.events[0].start, at(kBase + kPageSize));
  EXPECT_EQ(a.events[0].end, at(kBase + 4 * kPageSize));
  EXPECT_EQ(a.events[0].kind, InvalidateKind::eviction);
  EXPECT_EQ(a.events[0].owner, 3);
  EXPECT_EQ(a.events[0].seq, 1u);
  ASSERT_EQ(b.events.size(), 1u);
  EXPECT_EQ(b.events[0].start, at(kBase + 2 * kPageSize));
  EXPECT_EQ(b.events[0].end, at(kBase + 8 * kPageSize));
  EXPECT_TRUE(touching.events.empty());
  EXPECT_EQ(nt->seq.load(), 0u);
  EXPECT_EQ(invalidations_.load(), 2u);
  EXPECT_EQ(a.in_callback, std::vector<bool>{true});
  EXPECT_FALSE(NotifierRegistry::in_callback());
}

TEST_F(NotifierRegistryTest, EachInvalidationBumpsTheSequenceOnce) {
  Recorder r;
  auto n = add(kBase, kBase + kPageSize, &r);
  for (int i = 0; i < 3; ++i) (void)registry_.invalidate(kBase, kBase + kPageSize, InvalidateKind::migrate, kNoOwner);
  ASSERT_EQ(r.events.size(), 3u);
  EXPECT_EQ(r.events[2].seq, 3u);
  EXPECT_EQ(registry_.read_begin(*n), 3u);
}

TEST_F(NotifierRegistryTest, AnEmptyOrInvertedSpanDoesNothing) {
  Recorder r;
  auto n = add(kBase, kBase + kPageSize, &r);
  (void)registry_.invalidate(kBase, kBase, InvalidateKind::discard, kNoOwner);
  (void)registry_.invalidate(kBase + kPageSize, kBase, InvalidateKind::discard, kNoOwner);
  EXPECT_TRUE(r.events.empty());
  EXPECT_EQ(n->seq.load(), 0u);
  EXPECT_EQ(invalidations_.load(), 0u);
}

TEST_F(NotifierRegistryTest, WithoutNotifiersAnInvalidationCallsNothing) {
  auto inv = registry_.invalidate(kBase, kBase + kPageSize, InvalidateKind::free, kNoOwner);
  inv.end();
  inv.end();  // a second end does nothing
  EXPECT_EQ(invalidations_.load(), 0u);
}

TEST_F(NotifierRegistryTest, ACallbackThatThrowsDoesNotStopTheOthers) {
  auto thrower = std::make_shared<NotifierState>();
  thrower->lo = kBase;
  thrower->hi = kBase + kPageSize;
  thrower->callback = [](const InvalidateEvent&) { throw std::runtime_error("a driver's bug"); };
  registry_.add(thrower);
  auto odd = std::make_shared<NotifierState>();
  odd->lo = kBase;
  odd->hi = kBase + kPageSize;
  odd->callback = [](const InvalidateEvent&) { throw 42; };
  registry_.add(odd);
  Recorder r;
  auto n = add(kBase, kBase + kPageSize, &r);
  (void)registry_.invalidate(kBase, kBase + kPageSize, InvalidateKind::unmap, kNoOwner);
  EXPECT_EQ(r.events.size(), 1u);
  EXPECT_EQ(thrower->seq.load(), 1u);
  EXPECT_EQ(invalidations_.load(), 3u);
  EXPECT_FALSE(NotifierRegistry::in_callback());
  registry_.remove(*thrower);  // nothing left running
  registry_.remove(*odd);
}

TEST_F(NotifierRegistryTest, ARemovedNotifierIsCalledNoMore) {
  Recorder r;
  auto n = add(kBase, kBase + kPageSize, &r);
  registry_.remove(*n);
  (void)registry_.invalidate(kBase, kBase + kPageSize, InvalidateKind::migrate, kNoOwner);
  EXPECT_TRUE(r.events.empty());
  EXPECT_EQ(n->seq.load(), 0u);
}

TEST_F(NotifierRegistryTest, ReadBeginWaitsForAnOverlappingInvalidationToEnd) {
  Recorder r, far;
  auto n = add(kBase, kBase + 2 * kPageSize, &r);
  auto other = add(kBase + 2 * kPageSize, kBase + 3 * kPageSize, &far);
  auto inv = registry_.invalidate(kBase + kPageSize, kBase + 2 * kPageSize, InvalidateKind::discard, kNoOwner);
  // A notifier the open span does not overlap reads at once.
  EXPECT_EQ(registry_.read_begin(*other), 0u);
  std::atomic<bool> returned{false};
  std::uint64_t seq = 0;
  std::latch started(1);
  std::thread reader([&] {
    started.count_down();
    seq = registry_.read_begin(*n);
    returned = true;
  });
  started.wait();
  EXPECT_FALSE(returned.load());  // the invalidation is open
  inv.end();
  reader.join();
  EXPECT_TRUE(returned.load());
  EXPECT_EQ(seq, 1u);
}

TEST_F(NotifierRegistryTest, TwoOpenInvalidationsOfTheSameSpanEachKeepReadersWaiting) {
  Recorder r;
  auto n = add(kBase, kBase + kPageSize, &r);
  auto first = registry_.invalidate(kBase, kBase + kPageSize, InvalidateKind::discard, kNoOwner);
  auto second = registry_.invalidate(kBase, kBase + kPageSize, InvalidateKind::discard, kNoOwner);
  first.end();
  std::atomic<bool> returned{false};
  std::latch started(1);
  std::thread reader([&] {
    started.count_down();
    (void)registry_.read_begin(*n);
    returned = true;
  });
  started.wait();
  EXPECT_FALSE(returned.load());  // the second is still open
  second.end();
  reader.join();
  EXPECT_TRUE(returned.load());
}

TEST_F(NotifierRegistryTest, MovingAnInvalidationKeepsItOpenAndAssigningEndsTheOldOne) {
  Recorder r;
  auto n = add(kBase, kBase + 2 * kPageSize, &r);
  auto a = registry_.invalidate(kBase, kBase + kPageSize, InvalidateKind::migrate, kNoOwner);
  NotifierRegistry::Invalidation moved(std::move(a));
  a.end();  // moved from: ends nothing
  auto b = registry_.invalidate(kBase + kPageSize, kBase + 2 * kPageSize, InvalidateKind::migrate, kNoOwner);
  moved = std::move(b);  // ends the first span, holds the second
  b = NotifierRegistry::Invalidation{};
  std::atomic<bool> returned{false};
  std::latch started(1);
  std::thread reader([&] {
    started.count_down();
    (void)registry_.read_begin(*n);
    returned = true;
  });
  started.wait();
  EXPECT_FALSE(returned.load());  // the second span is still open, in `moved`
  moved.end();
  reader.join();
  EXPECT_TRUE(returned.load());
}

TEST_F(NotifierRegistryTest, RemoveWaitsForACallbackStillRunning) {
  std::latch in_callback(1), release(1);
  auto n = std::make_shared<NotifierState>();
  n->lo = kBase;
  n->hi = kBase + kPageSize;
  std::atomic<bool> callback_done{false};
  n->callback = [&](const InvalidateEvent&) {
    in_callback.count_down();
    release.wait();
    callback_done = true;
  };
  registry_.add(n);
  std::thread invalidator([&] { (void)registry_.invalidate(kBase, kBase + kPageSize, InvalidateKind::migrate, 1); });
  in_callback.wait();
  std::atomic<bool> removed{false};
  std::thread remover([&] {
    registry_.remove(*n);
    removed = true;
    EXPECT_TRUE(callback_done.load());  // its captures may die now
  });
  EXPECT_FALSE(removed.load());
  release.count_down();
  remover.join();
  invalidator.join();
  EXPECT_TRUE(removed.load());
}

TEST_F(NotifierRegistryTest, InvalidationsFromManyThreadsCallEveryOverlappingNotifierOnce) {
  constexpr unsigned kThreads = 4;
  constexpr unsigned kEach = 200;
  std::atomic<unsigned> calls_a{0}, calls_b{0};
  auto a = std::make_shared<NotifierState>();
  a->lo = kBase;
  a->hi = kBase + 2 * kPageSize;
  a->callback = [&](const InvalidateEvent&) { calls_a.fetch_add(1); };
  auto b = std::make_shared<NotifierState>();
  b->lo = kBase + kPageSize;
  b->hi = kBase + 3 * kPageSize;
  b->callback = [&](const InvalidateEvent&) { calls_b.fetch_add(1); };
  registry_.add(a);
  registry_.add(b);
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      const std::uintptr_t lo = kBase + (t % 3) * kPageSize;  // page 0: a, 1: both, 2: b
      for (unsigned i = 0; i < kEach; ++i) (void)registry_.invalidate(lo, lo + kPageSize, InvalidateKind::migrate, 0);
    });
  std::thread reader([&] {
    for (unsigned i = 0; i < kEach; ++i) (void)registry_.read_begin(*a);
  });
  for (auto& th : threads) th.join();
  reader.join();
  // Threads 0 and 3 on page 0 (a), 1 on page 1 (a and b), 2 on page 2 (b).
  EXPECT_EQ(calls_a.load(), 3 * kEach);
  EXPECT_EQ(calls_b.load(), 2 * kEach);
  EXPECT_EQ(a->seq.load(), 3 * kEach);
  EXPECT_EQ(b->seq.load(), 2 * kEach);
  EXPECT_EQ(invalidations_.load(), 5u * kEach);
  EXPECT_EQ(registry_.read_begin(*a), 3 * kEach);  // nothing left open
}

}  // namespace
}  // namespace uhmm::test
