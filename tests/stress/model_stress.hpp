// A model-based randomized stress test of a uhmm::Context, shared by
// tests/stress_test.cpp (seeded, bounded) and tools/uhmm-soak (hours).
//
// Several threads run random operations on a few shared managed ranges: CPU
// reads and writes, migrations both ways (synchronous and on streams, to any
// device), kernels that rewrite words on the device through device_span,
// pin/unpin, evictions of pool windows (migrate_device_range), frees and
// re-allocations, advice (preferred location, accessed-by), prefetches,
// discards (every word of the span becomes zero in the model), ranges
// re-allocated into a hole the application unmapped in another range, the
// application's mremap and MADV_FREE (userfaultfd mode), and (optionally)
// injected pool and copy failures.
//
// How predictions stay exact under concurrency:
//   * Values. Thread t owns the 8-byte words w with w % threads == t of every
//     range; only t writes them (on the CPU, or through a kernel it launches),
//     so t's shadow copy predicts every value t reads, exactly, wherever the
//     page happens to be. A kernel only reads and rewrites its caller's words.
//     A launch holds every page of its span before its kernel runs (or fails
//     first, with out_of_memory or an injected failure, having run nothing):
//     a kernel that finds a page not resident is a mismatch.
//   * Page-level operations (migrations, launches, pin/unpin, evictions) are
//     done by any thread on any range. Their results are checked for
//     consistency (the four counts add up to the pages, no failure without
//     injection or oversubscription, failures carry the right status).
//   * Exact per-page migration results. A "checked migration" takes its range
//     exclusively (the slot lock) and excludes evictions (the eviction gate),
//     so nothing else can move its pages: it predicts every page's outcome from
//     a residency snapshot and checks the counts and every page's state after,
//     and then every word of the span (all threads' words: it holds the range).
//     One allowance, with several threads only: a fault event that the fault
//     service read (and parked) before its thread was woken by someone else's
//     unlock is re-run later, when that thread has long moved on. It then
//     locks its page for a moment (a migration reports it skipped) or, if the
//     page is on a device, brings it back to the host (with fault-ahead, every
//     device page of its 2 MiB block) although nobody touches the range. A
//     checked migration accepts exactly these deviations (a page locked, or
//     moved from a device to the host) and counts them
//     (StressReport::stale_fault_effects); anything else fails.
//   * Frees and re-allocations take the slot exclusively too; a re-allocated
//     range must read as zeros (invariant 4), on the device and on the CPU.
//   * Injected copy failures are one batch long (copy_fail_batches = 1) and are
//     armed only while no CPU access is in flight (the injection gate), so the
//     fault path's one retry always succeeds: a page is never poisoned, and
//     every value read stays exact (invariant 3).
//   * When all threads have stopped, no page may be LOCKED, the device pages
//     counted in the mirror must equal the pools' pages in use, every word of
//     every range must equal the model, and freeing everything empties the pools.
//
// The operation log: each thread appends compact records (op, range, pages,
// results) to a ring buffer; a report with a mismatch prints the seed, the
// config and the last records of every thread. Replay: the same config and
// seed give every thread the same operation sequence. With one thread the run
// is deterministic (the same log, record for record); with several, the
// interleaving is the scheduler's, so a replay reproduces a failure only with
// some probability — rerun it a few times, or narrow it down with threads = 1.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "uhmm/counters.hpp"

namespace uhmm::stress {

struct StressConfig {
  std::uint64_t seed = 1;
  unsigned threads = 4;
  // Each thread stops after ops_per_thread operations or after duration_s
  // seconds, whichever comes first (0: no such limit; at least one is needed).
  std::uint64_t ops_per_thread = 2000;
  double duration_s = 0;
  unsigned ranges = 4;                             // range slots shared by all threads
  std::size_t range_pages = 1024;                  // largest range (re-allocations pick 1..range_pages)
  std::size_t pool_bytes = std::size_t{64} << 20;  // device pool, per device
  unsigned devices = 1;                            // devices of the backend
  // ContextOptions::backend and plugin_dir ("emulated": the GPU plugin on the
  // emulated runtime; host kernels and pins then drop out of the mix, as a
  // GPU runs neither).
  std::string backend = "cpu";
  std::string plugin_dir;
  bool fault_ahead = true;
  bool inject_failures = false;
  bool evict = true;  // ContextOptions::evict: a full pool evicts its least recently used chunks
  // Thrashing detected after 2 bounces within a second, cooling 200 ms: launches
  // then pin pages on the host and their kernels reach them there.
  bool eager_thrashing = false;
  // Op::Mremap, with more than one thread (userfaultfd mode), neither
  // oversubscribed nor with injected failures (a failed copy loses a moved
  // page, as it must). stress_test turns it on (UHMM_STRESS_MREMAP=0: off).
  bool mremap = false;
  std::size_t log_records = 64;  // records kept per thread (ring buffer)
  // A thread stuck this long in one operation is reported (config and logs on
  // stderr) and the process exits with status 3: a hang names its operation.
  double stall_timeout_s = 120;

  // Total pages of the largest ranges exceed a device pool: migrations to a
  // device may then fail with out_of_memory.
  bool oversubscribed() const noexcept;
  std::string describe() const;
};

enum class Op : std::uint8_t {
  CpuWrite,
  CpuRead,
  ToDevice,
  ToHost,
  ToDeviceAsync,
  ToHostAsync,
  Launch,
  Pin,
  Unpin,
  Evict,
  CheckedMigrate,
  Realloc,
  Inject,
  Residency,
  Advise,    // preferred location / accessed-by on a span (read-mostly is covered by advice_test)
  Prefetch,  // Context::prefetch to the host or a device
  Discard,   // Context::discard of a span (takes its range exclusively): the model's words become zero
  // A launch (launch_device) whose body, while the launch holds its pages,
  // does what must not take them: a CPU read of a neighbour in the same 2 MiB
  // block (fault-ahead brings the block home), an eviction of the whole pool
  // (migrate_device_range, on another thread), a migrate_to_host of the span.
  LaunchVsFaultAhead,
  LaunchVsEviction,
  LaunchVsToHost,
  // The application munmaps the middle of a fresh range (outer) and the slot's
  // range is re-allocated into the hole (userfaultfd mode only: signal mode
  // follows no munmap). The hole fails calls, the new range reads zeros, the
  // outer range's live words keep their values: read back later (faults next
  // to the hole while other threads use the range inside it), and when the
  // slot is re-allocated.
  RefillHole,
  // The application's own mapping changes (userfaultfd mode only; each takes
  // its range exclusively): an mremap of part or all of the range (the moved
  // words must all be at the new place, ordinary memory; the slot then gets a
  // new range), and MADV_FREE of a span followed by stores to every word of it
  // (they must stay, wherever the pages go next).
  Mremap,
  FreeThenWrite,
  kCount
};
inline constexpr std::size_t kOpKinds = static_cast<std::size_t>(Op::kCount);
const char* to_string(Op op) noexcept;

// One operation as the log keeps it (48 bytes). `a`..`d` are its results:
// for migrations migrated/already/skipped/failed, for CPU accesses words and
// mismatches, for launches pages run/pages not resident; see format().
struct OpRecord {
  std::uint64_t seq = 0;  // the thread's operation number
  Op op = Op::CpuWrite;
  std::uint8_t slot = 0;
  std::uint8_t device = 0;  // owner, or the checked migration's kind
  std::uint8_t flags = 0;   // op-specific variant
  std::uint32_t generation = 0;  // the slot's allocation number
  std::uint32_t first = 0;       // first page (evictions: first device page)
  std::uint32_t count = 0;       // pages
  std::uint32_t pad = 0;
  std::int32_t a = 0, b = 0, c = 0, d = 0;
  friend bool operator==(const OpRecord&, const OpRecord&) = default;
  std::string format() const;
};

struct StressReport {
  std::array<std::uint64_t, kOpKinds> ops{};  // operations done, by kind
  std::uint64_t ops_total = 0;
  // Checked migrations whose exact prediction a stale fault event upset (a
  // page locked for a moment, or brought back to the host); allowed with
  // several threads only (see the model above).
  std::uint64_t stale_fault_effects = 0;
  Counters counters;              // the context's counters at the end of the run
  std::uint64_t faults_serviced = 0;  // zero-fill + from-device + write-protect faults
  std::uint64_t mismatches = 0;
  std::string first_mismatch;
  std::vector<std::vector<OpRecord>> log;  // per thread, oldest first (at most log_records each)
  double seconds = 0;

  bool ok() const noexcept { return mismatches == 0; }
  // One line: ops by kind, faults, time.
  std::string summary() const;
  // The seed, the config, the first mismatch and the last records of every thread.
  std::string describe(const StressConfig& config) const;
};

// Runs one round: a fresh Context, `threads` threads, the quiescent checks.
// Never throws for a mismatch (it is in the report); throws uhmm::Error only if
// the context cannot be created.
StressReport run_stress(const StressConfig& config);

// UHMM_STRESS_SCALE (a positive number) if set; otherwise 0.2 in sanitizer
// builds, 1 in plain ones. Tests multiply their operation counts by it.
double stress_scale();

}  // namespace uhmm::stress
