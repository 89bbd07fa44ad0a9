// The managed-memory baseline that `uhmm-bench --gpu` compares uhmm with: the
// vendor's own managed memory (cudaMallocManaged / hipMallocManaged plus
// prefetch) on the same device, measured by a small library built once per
// vendor and loaded with dlopen, so that uhmm-bench, like libuhmm, links no GPU
// runtime. A plain C interface: the library and uhmm-bench are built together,
// and the version guards against a stale library found on the search path.
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" {

inline constexpr std::uint32_t kManagedBaselineAbi = 1;
inline constexpr const char* kManagedBaselineEntry = "uhmm_managed_baseline_run";

struct UhmmManagedRequest {
  std::uint32_t abi = kManagedBaselineAbi;
  std::int32_t device = 0;        // the runtime's device index
  std::uint64_t bytes = 0;        // one managed allocation of this size
  std::uint32_t rounds = 1;       // best of this many round trips
  std::uint32_t fault_pages = 0;  // CPU faults timed after a prefetch to the device (0: none)
};

struct UhmmManagedResult {
  double prefetch_to_device_gbps = 0;  // managed memory, prefetch to the device
  double prefetch_to_host_gbps = 0;    // managed memory, prefetch back to the CPU
  double dma_to_device_gbps = 0;       // the floor: cudaMemcpy/hipMemcpy of pageable host memory to the device
  double dma_to_host_gbps = 0;         // ... and back
  double cpu_fault_p50_us = 0;         // a CPU read of one device-resident managed page
  double cpu_fault_p99_us = 0;
  char device_name[256] = {};
  char error[512] = {};  // set when the call returns nonzero: the failing call, the runtime's error name and text
};

// 0 on success; otherwise `result->error` says what failed. Never throws.
using UhmmManagedBaselineFn = int (*)(const UhmmManagedRequest* request, UhmmManagedResult* result);

}  // extern "C"
