// Latency histograms of a Context, read as one snapshot: CPU faults by kind
// and migrations each way, in log2 buckets of nanoseconds.
#pragma once

#include <array>
#include <cstdint>

// The histogram list, written once: it makes the public snapshot's fields, the
// library's atomic histograms and the UHMM_STATS printout.
#define UHMM_LATENCIES(X)                                                                     \
  X(fault_zero_fill)      /* first touch: fault read -> thread woken */                       \
  X(fault_from_device)    /* page brought back from a device: fault read -> thread woken */   \
  X(fault_write_protect)  /* store during a migration, after it ended: read -> woken */       \
  X(migrate_to_device)    /* one migrate_to_device call (also each launch's migration) */     \
  X(migrate_to_host)      /* one block brought back (by a fault, migrate_to_host, eviction) */

namespace uhmm {

// Bucket b counts samples of [2^b, 2^(b+1)) ns (bucket 0 also holds 0 ns); the
// last bucket holds everything from 2^(kBuckets-1) ns (~275 s) up.
struct LatencyHistogram {
  static constexpr unsigned kBuckets = 39;
  std::array<std::uint64_t, kBuckets> buckets{};
  std::uint64_t total_ns = 0;  // sum of every sample, for the mean

  std::uint64_t count() const noexcept {
    std::uint64_t n = 0;
    for (std::uint64_t b : buckets) n += b;
    return n;
  }
  double mean_ns() const noexcept {
    const std::uint64_t n = count();
    return n == 0 ? 0.0 : static_cast<double>(total_ns) / static_cast<double>(n);
  }
  // The q-quantile (0 < q <= 1), as the upper edge of the bucket that holds
  // it: an over-estimate by less than 2x. 0 when the histogram is empty.
  double percentile_ns(double q) const noexcept {
    const std::uint64_t n = count();
    if (n == 0) return 0.0;
    const double rank = q * static_cast<double>(n);
    std::uint64_t seen = 0;
    for (unsigned b = 0; b < kBuckets; ++b) {
      seen += buckets[b];
      if (static_cast<double>(seen) >= rank && buckets[b] != 0) return static_cast<double>(std::uint64_t{2} << b);
    }
    return static_cast<double>(std::uint64_t{2} << (kBuckets - 1));
  }
};

struct Latencies {
#define UHMM_LATENCY_FIELD(name) LatencyHistogram name;
  UHMM_LATENCIES(UHMM_LATENCY_FIELD)
#undef UHMM_LATENCY_FIELD
};

}  // namespace uhmm
