// uhmm-bench: each figure next to a floor measured in the same run on the same
// machine, and the ratio between them. Speed is checked here, never in tests.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "floors.hpp"
#include "machine.hpp"
#include "managed_comparison.hpp"
#include "progress.hpp"
#include "uhmm/uhmm.hpp"
#include "snapshot_workloads.hpp"
#include "workloads.hpp"

namespace {

using namespace uhmm::bench;
constexpr std::size_t KiB = std::size_t{1} << 10;
constexpr std::size_t MiB = std::size_t{1} << 20;

// One result. `group` and `x` place it on a plot (scripts/plot-bench.sh):
// the group is one plot line, x its abscissa (bytes or threads).
struct Row {
  std::string group;
  double x = 0;
  std::string measure;
  double value = 0;
  std::string unit;
  std::string floor_name;  // what the floor is ("" when the row has none)
  double floor_value = 0;
  double ratio = 0;  // value / floor_value
};

std::string size_name(std::size_t bytes) {
  if (bytes >= (std::size_t{1} << 30)) return fmt::format("{} GiB", bytes >> 30);
  return bytes >= MiB ? fmt::format("{} MiB", bytes / MiB) : fmt::format("{} KiB", bytes / KiB);
}

std::string figure(double v, const std::string& unit) {
  return unit == "faults/s" || unit == "pages/s" ? fmt::format("{:.0f} {}", v, unit) : fmt::format("{:.2f} {}", v, unit);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"uhmm-bench: uhmm's costs as ratios to floors measured in the same run"};
  bool quick = false;
  std::string json_path;
  app.add_flag("--quick", quick, "small sizes only (a smoke run for CI)");
  bool gpu = false;
  app.add_option("--json", json_path, "also write the results as JSON to this file");
  app.add_flag("--gpu", gpu,
               "also measure the vendor's managed memory (cudaMallocManaged / hipMallocManaged + prefetch) on the "
               "same device and compare (needs a GPU backend)");
  CLI11_PARSE(app, argc, argv);

  try {
    std::string backend;
    {
      uhmm::ContextOptions o = uhmm::ContextOptions::from_environment();
      o.device_pool_bytes = 4 * MiB;
      uhmm::Context probe(o);
      backend = probe.device_info(probe.device_owner(0)).backend;
    }
    const Machine machine = Machine::describe(backend);
    fmt::print("machine: {}\n\n", machine.line());
    std::unique_ptr<ManagedBaseline> managed;
    if (gpu) {
      if (backend == "cpu") {
        fmt::print(stderr,
                   "uhmm-bench: --gpu compares with the vendor's managed memory on a GPU, but uhmm opened the cpu "
                   "backend here (uhmm-info says why no GPU backend opened; UHMM_BACKEND=cuda or hip forces one)\n");
        return 2;
      }
      managed = std::make_unique<ManagedBaseline>(backend);
    }

    const std::vector<std::size_t> sizes =
        quick ? std::vector<std::size_t>{4 * KiB, 2 * MiB, 16 * MiB}
              : std::vector<std::size_t>{4 * KiB, 64 * KiB, 2 * MiB, 64 * MiB, 256 * MiB, 1024 * MiB};
    const std::vector<unsigned> storm_threads = quick ? std::vector<unsigned>{1, 2} : std::vector<unsigned>{1, 2, 4, 8};
    const std::size_t faults = quick ? 500 : 4000;
    const std::size_t random_pages = quick ? 1000 : 8192;
    Progress progress(static_cast<unsigned>(sizes.size() + 8 + (managed ? 1 : 0)));
    std::vector<Row> rows;
    std::map<std::size_t, MigrateRates> uhmm_rates;  // 2 MiB-block migrations by size, for --gpu

    // Migration, 2 MiB units (aligned range) and single pages (range 4 KiB into a block).
    for (std::size_t bytes : sizes) {
      progress.step(fmt::format("migrate {}", size_name(bytes)));
      const double floor = memcpy_gbps(bytes);
      const int rounds = bytes >= 256 * MiB ? 2 : quick ? 2 : 5;
      for (bool compound : {true, false}) {
        if (!compound && bytes < 2 * MiB) continue;  // below a block both are page moves
        const MigrateRates r = migrate_round_trip(bytes, compound, rounds);
        if (compound) uhmm_rates[bytes] = r;
        const char* blocks = compound ? "2 MiB blocks" : "4 KiB pages";
        rows.push_back({fmt::format("to device, {}", blocks), double(bytes),
                        fmt::format("migrate {} to device, {}", size_name(bytes), blocks), r.to_device_gbps, "GB/s",
                        "memcpy", floor, r.to_device_gbps / floor});
        rows.push_back({fmt::format("to host, {}", blocks), double(bytes),
                        fmt::format("migrate {} to host, {}", size_name(bytes), blocks), r.to_host_gbps, "GB/s",
                        "memcpy", floor, r.to_host_gbps / floor});
      }
    }

    progress.step("fault latency (device page, bare userfaultfd, first touch)");
    const Latencies bare = bare_userfaultfd_round_trip(faults);
    const Latencies dev = device_fault_latency(faults);
    const double touch = first_touch_us(faults);
    rows.push_back({"fault latency", 50, "CPU fault on a device page, p50", dev.p50_us, "us", "bare uffd p50",
                    bare.p50_us, dev.p50_us / bare.p50_us});
    rows.push_back({"fault latency", 99, "CPU fault on a device page, p99", dev.p99_us, "us", "bare uffd p99",
                    bare.p99_us, dev.p99_us / bare.p99_us});
    rows.push_back({"fault latency vs first touch", 50, "CPU fault on a device page, p50", dev.p50_us, "us",
                    "first touch", touch, dev.p50_us / touch});
    // The signal fault mechanism (where userfaultfd is refused), against both floors.
    const Latencies bare_signal = bare_sigsegv_round_trip(faults);
    const Latencies sig = device_fault_latency(faults, "signal");
    rows.push_back({"fault latency, signal mode", 50, "CPU fault on a device page, signal mode, p50", sig.p50_us,
                    "us", "bare uffd p50", bare.p50_us, sig.p50_us / bare.p50_us});
    rows.push_back({"fault latency, signal mode", 50, "CPU fault on a device page, signal mode, p50", sig.p50_us,
                    "us", "bare SIGSEGV p50", bare_signal.p50_us, sig.p50_us / bare_signal.p50_us});
    rows.push_back({"fault latency, signal mode", 99, "CPU fault on a device page, signal mode, p99", sig.p99_us,
                    "us", "bare SIGSEGV p99", bare_signal.p99_us, sig.p99_us / bare_signal.p99_us});

    progress.step("sequential scan");
    const std::size_t scan = quick ? 16 * MiB : 256 * MiB;
    const double scan_floor = memcpy_gbps(scan);
    for (bool ahead : {true, false}) {
      const double g = scan_gbps(scan, ahead);
      rows.push_back({"scan", ahead ? 1.0 : 0.0,
                      fmt::format("scan {} on device, fault-ahead {}", size_name(scan), ahead ? "on" : "off"), g,
                      "GB/s", "memcpy", scan_floor, g / scan_floor});
    }
    {
      // UVM's density prefetch: each fault brings a part of its block, not all of it.
      const double g = scan_gbps(scan, true, 51);
      rows.push_back({"scan", 2.0, fmt::format("scan {} on device, density prefetch 51%", size_name(scan)), g, "GB/s",
                      "memcpy", scan_floor, g / scan_floor});
    }

    // Rates, best of a few runs (other work on the machine only ever slows a
    // run down). The floor, the bare round trip's rate (what one handler
    // thread serves), is measured right before each, over as many faults.
    const int tries = quick ? 1 : 3;
    auto best_of = [tries](auto run) {
      double best = 0;
      for (int t = 0; t < tries; ++t) best = std::max(best, run());
      return best;
    };
    progress.step("random 4 KiB faults");
    for (unsigned threads : {1u, 2u}) {
      const double bare_rate =
          best_of([&] { return 1e6 / bare_userfaultfd_round_trip(random_pages).mean_us; });
      const double rate = best_of([&] { return random_fault_rate(random_pages, threads); });
      rows.push_back({"random faults", double(threads), fmt::format("random 4 KiB faults, {} thread(s)", threads),
                      rate, "faults/s", "bare uffd (1 thread)", bare_rate, rate / bare_rate});
    }

    progress.step("fault storm, distinct pages");
    double base_distinct = 0, base_shared = 0;
    for (unsigned threads : storm_threads) {
      const double rate = best_of([&] { return fault_storm_rate(random_pages, threads, /*shared=*/false); });
      if (threads == 1) base_distinct = rate;
      rows.push_back({"storm, distinct pages", double(threads),
                      fmt::format("fault storm, {} threads, distinct pages", threads), rate, "pages/s",
                      "1 thread", base_distinct, rate / base_distinct});
    }
    progress.step("fault storm, shared pages");
    for (unsigned threads : storm_threads) {
      const double rate = best_of([&] { return fault_storm_rate(random_pages, threads, /*shared=*/true); });
      if (threads == 1) base_shared = rate;
      rows.push_back({"storm, shared pages", double(threads),
                      fmt::format("fault storm, {} threads, shared pages", threads), rate, "pages/s", "1 thread",
                      base_shared, rate / base_shared});
    }

    progress.step("oversubscription");
    // Multiples of 12 MiB: the pool is a whole number of 2 MiB chunks at 1.5x, 2x and 4x.
    const std::size_t working_set = quick ? 24 * MiB : 192 * MiB;
    for (bool random : {false, true}) {
      const char* how = random ? "random" : "streaming";
      const double in_pool = oversubscribed_gbps(working_set, 1.0, random, quick ? 3 : 5);
      for (double factor : {1.5, 2.0, 4.0}) {
        const double g = oversubscribed_gbps(working_set, factor, random, quick ? 3 : 5);
        rows.push_back({fmt::format("oversubscription, {}", how), factor,
                        fmt::format("{} at {:.1f}x the pool, {}", size_name(working_set), factor, how), g, "GB/s",
                        "in pool", in_pool, g / in_pool});
      }
    }

    if (managed) {
      // The same sizes and the same fault count on the same device, against
      // the runtime's own DMA of pageable memory measured alongside.
      progress.step(fmt::format("{} on the same device", managed->name()));
      for (const auto& [bytes, ours] : uhmm_rates) {
        if (bytes < 64 * KiB) continue;
        const UhmmManagedResult m = managed->run(bytes, bytes >= 256 * MiB ? 2 : quick ? 2 : 5, 0);
        for (bool to_device : {true, false}) {
          const char* way = to_device ? "to device" : "to host";
          const double mine = to_device ? ours.to_device_gbps : ours.to_host_gbps;
          const double theirs = to_device ? m.prefetch_to_device_gbps : m.prefetch_to_host_gbps;
          const double dma = to_device ? m.dma_to_device_gbps : m.dma_to_host_gbps;
          rows.push_back({fmt::format("uhmm vs managed, {}", way), double(bytes),
                          fmt::format("migrate {} {}: uhmm", size_name(bytes), way), mine, "GB/s", managed->name(),
                          theirs, mine / theirs});
          rows.push_back({fmt::format("managed, {}", way), double(bytes),
                          fmt::format("migrate {} {}: {}", size_name(bytes), way, managed->name()), theirs, "GB/s",
                          "DMA, pageable", dma, theirs / dma});
          rows.push_back({fmt::format("uhmm vs DMA, {}", way), double(bytes),
                          fmt::format("migrate {} {}: uhmm", size_name(bytes), way), mine, "GB/s", "DMA, pageable",
                          dma, mine / dma});
        }
      }
      const UhmmManagedResult f = managed->run(faults * uhmm::kPageSize, 1, faults);
      rows.push_back({"fault latency vs managed", 50, "CPU fault on a device page, p50: uhmm", dev.p50_us, "us",
                      managed->name(), f.cpu_fault_p50_us, dev.p50_us / f.cpu_fault_p50_us});
      rows.push_back({"fault latency vs managed", 99, "CPU fault on a device page, p99: uhmm", dev.p99_us, "us",
                      managed->name(), f.cpu_fault_p99_us, dev.p99_us / f.cpu_fault_p99_us});
    }

    progress.step("range snapshots");
    {
      // Mirror words a snapshot writes (8 B per page) against memcpy of as many bytes.
      const std::size_t range = quick ? 64 * MiB : 1024 * MiB;
      const double words = snapshot_word_gbps(range, quick ? 5 : 20);
      const std::size_t word_bytes = range / uhmm::kPageSize * sizeof(std::uint64_t);
      const double copy = memcpy_gbps(word_bytes);
      rows.push_back({"snapshot throughput", double(range),
                      fmt::format("snapshot {}: mirror words out", size_name(range)), words, "GB/s",
                      fmt::format("memcpy {}", size_name(word_bytes)), copy, words / copy});
      // Two walks (snapshot with populate, then migrate) against one (snapshot with migrate).
      const std::size_t moved = quick ? 8 * MiB : 64 * MiB;
      for (bool half : {false, true}) {
        const WalkTimes t = one_walk_vs_two(moved, half, quick ? 3 : 5);
        rows.push_back({"one walk vs two walks", half ? 1.0 : 0.0,
                        fmt::format("{} {}: two walks / one walk", size_name(moved),
                                    half ? "half written" : "never touched"),
                        t.two_walks_s * 1e3, "ms", "one walk", t.one_walk_s * 1e3, t.two_walks_s / t.one_walk_s});
      }
    }

    progress.step("mirror page table memory");
    const std::size_t mirror_range = quick ? 256 * MiB : 4096 * MiB;
    const double per_page = mirror_bytes_per_page(mirror_range);
    rows.push_back({"mirror memory", double(mirror_range), fmt::format("mirror bytes per page ({} range)",
                                                                        size_name(mirror_range)),
                    per_page, "B/page", "target 16 B/page", 16.0, per_page / 16.0});

    fmt::print("\n{:<46} {:>18}  {:<30} {:>8}\n", "measure", "figure", "floor (same run)", "ratio");
    for (const Row& r : rows)
      fmt::print("{:<46} {:>18}  {:<30} {:>8.3f}\n", r.measure, figure(r.value, r.unit),
                 r.floor_name + " " + figure(r.floor_value, r.unit), r.ratio);

    if (!json_path.empty()) {
      nlohmann::json doc{{"machine", machine.json()}, {"quick", quick}, {"results", nlohmann::json::array()}};
      for (const Row& r : rows)
        doc["results"].push_back({{"group", r.group},
                                  {"x", r.x},
                                  {"measure", r.measure},
                                  {"value", r.value},
                                  {"unit", r.unit},
                                  {"floor", r.floor_name},
                                  {"floor_value", r.floor_value},
                                  {"ratio", r.ratio}});
      std::ofstream out(json_path);
      out << doc.dump(2) << "\n";
      if (!out) throw std::runtime_error("cannot write " + json_path);
    }
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "uhmm-bench: {}\n", e.what());
    return 1;
  }
}
