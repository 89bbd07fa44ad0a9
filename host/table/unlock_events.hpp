// Announces that locked pages were released, to whoever waits for it: threads
// that need a locked page (eviction, launches) and the fault service, which
// re-runs the faults it parked.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>

#include "lock_order.hpp"
#include "uhmm/detail/test_points.hpp"

namespace uhmm::detail {

class UnlockEvents {
 public:
  std::uint64_t generation() const {
    std::lock_guard lock(mutex_);
    return generation_;
  }
  void announce() {
    {
      std::lock_guard lock(mutex_);
      ++generation_;
    }
    changed_.notify_all();
    if (listener_) listener_();
  }
  // Waits until an announce() after `seen` (the generation read before the
  // caller found a page locked), so no announcement is missed.
  void wait_after(std::uint64_t seen) {
    test_points::at(test_points::unlock_wait);
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return generation_ != seen; });
  }
  // The same, giving up after `limit`; true when an announcement came. For a
  // waiter whose holder might go without announcing (a range freed under it).
  bool wait_after_for(std::uint64_t seen, std::chrono::milliseconds limit) {
    test_points::at(test_points::unlock_wait);
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, limit, [&] { return generation_ != seen; });
  }
  // Set once, before any announce() (the fault service's wake-up).
  void set_listener(std::function<void()> listener) { listener_ = std::move(listener); }

 private:
  mutable Ranked<std::mutex, LockRank::unlock_events> mutex_;
  std::condition_variable_any changed_;
  std::uint64_t generation_ = 0;
  std::function<void()> listener_;
};

}  // namespace uhmm::detail
