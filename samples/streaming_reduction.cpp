// Streaming reduction over data larger than the device pool (oversubscription).
// The pool is sized to data / --pool-ratio; a kernel walks the data window by
// window, summing each slice of the window into a small managed array and
// updating the window in place (v = 3v + 1). Launching a window migrates it to
// the device, and once the pool is full uhmm evicts the least recently used
// chunks (earlier windows, written on the device) back to host RAM. The totals
// are checked against sums computed on the CPU in 64-bit integers, then every
// element is checked on the CPU: evicted pages came back through eviction, the
// ones still on the device come back through faults. Fails unless evictions
// happened when the data is larger than the pool.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <vector>

#include "sample_support.hpp"

namespace {

constexpr std::uint32_t kPeriod = 1000;                 // element i starts as i % kPeriod
constexpr std::size_t kSliceElems = (64 * 1024) / 4;    // one partial sum per 64 KiB of a window

// The in-place update the kernel applies to every element, once per pass.
UHMM_HOST_DEVICE inline std::uint32_t step(std::uint32_t v) { return 3u * v + 1u; }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"uhmm streaming reduction: sum and update data larger than the device pool, window by window"};
  std::size_t mib = 256;
  double ratio = 2.0;
  std::size_t window_mib = 4;
  unsigned passes = 2;
  app.add_option("--mib", mib, "data size in MiB (uint32 elements)")->check(CLI::Range(std::size_t{1}, std::size_t{16384}));
  app.add_option("--pool-ratio", ratio, "data size / device pool size (pool rounded up to 2 MiB chunks)")
      ->check(CLI::Range(1.0, 1024.0));
  app.add_option("--window-mib", window_mib, "bytes one kernel launch covers, in MiB")
      ->check(CLI::Range(std::size_t{1}, std::size_t{16384}));
  app.add_option("--passes", passes, "passes over the data (each sums, then updates every element)")
      ->check(CLI::Range(1u, 16u));
  CLI11_PARSE(app, argc, argv);

  using uhmm::samples::MiB;
  const std::size_t data_bytes = mib * MiB;
  const std::size_t n = data_bytes / sizeof(std::uint32_t);
  // Exactly data / ratio, rounded up to whole chunks (options_with_pool would
  // only ever grow the pool from the environment's).
  std::size_t pool_bytes = static_cast<std::size_t>(std::ceil(static_cast<double>(data_bytes) / ratio));
  pool_bytes = std::max(uhmm::kChunkSize, (pool_bytes + uhmm::kChunkSize - 1) & ~(uhmm::kChunkSize - 1));
  const std::size_t window_elems = std::min(n, window_mib * MiB / sizeof(std::uint32_t));
  // A launch needs its window and the partials' page on the device at once.
  if (window_elems * sizeof(std::uint32_t) + uhmm::kChunkSize > pool_bytes) {
    fmt::print(stderr, "uhmm streaming reduction: a {} MiB window and its partial sums do not fit in a {} MiB pool\n",
               window_mib, pool_bytes / MiB);
    return 2;
  }
  const std::size_t slices_per_window = (window_elems + kSliceElems - 1) / kSliceElems;
  const std::size_t windows = (n + window_elems - 1) / window_elems;

  try {
    uhmm::ContextOptions options = uhmm::ContextOptions::from_environment();
    options.device_pool_bytes = pool_bytes;
    options.device_pool_percent = 0;
    options.evict = true;  // the subject of this sample
    uhmm::Context ctx(options);
    fmt::print("streaming reduction on the {} backend: {} MiB of data, {} MiB device pool ({:.2f}x), "
               "{} windows of {} MiB, {} passes\n",
               ctx.device_info(ctx.device_owner()).backend, mib, pool_bytes / MiB,
               static_cast<double>(data_bytes) / static_cast<double>(pool_bytes), windows,
               window_elems * sizeof(std::uint32_t) / MiB, passes);

    uhmm::Buffer<std::uint32_t> data(ctx, n);
    uhmm::Buffer<std::uint64_t> partials(ctx, slices_per_window);
    for (std::size_t i = 0; i < n; ++i) data[i] = static_cast<std::uint32_t>(i % kPeriod);

    // Expected sums, from how often each starting value occurs: no second copy
    // of the data. expect[p] is the sum pass p reads; value[v] is what v has
    // become after the passes so far.
    std::array<std::uint64_t, kPeriod> count{};
    std::array<std::uint32_t, kPeriod> value{};
    for (std::uint32_t v = 0; v < kPeriod; ++v) {
      count[v] = n / kPeriod + (v < n % kPeriod ? 1 : 0);
      value[v] = v;
    }
    std::vector<std::uint64_t> expect(passes);
    for (unsigned p = 0; p < passes; ++p) {
      for (std::uint32_t v = 0; v < kPeriod; ++v) {
        expect[p] += count[v] * value[v];
        value[v] = step(value[v]);
      }
    }

    std::size_t wrong_sums = 0;
    for (unsigned p = 0; p < passes; ++p) {
      const auto t0 = std::chrono::steady_clock::now();
      std::uint64_t total = 0;
      for (std::size_t first = 0; first < n; first += window_elems) {
        const std::size_t len = std::min(window_elems, n - first);
        const std::size_t slices = (len + kSliceElems - 1) / kSliceElems;
        ctx.launch(
            slices,
            [len](std::size_t s, uhmm::device_span<std::uint32_t> w, uhmm::device_span<std::uint64_t> part) {
              const std::size_t end = std::min(len, (s + 1) * kSliceElems);
              std::uint64_t acc = 0;
              for (std::size_t j = s * kSliceElems; j < end; ++j) {
                const std::uint32_t v = w[j];
                acc += v;
                w[j] = step(v);
              }
              part[s] = acc;
            },
            data.span().subspan(first, len), partials.span().first(slices));
        for (std::size_t s = 0; s < slices; ++s) total += partials[s];  // the partials' page faults back
      }
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const bool ok = total == expect[p];
      wrong_sums += ok ? 0 : 1;
      fmt::print("pass {}: sum {} (expected {}) {}, {:.1f} ms, {:.2f} GB/s streamed\n", p + 1, total, expect[p],
                 ok ? "ok" : "WRONG", s * 1e3, static_cast<double>(data_bytes) / s / 1e9);
    }

    // Every element on the CPU: what is still on the device faults back.
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < n; ++i) wrong += data[i] != value[i % kPeriod];

    const uhmm::Counters counters = ctx.counters();
    uhmm::samples::print_counters(counters);
    if (wrong_sums != 0) {
      fmt::print(stderr, "\nFAILED: {} of {} pass sums are wrong\n", wrong_sums, passes);
      return 1;
    }
    if (pool_bytes < data.range_bytes() && counters.device_evictions == 0) {
      fmt::print(stderr, "\nFAILED: {} MiB of data streamed through a {} MiB pool without a single eviction\n", mib,
                 pool_bytes / MiB);
      return 1;
    }
    fmt::print("\n{} pages ({} MiB) evicted in {} chunks; {} pages faulted back\n", counters.device_evictions,
               counters.device_eviction_bytes / MiB, counters.device_eviction_chunks, counters.faults_from_device);
    return uhmm::samples::verdict(wrong, n, "elements");
  } catch (const uhmm::Error& e) {
    fmt::print(stderr, "uhmm streaming reduction: {}\n", e.what());
    return 2;
  }
}
