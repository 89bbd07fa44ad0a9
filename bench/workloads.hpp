// The workloads uhmm-bench times; each sets up its own Context (cpu backend
// unless UHMM_BACKEND says otherwise) and checks the data it reads.
#pragma once

#include <cstddef>

#include "floors.hpp"

namespace uhmm::bench {

// Migration to the device and back of `bytes`, best of `rounds`, in GB/s each
// way. `compound`: the range is 2 MiB aligned and moves in 2 MiB units;
// otherwise it starts 4 KiB into a block, so every page moves on its own.
struct MigrateRates {
  double to_device_gbps = 0;
  double to_host_gbps = 0;
};
MigrateRates migrate_round_trip(std::size_t bytes, bool compound, int rounds);

// One CPU read fault on a device-resident page at a time (fault-ahead off),
// with the given fault mechanism (UHMM_FAULT_MODE's values; null: the options').
Latencies device_fault_latency(std::size_t faults, const char* fault_mode = nullptr);

// A sequential CPU scan of a device-resident range, in GB/s; with fault-ahead,
// `prefetch_threshold` is UHMM_PREFETCH_THRESHOLD (0: whole blocks).
double scan_gbps(std::size_t bytes, bool fault_ahead, unsigned prefetch_threshold = 0);

// `threads` threads reading device-resident pages in random order, each page
// once (fault-ahead off): faults per second over the whole run.
double random_fault_rate(std::size_t pages, unsigned threads);

// A fault storm: `threads` threads start together on device-resident pages
// (fault-ahead off). distinct: each its own pages; shared: every thread reads
// every page, in its own random order. Pages brought back per second.
double fault_storm_rate(std::size_t pages, unsigned threads, bool shared);

// Host memory uhmm keeps per 4 KiB page of a managed range (mirror table),
// from the resident anonymous memory a fully populated range adds.
double mirror_bytes_per_page(std::size_t range_bytes);

// A working set streamed through the device in 2 MiB windows, each migrated
// and rewritten by a kernel, with a pool `factor` times smaller (factor <= 1:
// the pool holds it all, the floor). In order or in a seeded random order. GB/s
// of working set processed, best of `rounds` timed passes.
double oversubscribed_gbps(std::size_t working_set, double factor, bool random, int rounds);

}  // namespace uhmm::bench
