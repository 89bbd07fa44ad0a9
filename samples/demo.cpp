// The demo: managed memory end to end. Fill a buffer on the CPU, migrate it to
// a device, run a kernel over it there, read the results back on the CPU (the
// pages fault back on access), check every value and print the counters.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <cstdio>

#include "sample_support.hpp"
#include "uhmm/uhmm.hpp"

int main(int argc, char** argv) {
  CLI::App app{"uhmm demo: y = a*x + y on managed memory, computed on a device, checked on the CPU"};
  std::size_t mib = 64;
  bool fault_ahead = true;
  app.add_option("--mib", mib, "size of each of the two buffers, in MiB")->check(CLI::Range(1, 4096));
  app.add_flag("!--no-fault-ahead", fault_ahead, "bring back only the faulting page, not its 2 MiB block");
  CLI11_PARSE(app, argc, argv);

  try {
    uhmm::ContextOptions options = uhmm::ContextOptions::from_environment();
    options.fault_ahead = fault_ahead;
    if (options.device_pool_bytes < 2 * mib * (std::size_t{1} << 20))
      options.device_pool_bytes = 2 * mib * (std::size_t{1} << 20);
    uhmm::Context ctx(options);
    const uhmm::DeviceInfo dev = ctx.device_info(ctx.device_owner(0));
    fmt::print("uhmm demo on the {} backend ({}), {} MiB per buffer\n", dev.backend, dev.name, mib);

    const std::size_t n = mib * (std::size_t{1} << 20) / sizeof(float);
    uhmm::Buffer<float> x(ctx, n), y(ctx, n);
    for (std::size_t i = 0; i < n; ++i) {  // plain CPU stores; first touch maps zeros
      x[i] = static_cast<float>(i % 1000);
      y[i] = 1.0f;
    }

    const auto t0 = std::chrono::steady_clock::now();
    const uhmm::MigrationResult mx = x.to_device(), my = y.to_device();
    const auto t1 = std::chrono::steady_clock::now();
    fmt::print("migrated {} + {} pages to the device in {:.1f} ms\n", mx.migrated, my.migrated,
               std::chrono::duration<double, std::milli>(t1 - t0).count());

    const float a = 2.0f;
    ctx.launch(
        n, [a](std::size_t i, uhmm::device_span<float> xs, uhmm::device_span<float> ys) { ys[i] = a * xs[i] + ys[i]; },
        x.span(), y.span());
    const auto t2 = std::chrono::steady_clock::now();

    std::size_t wrong = 0;
    for (std::size_t i = 0; i < n; ++i)  // these reads fault y's pages back from the device
      wrong += y[i] != a * static_cast<float>(i % 1000) + 1.0f;
    const auto t3 = std::chrono::steady_clock::now();
    fmt::print("kernel {:.1f} ms, CPU read-back through faults {:.1f} ms\n",
               std::chrono::duration<double, std::milli>(t2 - t1).count(),
               std::chrono::duration<double, std::milli>(t3 - t2).count());

    uhmm::samples::print_counters(ctx.counters());
    return uhmm::samples::verdict(wrong, n, "values");
  } catch (const uhmm::Error& e) {
    fmt::print(stderr, "uhmm demo: {}\n", e.what());
    return 2;
  }
}
