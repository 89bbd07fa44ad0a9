#include "workloads.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <numeric>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#include "machine.hpp"
#include "uhmm/uhmm.hpp"

namespace uhmm::bench {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t MiB = std::size_t{1} << 20;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

ContextOptions options(std::size_t pool, bool fault_ahead, const char* fault_mode = nullptr) {
  ContextOptions o = ContextOptions::from_environment();
  o.device_pool_bytes = (pool + kChunkSize - 1) & ~(kChunkSize - 1);
  o.fault_ahead = fault_ahead;
  if (fault_mode != nullptr) o.fault_mode = fault_mode;
  return o;
}

// Threads that start together: each waits until all are ready, so the timed
// part is the concurrent one. Returns the seconds from the start to the last end.
template <class Body>
double run_together(unsigned threads, Body body) {
  std::atomic<unsigned> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      body(t);
    });
  while (ready.load() != threads) std::this_thread::yield();
  const auto t0 = Clock::now();
  go.store(true, std::memory_order_release);
  for (auto& th : pool) th.join();
  return seconds_since(t0);
}

// A device-resident range of `pages` pages, each page's first byte its index.
struct DevicePages {
  DevicePages(std::size_t pages, bool fault_ahead, const char* fault_mode = nullptr)
      : ctx(options(pages * kPageSize + 4 * MiB, fault_ahead, fault_mode)),
        base(static_cast<unsigned char*>(ctx.allocate(pages * kPageSize))),
        count(pages) {
    for (std::size_t i = 0; i < pages; ++i) base[i * kPageSize] = static_cast<unsigned char>(i);
    const MigrationResult r = ctx.migrate_to_device(base, pages * kPageSize);
    if (r.migrated != pages) throw std::runtime_error("bench: pages did not all reach the device");
  }
  ~DevicePages() { ctx.free(base); }
  void check(std::size_t page) const {
    if (static_cast<volatile unsigned char*>(base)[page * kPageSize] != static_cast<unsigned char>(page))
      throw std::runtime_error("bench: a faulted page has the wrong data");
  }
  Context ctx;
  unsigned char* base;
  std::size_t count;
};

}  // namespace

MigrateRates migrate_round_trip(std::size_t bytes, bool compound, int rounds) {
  Context ctx(options(bytes + 8 * MiB, true));
  auto* range = static_cast<char*>(ctx.allocate(bytes + kBlockSize));
  char* p = compound ? range : range + kPageSize;
  std::memset(p, 1, bytes);
  double to = 1e30, back = 1e30;
  for (int r = 0; r < rounds; ++r) {
    auto t0 = Clock::now();
    const MigrationResult out = ctx.migrate_to_device(p, bytes);
    to = std::min(to, seconds_since(t0));
    t0 = Clock::now();
    const MigrationResult in = ctx.migrate_to_host(p, bytes);
    back = std::min(back, seconds_since(t0));
    if (out.migrated != bytes / kPageSize || in.migrated != bytes / kPageSize)
      throw std::runtime_error("bench: a migration left pages behind");
  }
  if (p[0] != 1 || p[bytes - 1] != 1) throw std::runtime_error("bench: migrated data is wrong");
  ctx.free(range);
  return {static_cast<double>(bytes) / to / 1e9, static_cast<double>(bytes) / back / 1e9};
}

Latencies device_fault_latency(std::size_t faults, const char* fault_mode) {
  DevicePages d(faults, /*fault_ahead=*/false, fault_mode);
  std::vector<double> us;
  us.reserve(faults);
  for (std::size_t i = 0; i < faults; ++i) {
    const auto t0 = Clock::now();
    d.check(i);
    us.push_back(seconds_since(t0) * 1e6);
  }
  return summarize(us);
}

double scan_gbps(std::size_t bytes, bool fault_ahead, unsigned prefetch_threshold) {
  Context ctx(options(bytes + 4 * MiB, fault_ahead));
  ctx.set_prefetch_threshold(prefetch_threshold);
  auto* p = static_cast<std::uint64_t*>(ctx.allocate(bytes));
  std::memset(p, 5, bytes);
  ctx.migrate_to_device(p, bytes);
  std::uint64_t sum = 0;
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < bytes / 8; ++i) sum += p[i];
  const double s = seconds_since(t0);
  if (sum != bytes / 8 * 0x0505050505050505ull) throw std::runtime_error("scan: wrong data");
  ctx.free(p);
  return static_cast<double>(bytes) / s / 1e9;
}

double random_fault_rate(std::size_t pages, unsigned threads) {
  DevicePages d(pages, /*fault_ahead=*/false);
  std::vector<std::size_t> order(pages);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(42));
  // Thread t takes every threads-th page of the shuffled order.
  const double s = run_together(threads, [&](unsigned t) {
    for (std::size_t i = t; i < pages; i += threads) d.check(order[i]);
  });
  return static_cast<double>(pages) / s;
}

double fault_storm_rate(std::size_t pages, unsigned threads, bool shared) {
  DevicePages d(pages, /*fault_ahead=*/false);
  std::vector<std::vector<std::size_t>> orders(threads);
  for (unsigned t = 0; t < threads; ++t) {
    auto& o = orders[t];
    for (std::size_t i = 0; i < pages; ++i)
      if (shared || i % threads == t) o.push_back(i);
    std::shuffle(o.begin(), o.end(), std::mt19937_64(t + 1));
  }
  const double s = run_together(threads, [&](unsigned t) {
    for (std::size_t page : orders[t]) d.check(page);
  });
  return static_cast<double>(pages) / s;
}

double mirror_bytes_per_page(std::size_t range_bytes) {
  Context ctx(options(4 * MiB, /*fault_ahead=*/true));
  const std::size_t before = resident_anonymous_bytes();
  auto* p = static_cast<volatile char*>(ctx.allocate(range_bytes));
  // One read per block: fault-ahead maps the zero page over the whole block
  // (no resident data) and writes every page's mirror entry.
  for (std::size_t off = 0; off < range_bytes; off += kBlockSize)
    if (p[off] != 0) throw std::runtime_error("mirror: a never-touched page is not zero");
  const std::size_t after = resident_anonymous_bytes();
  ctx.free(const_cast<char*>(p));
  return static_cast<double>(after > before ? after - before : 0) / static_cast<double>(range_bytes / kPageSize);
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
  Context ctx(options(pool, true));
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
      ctx.launch(kWindow / 8, [](std::size_t i, device_span<std::uint64_t> x) { x[i] += 1; },
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

}  // namespace uhmm::bench
