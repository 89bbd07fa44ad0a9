// Vector add, c = a + b, the "hello world" of device computing on managed
// memory: the inputs are written by the CPU, the kernel runs on a device
// (Context::launch migrates every span there first), and the CPU reads c back
// through faults. Checks every element and the counters that show the moves.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "sample_support.hpp"

int main(int argc, char** argv) {
  CLI::App app{"uhmm vector add: c = a + b on a device, checked on the CPU"};
  std::size_t n = std::size_t{1} << 22;
  app.add_option("-n,--elements", n, "elements per vector")->check(CLI::Range(std::size_t{1}, std::size_t{1} << 30));
  CLI11_PARSE(app, argc, argv);

  using uhmm::samples::MiB;
  try {
    uhmm::Context ctx(uhmm::samples::options_with_pool(3 * n * sizeof(std::uint32_t) + 6 * MiB));
    fmt::print("vector add of {} elements on the {} backend\n", n, ctx.device_info(ctx.device_owner()).backend);

    uhmm::Buffer<std::uint32_t> a(ctx, n), b(ctx, n), c(ctx, n);
    for (std::size_t i = 0; i < n; ++i) {
      a[i] = static_cast<std::uint32_t>(i);
      b[i] = static_cast<std::uint32_t>(3 * i + 7);
    }
    ctx.launch(
        n,
        [](std::size_t i, uhmm::device_span<const std::uint32_t> x, uhmm::device_span<const std::uint32_t> y,
           uhmm::device_span<std::uint32_t> out) { out[i] = x[i] + y[i]; },
        std::span<const std::uint32_t>(a.span()), std::span<const std::uint32_t>(b.span()), c.span());

    std::size_t wrong = 0;
    for (std::size_t i = 0; i < n; ++i)  // faults bring c's pages back
      wrong += c[i] != static_cast<std::uint32_t>(4 * i + 7);

    const uhmm::Counters counters = ctx.counters();
    uhmm::samples::print_counters(counters);
    // Every page of the three vectors went to the device, and c's came back.
    const std::size_t pages = c.range_bytes() / uhmm::kPageSize;
    if (counters.pages_to_device < 3 * pages || counters.pages_to_host < pages) {
      fmt::print(stderr, "\nFAILED: expected >= {} pages to the device and >= {} back, counted {} and {}\n",
                 3 * pages, pages, counters.pages_to_device, counters.pages_to_host);
      return 1;
    }
    return uhmm::samples::verdict(wrong, n, "sums");
  } catch (const uhmm::Error& e) {
    fmt::print(stderr, "uhmm vector add: {}\n", e.what());
    return 2;
  }
}
