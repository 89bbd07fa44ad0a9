// The library's lock order, written once and checked. Every mutex that may be
// held while another is taken has a rank; a thread takes locks in strictly
// increasing rank (two of the same rank at once is a violation too: no two
// block mutexes). `Ranked<Mutex, rank>` wraps a mutex and tells the checker;
// the checker is on in expensive-check builds (UHMM_EXPENSIVE_CHECKS, which CI
// runs the whole suite under) and off elsewhere (one relaxed load per lock).
// A violation names both locks and aborts: every test that takes locks in the
// wrong order fails. Mutexes that guard a condition variable or nothing else
// (unlock events, staging, streams, traces) are leaves: nothing is taken
// under them, which the checker cannot see and their headers say.
#pragma once

#include <atomic>
#include <cstdint>

namespace uhmm::detail {

// Outer to inner. The gaps leave room; the order is what matters.
enum class LockRank : std::uint8_t {
  range_registry = 10,  // RangeRegistry: ranges by address (shared for lookups)
  retired = 20,         // Mm: ranges unmapped entirely, reaped later
  range_ops = 30,       // ManagedRange: one advice/prefetch/discard at a time
  protection = 40,      // signal mechanism: a range's protections and run count
  block = 50,           // MirrorTable: one block's entries
  advice = 60,          // AdviceTable: a range's advice runs
  unmapped = 70,        // ManagedRange: the parts the application unmapped
  notifiers = 80,       // NotifierRegistry
  bounces = 90,         // PageBounces
  // Leaves: nothing ranked is taken under them.
  launch_stream_pools = 100,  // LaunchStreamPools: the pools by device
  launch_stream_pool = 105,   // LaunchStreamPool: one device's idle streams
  launch_results = 110,       // a device launch's batch results
  staging = 120,              // StagingPool
  unlock_events = 130,        // UnlockEvents
  trace_file = 140,           // TraceRecorder: the file
  trace_buffer = 150,         // TraceRecorder: the buffered events
};

namespace lock_order {

// On in expensive-check builds; a test may turn it on (before its threads).
extern std::atomic<bool> checking;
// Before a blocking lock: a violation if this thread holds `rank` or a later one.
void check(LockRank rank) noexcept;
// After any lock (a try_lock may take one out of order: it cannot deadlock).
void acquired(LockRank rank) noexcept;
void released(LockRank rank) noexcept;
// What a violation does instead of aborting (tests); nullptr: abort.
using ViolationHandler = void (*)(const char* held, const char* taken);
void set_violation_handler(ViolationHandler handler) noexcept;
const char* name_of(LockRank rank) noexcept;

}  // namespace lock_order

// A mutex (exclusive, and shared where Mutex has it) that tells the checker.
template <class Mutex, LockRank Rank>
class Ranked {
 public:
  void lock() {
    check();
    mutex_.lock();
    note_acquired();
  }
  bool try_lock() {
    if (!mutex_.try_lock()) return false;
    note_acquired();
    return true;
  }
  void unlock() {
    note_released();
    mutex_.unlock();
  }
  void lock_shared() {
    check();
    mutex_.lock_shared();
    note_acquired();
  }
  bool try_lock_shared() {
    if (!mutex_.try_lock_shared()) return false;
    note_acquired();
    return true;
  }
  void unlock_shared() {
    note_released();
    mutex_.unlock_shared();
  }

 private:
  static void check() noexcept {
    if (lock_order::checking.load(std::memory_order_relaxed)) lock_order::check(Rank);
  }
  static void note_acquired() noexcept {
    if (lock_order::checking.load(std::memory_order_relaxed)) lock_order::acquired(Rank);
  }
  static void note_released() noexcept {
    if (lock_order::checking.load(std::memory_order_relaxed)) lock_order::released(Rank);
  }

  Mutex mutex_;
};

}  // namespace uhmm::detail
