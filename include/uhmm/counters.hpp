// Always-on counters of a Context, read as one snapshot.
#pragma once

#include <cstdint>

// The counter list, written once: it makes both the public snapshot's fields
// and the library's atomic counters.
#define UHMM_COUNTERS(X)                                                                         \
  /* Migration, each way. */                                                                     \
  X(pages_to_device)                                                                             \
  X(bytes_to_device)                                                                             \
  X(pages_zero_filled_on_device) /* never-touched pages migrated without a copy */               \
  X(pages_to_host)                                                                               \
  X(bytes_to_host)                                                                               \
  X(compound_migrations) /* 2 MiB runs moved as one unit */                                      \
  X(copy_ns_to_device)   /* time spent in device copies (allocation included) to the device */   \
  X(copy_ns_to_host)     /* time spent in device copies back to host staging */                  \
  /* CPU faults serviced, by kind. */                                                            \
  X(faults_zero_fill)     /* first touch of never-populated pages */                             \
  X(faults_from_device)   /* a page brought back from a device (migrate_to_ram) */               \
  X(faults_write_protect) /* a store to a page while it was being migrated */                    \
  X(faults_parked)        /* faults that waited for a migration to end */                        \
  X(faults_spurious)      /* already resolved when read */                                       \
  X(fault_wakeups)        /* batches read by the fault service */                                \
  X(pages_fault_ahead)    /* neighbours brought back with a faulting page */                     \
  /* Thrashing (pages bouncing between host and device on CPU faults). */                        \
  X(thrashing_pages_detected) /* pages that started a cool-down */                               \
  X(thrashing_faults)         /* CPU faults on pages cooling down */                             \
  X(thrashing_not_prefetched) /* cooling neighbours left on the device by fault-ahead */         \
  X(thrashing_pages_pinned)   /* cooling pages a launch's kernel reached on the host, unmigrated */ \
  X(thrashing_throttles)      /* launches that waited for a cooling page's time on the host */   \
  /* Device pool. */                                                                             \
  X(device_pages_in_use)                                                                         \
  X(device_evictions) /* pages moved back by migrate_device_range (and eviction, which uses it) */ \
  X(device_eviction_chunks) /* chunks evicted to make room or shrink a pool */                   \
  X(device_eviction_bytes)  /* bytes those evictions moved back to host */                       \
  /* Failures. */                                                                                \
  X(alloc_failures) /* device pages that could not be allocated */                               \
  X(copy_failures)  /* copy batches that failed */                                               \
  X(pages_lost)     /* pages that could not come back to RAM (poisoned: SIGBUS on access) */         \
  /* The application's own madvise/munmap/mremap of managed memory. */                           \
  X(pages_discarded) /* device pages dropped because the application discarded or unmapped them */ \
  X(ranges_retired)  /* ranges the application unmapped entirely */                           \
  /* Advice and explicit control (Context::advise, prefetch, discard). */                        \
  X(advice_calls)            /* successful Context::advise calls */                              \
  X(advice_not_prefetched)   /* neighbours fault-ahead left on a device they prefer or are accessed by */ \
  X(advice_ranked_evictions) /* eviction rounds that ranked chunks by their pages' advice */     \
  X(pages_discarded_by_call) /* pages whose contents Context::discard dropped */               \
  X(pages_duplicated)        /* read-mostly pages copied to a device with their host copy kept */ \
  X(duplicates_collapsed)    /* Duplicated pages reduced to one copy (a write, eviction, unset) */ \
  /* Snapshots and interval notifiers (range_snapshot.hpp, interval_notifier.hpp). */             \
  X(pages_populated)        /* never-touched pages a snapshot made host pages (zero-filled) */    \
  X(notifier_invalidations) /* interval-notifier callbacks called */

namespace uhmm {

struct Counters {
#define UHMM_COUNTER_FIELD(name) std::uint64_t name = 0;
  UHMM_COUNTERS(UHMM_COUNTER_FIELD)
#undef UHMM_COUNTER_FIELD
};

}  // namespace uhmm
