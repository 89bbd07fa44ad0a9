// ContextOptions: how a Context is made (backend, pool, fault handling,
// policies), each with the UHMM_* environment variable that sets it.
#pragma once

#include <cstddef>
#include <string>

#include "uhmm/export.hpp"

namespace uhmm {

// Thrashing: a page that comes back to the host on CPU faults at least
// `bounces` times within `window_ms` thrashes; for `cooldown_ms` from then it
// is not brought back as a fault's neighbour (fault-ahead), and a launch that
// declares it either leaves it pinned on the host, where the device's kernels
// reach host memory (`pin`), or waits until it has been on the host for
// `throttle_ms` (docs/DESIGN.md, "Thrashing").
struct ThrashingOptions {
  bool enabled = true;         // UHMM_THRASHING
  unsigned bounces = 8;        // UHMM_THRASHING_BOUNCES (2-65535)
  unsigned window_ms = 50;     // UHMM_THRASHING_WINDOW_MS (1-60000)
  unsigned cooldown_ms = 500;  // UHMM_THRASHING_COOLDOWN_MS (1-600000)
  bool pin = true;             // UHMM_THRASHING_PIN
  unsigned throttle_ms = 2;    // UHMM_THRASHING_THROTTLE_MS (0-1000; 0: no throttling)
};

struct UHMM_EXPORT ContextOptions {
  std::string backend = "auto";       // UHMM_BACKEND: auto | cpu | cuda | hip
  std::size_t device_pool_bytes = std::size_t{256} << 20;  // UHMM_DEVICE_POOL, per device
  unsigned device_pool_percent = 0;   // UHMM_DEVICE_POOL=N%: N% of free device memory instead (0: bytes)
  unsigned devices = 1;               // UHMM_DEVICES: cpu devices to emulate / most GPUs to use
  std::string plugin_dir;             // UHMM_PLUGIN_DIR: where GPU backend plugins are (empty: beside libuhmm)
  bool fault_ahead = true;            // UHMM_FAULT_AHEAD: bring a faulting page's block neighbours back too
  // UHMM_PREFETCH_THRESHOLD (percent, 0-100): with fault-ahead, how much of its
  // block a CPU fault brings back: the largest aligned power-of-two part of
  // the block in which more than this share of pages is on the host or
  // faulting (a density prefetch as NVIDIA UVM's, which uses 51). 0: the whole
  // block; 100: the faulting page alone.
  unsigned prefetch_threshold = 0;
  ThrashingOptions thrashing;         // UHMM_THRASHING*
  unsigned fault_spin_us = 0;         // UHMM_FAULT_SPIN_US: fault service polls this long before sleeping
  unsigned cpu_copy_threads = 1;      // UHMM_CPU_COPY_THREADS: cpu-backend workers per stream
  bool print_stats = false;           // UHMM_STATS: print the counters to stderr when the context ends
  // UHMM_EVICT: a migration to a full device pool evicts the least recently
  // used device chunks back to host (oversubscription). Off: the pages that do
  // not fit fail with Errc::out_of_memory and stay where they are.
  bool evict = true;
  std::string trace_path;             // UHMM_TRACE: write a Chrome/Perfetto trace here (empty: none)
  // UHMM_FAULT_MODE: how CPU faults are caught. auto: userfaultfd, else (when
  // refused) SIGSEGV + mprotect with a log line; userfaultfd | signal: forced.
  std::string fault_mode = "auto";

  // Defaults overridden by the UHMM_* environment variables above; throws
  // uhmm::Error naming the variable when a value is malformed.
  static ContextOptions from_environment();
};

}  // namespace uhmm
