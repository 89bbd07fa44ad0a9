// Test points: hooks tests set to force an interleaving at a precise place
// (tests that link the library's object files; never set otherwise). Unset,
// each costs one relaxed load.
#pragma once

#include <atomic>

namespace uhmm::detail::test_points {

// Called by the device page pool while it holds its mutex, on every
// allocation (a signal raised here lands inside a library lock).
extern std::atomic<void (*)()> pool_locked;

inline void at(const std::atomic<void (*)()>& point) noexcept {
  if (auto* hook = point.load(std::memory_order_relaxed)) hook();
}

}  // namespace uhmm::detail::test_points
