// What every sample shares: a context sized for the sample from the UHMM_*
// environment, the counter printout, and the verdict line with its exit code.
#pragma once

#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <utility>

#include "uhmm/uhmm.hpp"

namespace uhmm::samples {

inline constexpr std::size_t MiB = std::size_t{1} << 20;

// Options from the environment, with a pool at least `pool_bytes` large: a
// sample must fit in the device, eviction is another sample's subject.
inline ContextOptions options_with_pool(std::size_t pool_bytes) {
  ContextOptions o = ContextOptions::from_environment();
  pool_bytes = (pool_bytes + kChunkSize - 1) & ~(kChunkSize - 1);
  if (o.device_pool_bytes < pool_bytes) o.device_pool_bytes = pool_bytes;
  return o;
}

inline void print_counters(const Counters& c) {
  const std::pair<const char*, std::uint64_t> rows[] = {
#define UHMM_SAMPLE_ROW(name) {#name, c.name},
      UHMM_COUNTERS(UHMM_SAMPLE_ROW)
#undef UHMM_SAMPLE_ROW
  };
  fmt::print("\ncounters (zeros left out)\n");
  for (const auto& [name, value] : rows)
    if (value != 0) fmt::print("  {:<28} {:>14}\n", name, value);
}

// Prints the verdict; the process exit code: 0 when nothing was wrong.
inline int verdict(std::size_t wrong, std::size_t checked, const char* what) {
  if (wrong != 0) {
    fmt::print(stderr, "\nFAILED: {} of {} {} are wrong\n", wrong, checked, what);
    return 1;
  }
  fmt::print("\nOK: all {} {} checked\n", checked, what);
  return 0;
}

}  // namespace uhmm::samples
