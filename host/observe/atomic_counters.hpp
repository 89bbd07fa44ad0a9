// The library's side of uhmm::Counters: one relaxed atomic per counter.
#pragma once

#include <atomic>
#include <cstdint>

#include "uhmm/counters.hpp"

namespace uhmm::detail {

struct AtomicCounters {
#define UHMM_ATOMIC_COUNTER(name) std::atomic<std::uint64_t> name{0};
  UHMM_COUNTERS(UHMM_ATOMIC_COUNTER)
#undef UHMM_ATOMIC_COUNTER

  static void add(std::atomic<std::uint64_t>& c, std::uint64_t n) noexcept {
    if (n != 0) c.fetch_add(n, std::memory_order_relaxed);
  }

  Counters snapshot() const noexcept {
    Counters out;
#define UHMM_COPY_COUNTER(name) out.name = name.load(std::memory_order_relaxed);
    UHMM_COUNTERS(UHMM_COPY_COUNTER)
#undef UHMM_COPY_COUNTER
    return out;
  }
};

}  // namespace uhmm::detail
