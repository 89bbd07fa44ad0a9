// The library's side of uhmm::LatencyHistogram: lock-free log2 buckets.
// Recording costs one clock read (by the caller) and two relaxed atomic adds
// (the bucket and the running total); a snapshot sums nothing under a lock.
#pragma once

#include <atomic>
#include <bit>
#include <chrono>
#include <cstdint>

#include "uhmm/latency.hpp"

namespace uhmm::detail {

// Monotonic nanoseconds: the one clock histograms and traces use.
inline std::uint64_t now_ns() noexcept {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
}

class AtomicLatencyHistogram {
 public:
  static unsigned bucket_of(std::uint64_t ns) noexcept {
    const unsigned b = ns == 0 ? 0u : static_cast<unsigned>(std::bit_width(ns)) - 1u;
    return b < LatencyHistogram::kBuckets ? b : LatencyHistogram::kBuckets - 1;
  }

  void record(std::uint64_t ns) noexcept {
    buckets_[bucket_of(ns)].fetch_add(1, std::memory_order_relaxed);
    total_ns_.fetch_add(ns, std::memory_order_relaxed);
  }

  LatencyHistogram snapshot() const noexcept {
    LatencyHistogram out;
    for (unsigned b = 0; b < LatencyHistogram::kBuckets; ++b) out.buckets[b] = buckets_[b].load(std::memory_order_relaxed);
    out.total_ns = total_ns_.load(std::memory_order_relaxed);
    return out;
  }

 private:
  std::atomic<std::uint64_t> buckets_[LatencyHistogram::kBuckets] = {};
  std::atomic<std::uint64_t> total_ns_{0};
};

struct AtomicLatencies {
#define UHMM_ATOMIC_LATENCY(name) AtomicLatencyHistogram name;
  UHMM_LATENCIES(UHMM_ATOMIC_LATENCY)
#undef UHMM_ATOMIC_LATENCY

  Latencies snapshot() const noexcept {
    Latencies out;
#define UHMM_COPY_LATENCY(name) out.name = name.snapshot();
    UHMM_LATENCIES(UHMM_COPY_LATENCY)
#undef UHMM_COPY_LATENCY
    return out;
  }
};

}  // namespace uhmm::detail
