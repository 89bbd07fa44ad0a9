// Orders a user's calls after the mapping events its own earlier calls raised.
//
// The kernel lets a thread return from munmap/madvise/mremap as soon as the
// fault service has *read* the event, a moment before the service has applied
// it to the mirror. A call the same thread makes next (or any thread it has
// synchronised with since) must see the event applied: it waits here until
// every read that had started when it arrived has been applied. The service
// brackets each read-and-apply with begin()/end(); those take nanoseconds, so
// a call waits at most that long, and only if it lands in that window.
#pragma once

#include <sched.h>

#include <atomic>
#include <cstdint>

namespace uhmm::detail {

class EventGate {
 public:
  // The reading thread only; brackets may not nest.
  void begin() noexcept { started_.fetch_add(1, std::memory_order_seq_cst); }
  void end() noexcept { done_.fetch_add(1, std::memory_order_release); }
  // Any thread but the reading one.
  void wait_applied() const noexcept {
    const std::uint64_t target = started_.load(std::memory_order_seq_cst);
    while (done_.load(std::memory_order_acquire) < target) ::sched_yield();
  }

 private:
  std::atomic<std::uint64_t> started_{0};
  std::atomic<std::uint64_t> done_{0};
};

}  // namespace uhmm::detail
