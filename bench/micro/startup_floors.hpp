// The floors the microbenchmarks are judged against, measured once when
// uhmm-microbench starts (with bench/floors.hpp, as uhmm-bench does), before
// any Context exists; each benchmark reports its ratio to one of them as a
// user counter (x_memcpy, x_bare_uffd, x_bare_sigsegv).
#pragma once

#include <string>

#include <benchmark/benchmark.h>

namespace uhmm::bench::micro {

struct StartupFloors {
  double memcpy_2mib_gbps = 0;  // memcpy of 2 MiB, best of 5
  double bare_uffd_us = 0;      // mean bare userfaultfd round trip; 0: userfaultfd refused
  double bare_sigsegv_us = 0;   // mean bare SIGSEGV + mprotect round trip
};

// Measures the floors (call once, before the benchmarks run) and adds them to
// Google Benchmark's context, so that they head the table and the JSON.
void measure_startup_floors();
const StartupFloors& startup_floors() noexcept;

// A benchmark that cannot do what its name says stops with the reason, and
// the run's exit status says so (Google Benchmark alone would exit 0).
void fail(benchmark::State& state, const std::string& why);
bool any_benchmark_failed() noexcept;

}  // namespace uhmm::bench::micro
