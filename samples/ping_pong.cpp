// CPU <-> device ping-pong driven by faults: each round a kernel on the
// device increments every element (the launch migrates the pages there), then
// the CPU reads and increments every element in place — those accesses fault
// the pages back one block at a time. Nothing calls migrate_to_host: the
// back-and-forth is the fault path's work, which the counters show.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>

#include "sample_support.hpp"

int main(int argc, char** argv) {
  CLI::App app{"uhmm ping-pong: a device and the CPU take turns on one buffer, the CPU's turns through faults"};
  std::size_t mib = 8;
  unsigned rounds = 8;
  app.add_option("--mib", mib, "buffer size in MiB")->check(CLI::Range(1, 4096));
  app.add_option("--rounds", rounds, "device + CPU turns")->check(CLI::Range(1, 10000));
  CLI11_PARSE(app, argc, argv);

  try {
    using uhmm::samples::MiB;
    uhmm::Context ctx(uhmm::samples::options_with_pool(mib * MiB + 4 * MiB));
    const std::size_t n = mib * MiB / sizeof(std::uint64_t);
    fmt::print("ping-pong of {} MiB, {} rounds, on the {} backend\n", mib, rounds,
               ctx.device_info(ctx.device_owner()).backend);
    uhmm::Buffer<std::uint64_t> data(ctx, n);
    for (std::size_t i = 0; i < n; ++i) data[i] = i;  // value after r rounds: i + 2r

    std::size_t wrong = 0;
    double device_ms = 0, cpu_ms = 0;
    for (unsigned r = 0; r < rounds; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      ctx.launch(n, [](std::size_t i, uhmm::device_span<std::uint64_t> d) { d[i] += 1; }, data.span());
      const auto t1 = std::chrono::steady_clock::now();
      for (std::size_t i = 0; i < n; ++i) {  // the first access to each page faults it back
        wrong += data[i] != i + 2 * r + 1;
        data[i] += 1;
      }
      const auto t2 = std::chrono::steady_clock::now();
      device_ms += std::chrono::duration<double, std::milli>(t1 - t0).count();
      cpu_ms += std::chrono::duration<double, std::milli>(t2 - t1).count();
    }
    fmt::print("device turns {:.1f} ms, CPU turns (with faults) {:.1f} ms, per round\n", device_ms / rounds,
               cpu_ms / rounds);

    const uhmm::Counters c = ctx.counters();
    uhmm::samples::print_counters(c);
    // Every round moved the whole buffer out and (through faults) back.
    const std::uint64_t pages = data.range_bytes() / uhmm::kPageSize;
    const std::uint64_t by_faults = c.faults_from_device + c.pages_fault_ahead;
    if (c.pages_to_device < pages * rounds || by_faults < pages * rounds) {
      fmt::print(stderr, "\nFAILED: expected {} pages each way, counted {} to the device and {} back by faults\n",
                 pages * rounds, c.pages_to_device, by_faults);
      return 1;
    }
    return uhmm::samples::verdict(wrong, n * rounds, "values read by the CPU");
  } catch (const uhmm::Error& e) {
    fmt::print(stderr, "uhmm ping-pong: {}\n", e.what());
    return 2;
  }
}
