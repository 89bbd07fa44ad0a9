// Helpers shared by the core tests: contexts with explicit options, patterns
// that tell every page and word apart, residency summaries.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include "uhmm/uhmm.hpp"

namespace uhmm::test {

inline constexpr std::size_t MiB = std::size_t{1} << 20;

// The fault mode the suite runs in: UHMM_FAULT_MODE (scripts/test.sh
// --fault-mode=signal runs every test a second time with signal), else auto.
inline std::string test_fault_mode() {
  const char* mode = std::getenv("UHMM_FAULT_MODE");
  return mode != nullptr ? mode : "auto";
}

inline ContextOptions cpu_options(std::size_t pool_bytes = 64 * MiB, bool fault_ahead = true, unsigned devices = 1) {
  ContextOptions o;
  o.backend = "cpu";
  o.device_pool_bytes = pool_bytes;
  o.fault_ahead = fault_ahead;
  o.devices = devices;
  o.fault_mode = test_fault_mode();
  return o;
}

#if defined(UHMM_TEST_EMULATED_PLUGIN_DIR)
// A context on the GPU plugin built against the emulated runtime
// (tests/emulated/emulated_tests.cmake defines where it is).
inline ContextOptions emulated_options() {
  ContextOptions o;
  o.backend = "emulated";
  o.plugin_dir = UHMM_TEST_EMULATED_PLUGIN_DIR;
  o.device_pool_bytes = 64 * MiB;
  o.fault_mode = test_fault_mode();
  return o;
}
#endif

// TSan runs an asynchronous signal handler only at its own safe points (an
// intercepted call), with every signal blocked: there a handler cannot
// interrupt a thread waiting in a fault, and a fault inside one (signal mode:
// a SIGSEGV) kills the process. Tests of such handlers skip under it.
inline constexpr bool kTsanDefersSignalHandlers =
#if defined(__SANITIZE_THREAD__)
    true;
#else
    false;
#endif

// Managed arrays a test allocates, freed when it ends (declare it after the
// context it uses, so that it goes first).
class TestArrays {
 public:
  explicit TestArrays(Context& ctx) : ctx_(ctx) {}
  TestArrays(const TestArrays&) = delete;
  TestArrays& operator=(const TestArrays&) = delete;
  ~TestArrays() {
    for (void* p : ranges_) ctx_.free(p);
  }
  template <class T>
  std::span<T> make(std::size_t n) {
    auto* p = static_cast<T*>(ctx_.allocate(n * sizeof(T)));
    ranges_.push_back(p);
    return {p, n};
  }

 private:
  Context& ctx_;
  std::vector<void*> ranges_;
};

// A value unique to (seed, word index): a misplaced or stale page shows.
inline std::uint64_t pattern(std::uint64_t seed, std::size_t word) {
  std::uint64_t x = seed * 0x9e3779b97f4a7c15ull + word;
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ull;
  return x ^ (x >> 29);
}

inline void fill(void* p, std::size_t bytes, std::uint64_t seed) {
  auto* w = static_cast<std::uint64_t*>(p);
  for (std::size_t i = 0; i < bytes / 8; ++i) w[i] = pattern(seed, i);
}

// Index of the first word that differs from the pattern, or SIZE_MAX.
inline std::size_t first_mismatch(const void* p, std::size_t bytes, std::uint64_t seed) {
  const auto* w = static_cast<const std::uint64_t*>(p);
  for (std::size_t i = 0; i < bytes / 8; ++i)
    if (w[i] != pattern(seed, i)) return i;
  return SIZE_MAX;
}

inline std::size_t count(const std::vector<PageState>& pages, Residency r) {
  std::size_t n = 0;
  for (const auto& s : pages) n += s.residency == r;
  return n;
}

inline void expect_pattern(const void* p, std::size_t bytes, std::uint64_t seed) {
  const std::size_t bad = first_mismatch(p, bytes, seed);
  EXPECT_EQ(bad, SIZE_MAX) << "first wrong word " << bad << " (page " << bad * 8 / kPageSize << ")";
}

// The counters that differ between two snapshots, as "name: a -> b; ...".
inline std::string counter_diff(const Counters& before, const Counters& after) {
  std::string out;
#define UHMM_TEST_DIFF(name)   \
  if (before.name != after.name) \
    out += std::string(#name) + ": " + std::to_string(before.name) + " -> " + std::to_string(after.name) + "; ";
  UHMM_COUNTERS(UHMM_TEST_DIFF)
#undef UHMM_TEST_DIFF
  return out;
}

}  // namespace uhmm::test
