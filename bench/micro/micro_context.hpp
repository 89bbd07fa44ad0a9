// What the microbenchmarks share: a Context on the options of the environment
// with a pool of a given size, and timing of one iteration for UseManualTime
// (setup inside the loop stays out of the figures).
#pragma once

#include <chrono>
#include <cstddef>

#include "uhmm/uhmm.hpp"

namespace uhmm::bench::micro {

inline constexpr std::size_t kMiB = std::size_t{1} << 20;

inline ContextOptions options_with_pool(std::size_t pool_bytes, bool fault_ahead = true) {
  ContextOptions o = ContextOptions::from_environment();
  o.device_pool_bytes = (pool_bytes + kChunkSize - 1) & ~(kChunkSize - 1);
  o.fault_ahead = fault_ahead;
  return o;
}

using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace uhmm::bench::micro
