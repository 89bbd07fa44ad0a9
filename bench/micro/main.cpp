// uhmm-microbench: Google Benchmark suites of uhmm's hot paths on the
// backend UHMM_BACKEND selects (cpu by default), each with its ratio to a
// floor measured at start-up. Google Benchmark's flags apply
// (--benchmark_filter, --benchmark_min_time, --benchmark_format=json, ...).
#include <benchmark/benchmark.h>

#include <exception>
#include <fmt/format.h>

#include "startup_floors.hpp"

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  try {
    uhmm::bench::micro::measure_startup_floors();
  } catch (const std::exception& e) {
    fmt::print(stderr, "uhmm-microbench: measuring the floors failed: {}\n", e.what());
    return 1;
  }
  try {
    benchmark::RunSpecifiedBenchmarks();
  } catch (const std::exception& e) {
    // A uhmm::Error from a call that should not fail: the run stops there.
    fmt::print(stderr, "uhmm-microbench: {}\n", e.what());
    return 1;
  }
  benchmark::Shutdown();
  if (uhmm::bench::micro::any_benchmark_failed()) {
    fmt::print(stderr, "uhmm-microbench: a benchmark failed (see its error above)\n");
    return 1;
  }
  return 0;
}
