// The interval notifiers of a Context (include/uhmm/interval_notifier.hpp) and
// the invalidations that reach them. Every mirror change that can make a
// device's view stale runs inside an Invalidation: it bumps the sequence
// numbers of the notifiers it overlaps and calls their callbacks, then stays
// "in progress" until the change is done, so that read_begin() waits for it.
//
// Changes made under page locks (migrations, bring-backs) need no window:
// snapshots report locked pages as not valid, so they begin and end the
// invalidation right after locking. Changes made under the block mutexes alone
// (the application's discards and unmaps, free) keep it open around the change.
//
// Locking: one registry mutex, never held while a callback runs nor by anyone
// holding a block mutex; callbacks are never called under a block mutex.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "lock_order.hpp"
#include "uhmm/interval_notifier.hpp"

namespace uhmm::detail {

class ManagedRange;

struct NotifierState {
  std::uintptr_t lo = 0;
  std::uintptr_t hi = 0;
  IntervalNotifier::Callback callback;
  std::atomic<std::uint64_t> seq{0};
  unsigned running = 0;  // callbacks in flight; guarded by the registry mutex
};

class NotifierRegistry {
 public:
  explicit NotifierRegistry(std::atomic<std::uint64_t>& invalidations_counter) noexcept
      : invalidations_(invalidations_counter) {}

  void add(std::shared_ptr<NotifierState> notifier);
  // Unregisters and waits for the notifier's callbacks still running.
  void remove(const NotifierState& notifier) noexcept;
  // Waits until no invalidation overlapping the notifier is in progress.
  std::uint64_t read_begin(const NotifierState& notifier);

  // One invalidation, open from its construction (callbacks done) to its end.
  class Invalidation {
   public:
    Invalidation() = default;
    Invalidation(Invalidation&& o) noexcept : registry_(std::exchange(o.registry_, nullptr)), lo_(o.lo_), hi_(o.hi_) {}
    Invalidation& operator=(Invalidation&& o) noexcept {
      if (this != &o) {
        end();
        registry_ = std::exchange(o.registry_, nullptr);
        lo_ = o.lo_;
        hi_ = o.hi_;
      }
      return *this;
    }
    ~Invalidation() { end(); }
    void end() noexcept;

   private:
    friend class NotifierRegistry;
    Invalidation(NotifierRegistry* r, std::uintptr_t lo, std::uintptr_t hi) noexcept : registry_(r), lo_(lo), hi_(hi) {}
    NotifierRegistry* registry_ = nullptr;
    std::uintptr_t lo_ = 0, hi_ = 0;
  };

  // Starts an invalidation of addresses [lo, hi): bumps and calls every
  // overlapping notifier. Never throws (a callback that throws is logged).
  // Pre: the caller holds no block mutex.
  [[nodiscard]] Invalidation invalidate(std::uintptr_t lo, std::uintptr_t hi, InvalidateKind kind,
                                        OwnerId owner) noexcept;
  // The same over pages [first, end) of a range.
  [[nodiscard]] Invalidation invalidate(const ManagedRange& range, std::size_t first, std::size_t end,
                                        InvalidateKind kind, OwnerId owner) noexcept;

  // True on a thread that is running a notifier callback.
  static bool in_callback() noexcept;

 private:
  std::atomic<std::uint64_t>& invalidations_;
  Ranked<std::mutex, LockRank::notifiers> mutex_;
  std::condition_variable_any changed_;
  std::vector<std::shared_ptr<NotifierState>> notifiers_;
  // Invalidations in progress; a multiset of address spans (few at a time).
  std::vector<std::pair<std::uintptr_t, std::uintptr_t>> active_;
};

}  // namespace uhmm::detail
