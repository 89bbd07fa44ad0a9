// uhmm-bench: each figure next to a floor measured in the same run on the same
// machine, and the ratio between them. Speed is checked here, never in tests.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sys/utsname.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "floors.hpp"
#include "uhmm/uhmm.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using uhmm::bench::Latencies;
constexpr std::size_t MiB = std::size_t{1} << 20;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string machine() {
  std::string cpu = "unknown cpu";
  std::ifstream info("/proc/cpuinfo");
  for (std::string line; std::getline(info, line);)
    if (line.rfind("model name", 0) == 0) {
      cpu = line.substr(line.find(':') + 2);
      break;
    }
  utsname u{};
  ::uname(&u);
  return fmt::format("{}, {} cpus, Linux {}", cpu, std::thread::hardware_concurrency(), u.release);
}

struct Row {
  std::string measure;
  std::string figure;
  std::string floor;
  double ratio;
};

uhmm::ContextOptions options(std::size_t pool, bool fault_ahead) {
  uhmm::ContextOptions o = uhmm::ContextOptions::from_environment();
  o.device_pool_bytes = pool;
  o.fault_ahead = fault_ahead;
  return o;
}

// Migration to the device and back of `bytes`, best of a few rounds, as GB/s each way.
std::pair<double, double> migrate_round_trip(std::size_t bytes, int rounds) {
  uhmm::Context ctx(options(std::max(bytes, 2 * MiB) + 4 * MiB, true));
  void* p = ctx.allocate(bytes);
  std::memset(p, 1, bytes);
  double to = 1e30, back = 1e30;
  for (int r = 0; r < rounds; ++r) {
    auto t0 = Clock::now();
    ctx.migrate_to_device(p, bytes);
    to = std::min(to, seconds_since(t0));
    t0 = Clock::now();
    ctx.migrate_to_host(p, bytes);
    back = std::min(back, seconds_since(t0));
  }
  ctx.free(p);
  return {static_cast<double>(bytes) / to / 1e9, static_cast<double>(bytes) / back / 1e9};
}

Latencies device_fault_latency(std::size_t faults) {
  uhmm::Context ctx(options(faults * uhmm::kPageSize + 4 * MiB, /*fault_ahead=*/false));
  auto* p = static_cast<char*>(ctx.allocate(faults * uhmm::kPageSize));
  std::memset(p, 3, faults * uhmm::kPageSize);
  ctx.migrate_to_device(p, faults * uhmm::kPageSize);
  std::vector<double> us;
  us.reserve(faults);
  for (std::size_t i = 0; i < faults; ++i) {
    const auto t0 = Clock::now();
    const char c = *static_cast<volatile char*>(p + i * uhmm::kPageSize);
    us.push_back(seconds_since(t0) * 1e6);
    if (c != 3) throw std::runtime_error("device fault: wrong data");
  }
  return uhmm::bench::summarize(us);
}

double scan_gbps(std::size_t bytes, bool fault_ahead) {
  uhmm::Context ctx(options(bytes + 4 * MiB, fault_ahead));
  auto* p = static_cast<std::uint64_t*>(ctx.allocate(bytes));
  std::memset(p, 5, bytes);
  ctx.migrate_to_device(p, bytes);
  std::uint64_t sum = 0;
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < bytes / 8; ++i) sum += p[i];
  const double s = seconds_since(t0);
  if (sum != bytes / 8 * 0x0505050505050505ull) throw std::runtime_error("scan: wrong data");
  return static_cast<double>(bytes) / s / 1e9;
}

// A working set streamed through the device window by window: each 2 MiB
// window is migrated and rewritten by a kernel. The timed pass starts with the
// data on the host and, when the working set exceeds the pool (factor > 1),
// with the pool full of older windows, so every window evicts one. factor 1:
// the pool holds it all (the floor). Windows in order, or in a seeded random
// order. Returns GB/s of working set processed, best of `rounds` timed passes.
double oversubscribed_gbps(std::size_t working_set, double factor, bool random, int rounds) {
  constexpr std::size_t kWindow = 2 * MiB;
  const std::size_t pool = factor <= 1.0 ? working_set + kWindow
                                         : std::max<std::size_t>(kWindow, static_cast<std::size_t>(
                                                                              static_cast<double>(working_set) / factor) &
                                                                              ~(kWindow - 1));
  uhmm::Context ctx(options(pool, true));
  auto* data = static_cast<std::uint64_t*>(ctx.allocate(working_set));
  std::memset(data, 7, working_set);
  std::vector<std::size_t> order(working_set / kWindow);
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  if (random) {
    std::uint64_t x = 0x9e3779b97f4a7c15ull;
    for (std::size_t i = order.size(); i > 1; --i) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      std::swap(order[i - 1], order[x % i]);
    }
  }
  auto pass = [&] {
    for (std::size_t w : order) {
      auto* p = data + w * kWindow / 8;
      ctx.migrate_to_device(p, kWindow);
      ctx.launch(kWindow / 8, [](std::size_t i, uhmm::device_span<std::uint64_t> x) { x[i] += 1; },
                 std::span<std::uint64_t>(p, kWindow / 8));
    }
  };
  pass();  // warm: the pool fills (and, oversubscribed, starts evicting)
  double best = 1e30;
  for (int r = 0; r < rounds; ++r) {
    if (factor <= 1.0) ctx.migrate_to_host(data, working_set);  // the floor starts from the host too
    const auto t0 = Clock::now();
    pass();
    best = std::min(best, seconds_since(t0));
  }
  ctx.free(data);
  return static_cast<double>(working_set) / best / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"uhmm-bench: uhmm's costs as ratios to floors measured in the same run"};
  bool quick = false;
  std::string json_path;
  app.add_flag("--quick", quick, "small sizes only (a smoke run)");
  app.add_option("--json", json_path, "also write the results as JSON to this file");
  CLI11_PARSE(app, argc, argv);

  try {
    uhmm::Context probe(options(4 * MiB, true));
    const std::string backend = probe.device_info(probe.device_owner(0)).backend;
    fmt::print("machine: {}\nbackend: {}\n\n", machine(), backend);
    std::vector<Row> rows;

    const std::vector<std::size_t> sizes = quick ? std::vector<std::size_t>{4096, 2 * MiB, 16 * MiB}
                                                 : std::vector<std::size_t>{4096, 64 * 1024, 2 * MiB, 64 * MiB, 256 * MiB};
    for (std::size_t bytes : sizes) {
      const double floor = uhmm::bench::memcpy_gbps(bytes);
      const auto [to, back] = migrate_round_trip(bytes, quick ? 2 : 5);
      const std::string size = bytes >= MiB ? fmt::format("{} MiB", bytes / MiB) : fmt::format("{} KiB", bytes / 1024);
      rows.push_back({fmt::format("migrate {} to device", size), fmt::format("{:.2f} GB/s", to),
                      fmt::format("memcpy {:.2f} GB/s", floor), to / floor});
      rows.push_back({fmt::format("migrate {} to host", size), fmt::format("{:.2f} GB/s", back),
                      fmt::format("memcpy {:.2f} GB/s", floor), back / floor});
    }

    const std::size_t faults = quick ? 500 : 4000;
    const Latencies bare = uhmm::bench::bare_userfaultfd_round_trip(faults);
    const Latencies dev = device_fault_latency(faults);
    const double touch = uhmm::bench::first_touch_us(faults);
    rows.push_back({"CPU fault on a device page, p50", fmt::format("{:.1f} us", dev.p50_us),
                    fmt::format("bare uffd {:.1f} us", bare.p50_us), dev.p50_us / bare.p50_us});
    rows.push_back({"CPU fault on a device page, p99", fmt::format("{:.1f} us", dev.p99_us),
                    fmt::format("bare uffd {:.1f} us", bare.p99_us), dev.p99_us / bare.p99_us});
    rows.push_back({"CPU fault on a device page, p50", fmt::format("{:.1f} us", dev.p50_us),
                    fmt::format("first touch {:.2f} us", touch), dev.p50_us / touch});

    const std::size_t scan = quick ? 16 * MiB : 256 * MiB;
    const double scan_floor = uhmm::bench::memcpy_gbps(scan);
    for (bool ahead : {true, false}) {
      const double g = scan_gbps(scan, ahead);
      rows.push_back({fmt::format("scan {} MiB on device, fault-ahead {}", scan / MiB, ahead ? "on" : "off"),
                      fmt::format("{:.2f} GB/s", g), fmt::format("memcpy {:.2f} GB/s", scan_floor), g / scan_floor});
    }

    // Multiples of 12 MiB: the pool is a whole number of 2 MiB chunks at 1.5x, 2x and 4x.
    const std::size_t working_set = quick ? 24 * MiB : 192 * MiB;
    for (bool random : {false, true}) {
      const char* how = random ? "random" : "streaming";
      const double in_pool = oversubscribed_gbps(working_set, 1.0, random, quick ? 3 : 5);
      for (double factor : {1.5, 2.0, 4.0}) {
        const double g = oversubscribed_gbps(working_set, factor, random, quick ? 3 : 5);
        rows.push_back({fmt::format("{} MiB at {:.1f}x the pool, {}", working_set / MiB, factor, how),
                        fmt::format("{:.2f} GB/s", g), fmt::format("in pool {:.2f} GB/s", in_pool), g / in_pool});
      }
    }

    fmt::print("{:<44} {:>14}  {:<24} {:>8}\n", "measure", "figure", "floor (same run)", "ratio");
    for (const Row& r : rows) fmt::print("{:<44} {:>14}  {:<24} {:>8.3f}\n", r.measure, r.figure, r.floor, r.ratio);

    if (!json_path.empty()) {
      nlohmann::json doc{{"machine", machine()}, {"backend", backend}, {"results", nlohmann::json::array()}};
      for (const Row& r : rows)
        doc["results"].push_back({{"measure", r.measure}, {"figure", r.figure}, {"floor", r.floor}, {"ratio", r.ratio}});
      std::ofstream(json_path) << doc.dump(2) << "\n";
    }
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "uhmm-bench: {}\n", e.what());
    return 1;
  }
}
