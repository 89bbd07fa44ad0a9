#include "startup_floors.hpp"

#include <atomic>
#include <exception>
#include <fmt/format.h>

#include "floors.hpp"

namespace uhmm::bench::micro {
namespace {

constexpr std::size_t kFloorFaults = 10000;  // about 40-80 ms each: a burst of load moves the mean less
StartupFloors g_floors;
std::atomic<bool> g_failed{false};

}  // namespace

void measure_startup_floors() {
  g_floors.memcpy_2mib_gbps = memcpy_gbps(std::size_t{2} << 20);
  benchmark::AddCustomContext("floor_memcpy_2MiB_GBps", fmt::format("{:.2f}", g_floors.memcpy_2mib_gbps));
  try {
    g_floors.bare_uffd_us = bare_userfaultfd_round_trip(kFloorFaults).mean_us;
    benchmark::AddCustomContext("floor_bare_uffd_us", fmt::format("{:.2f}", g_floors.bare_uffd_us));
  } catch (const std::exception& e) {
    // Userfaultfd refused here: the fault benchmark runs in signal mode and is
    // judged against the SIGSEGV floor instead.
    benchmark::AddCustomContext("floor_bare_uffd_us", fmt::format("unavailable ({})", e.what()));
  }
  g_floors.bare_sigsegv_us = bare_sigsegv_round_trip(kFloorFaults).mean_us;
  benchmark::AddCustomContext("floor_bare_sigsegv_us", fmt::format("{:.2f}", g_floors.bare_sigsegv_us));
}

const StartupFloors& startup_floors() noexcept { return g_floors; }

void fail(benchmark::State& state, const std::string& why) {
  g_failed = true;
  state.SkipWithError(why.c_str());
}

bool any_benchmark_failed() noexcept { return g_failed.load(); }

}  // namespace uhmm::bench::micro
