// uhmm-bench: each figure next to a floor measured in the same run on the same
// machine, and the ratio between them. Speed is checked here, never in tests.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sys/utsname.h>

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

uhmm::ContextOptions options(std::size_t pool, bool fault_ahead, const char* fault_mode = nullptr) {
  uhmm::ContextOptions o = uhmm::ContextOptions::from_environment();
  o.device_pool_bytes = pool;
  o.fault_ahead = fault_ahead;
  if (fault_mode != nullptr) o.fault_mode = fault_mode;
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

Latencies device_fault_latency(std::size_t faults, const char* fault_mode = nullptr) {
  uhmm::Context ctx(options(faults * uhmm::kPageSize + 4 * MiB, /*fault_ahead=*/false, fault_mode));
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
    // The signal fault mechanism (where userfaultfd is refused), against both floors.
    const Latencies bare_signal = uhmm::bench::bare_sigsegv_round_trip(faults);
    const Latencies sig = device_fault_latency(faults, "signal");
    rows.push_back({"CPU fault on a device page, signal mode, p50", fmt::format("{:.1f} us", sig.p50_us),
                    fmt::format("bare uffd {:.1f} us", bare.p50_us), sig.p50_us / bare.p50_us});
    rows.push_back({"CPU fault on a device page, signal mode, p50", fmt::format("{:.1f} us", sig.p50_us),
                    fmt::format("bare SIGSEGV {:.1f} us", bare_signal.p50_us), sig.p50_us / bare_signal.p50_us});
    rows.push_back({"CPU fault on a device page, signal mode, p99", fmt::format("{:.1f} us", sig.p99_us),
                    fmt::format("bare SIGSEGV {:.1f} us", bare_signal.p99_us), sig.p99_us / bare_signal.p99_us});

    const std::size_t scan = quick ? 16 * MiB : 256 * MiB;
    const double scan_floor = uhmm::bench::memcpy_gbps(scan);
    for (bool ahead : {true, false}) {
      const double g = scan_gbps(scan, ahead);
      rows.push_back({fmt::format("scan {} MiB on device, fault-ahead {}", scan / MiB, ahead ? "on" : "off"),
                      fmt::format("{:.2f} GB/s", g), fmt::format("memcpy {:.2f} GB/s", scan_floor), g / scan_floor});
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
