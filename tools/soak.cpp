// uhmm-soak: runs the model-based stress test (tests/stress/model_stress.hpp)
// round after round, each with a fresh Context and a new seed, until the time
// is up. Prints progress about every 10 s and a summary at the end; on the
// first mismatch prints the full report (seed, config, every thread's last
// operations) and exits with status 1.
//
//   uhmm-soak --seconds 3600 --threads 4 --inject
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <exception>

#include "stress/model_stress.hpp"
#include "uhmm/error.hpp"

namespace {

std::uint64_t next_seed(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

int main(int argc, char** argv) {
  using Clock = std::chrono::steady_clock;
  double seconds = 60;
  unsigned threads = 4;
  std::uint64_t seed = 0;
  bool inject = false;
  std::size_t pool_mib = 64;
  bool fault_ahead = true;
  unsigned ranges = 4;
  std::size_t range_pages = 1024;
  unsigned devices = 1;
  double round_seconds = 5;

  CLI::App app{"uhmm-soak: the model-based stress test, round after round with new seeds"};
  app.add_option("--seconds", seconds, "how long to run")->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "stress threads per round")->check(CLI::Range(1u, 64u));
  app.add_option("--seed", seed, "first round's seed (0: from the clock); round k uses a seed derived from it");
  app.add_flag("--inject", inject, "inject pool and copy failures at random points");
  app.add_option("--pool", pool_mib, "device pool per device, MiB (smaller than ranges x range-pages x 4 KiB: "
                                     "oversubscribed)")
      ->check(CLI::Range(std::size_t{2}, std::size_t{65536}));
  app.add_flag("--fault-ahead,!--no-fault-ahead", fault_ahead, "bring a faulting page's block back with it (default on)");
  app.add_option("--ranges", ranges, "shared ranges per round")->check(CLI::Range(1u, 255u));
  app.add_option("--range-pages", range_pages, "pages of the largest range")->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20));
  app.add_option("--devices", devices, "cpu-backend devices")->check(CLI::Range(1u, 8u));
  app.add_option("--round-seconds", round_seconds, "length of one round")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  if (seed == 0) seed = static_cast<std::uint64_t>(Clock::now().time_since_epoch().count()) | 1;
  uhmm::stress::StressConfig cfg;
  cfg.threads = threads;
  cfg.ops_per_thread = 0;  // rounds are timed
  cfg.ranges = ranges;
  cfg.range_pages = range_pages;
  cfg.pool_bytes = pool_mib << 20;
  cfg.devices = devices;
  cfg.fault_ahead = fault_ahead;
  cfg.inject_failures = inject;
  cfg.log_records = 64;
  cfg.seed = seed;
  fmt::print("uhmm-soak: {:.0f} s, first seed {}, rounds of {:.0f} s: {}\n", seconds, seed, round_seconds,
             cfg.describe());
  std::fflush(stdout);

  const auto start = Clock::now();
  const auto end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  auto last_print = start;
  std::uint64_t rounds = 0, ops = 0, faults = 0, wakeups = 0, to_device = 0, to_host = 0, evicted = 0,
                failures = 0, stale = 0;
  std::uint64_t round_seed = seed;
  for (;;) {
    const auto now = Clock::now();
    if (now >= end) break;
    cfg.seed = round_seed;
    cfg.duration_s = std::min(round_seconds, std::chrono::duration<double>(end - now).count());
    uhmm::stress::StressReport r;
    try {
      r = uhmm::stress::run_stress(cfg);
    } catch (const std::exception& e) {
      fmt::print(stderr, "uhmm-soak: round {} (seed {}) could not run: {}\n", rounds, cfg.seed, e.what());
      return 2;
    }
    ++rounds;
    ops += r.ops_total;
    faults += r.faults_serviced;
    wakeups += r.counters.fault_wakeups;
    to_device += r.counters.pages_to_device;
    to_host += r.counters.pages_to_host;
    evicted += r.counters.device_evictions;
    failures += r.counters.alloc_failures + r.counters.copy_failures;
    stale += r.stale_fault_effects;
    if (!r.ok()) {
      fmt::print(stderr, "uhmm-soak: MISMATCH in round {} after {:.0f} s ({} ops before this round)\n{}", rounds,
                 std::chrono::duration<double>(Clock::now() - start).count(), ops - r.ops_total, r.describe(cfg));
      return 1;
    }
    round_seed = next_seed(round_seed);
    if (Clock::now() - last_print >= std::chrono::seconds(10)) {
      last_print = Clock::now();
      fmt::print("[{:6.0f} s] rounds {} ops {} faults {} (wake-ups {}) pages to device {} to host {} evicted {}\n",
                 std::chrono::duration<double>(last_print - start).count(), rounds, ops, faults, wakeups, to_device,
                 to_host, evicted);
      std::fflush(stdout);
    }
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  fmt::print(
      "uhmm-soak: ok: {:.0f} s, {} rounds, {} ops ({:.0f}/s), {} faults serviced ({} wake-ups), pages to device {}, to "
      "host {}, evicted {}, injected/pool failures {}, checked migrations upset by stale faults {}, 0 mismatches\n",
      elapsed, rounds, ops, static_cast<double>(ops) / elapsed, faults, wakeups, to_device, to_host, evicted,
      failures, stale);
  return 0;
}
