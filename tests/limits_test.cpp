// Limits: a 64 GiB sparse range costs memory only where it is touched (the
// mirror table's resident part stays within 16 bytes per page of each touched
// 2 MiB block), thousands of small ranges work without nearing
// vm.max_map_count, and a Context torn down with pages on the device, right
// after threads faulted, finishes.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "test_support.hpp"
#include "uhmm/uhmm.hpp"

namespace {

using namespace uhmm;
using namespace uhmm::test;

constexpr std::size_t GiB = std::size_t{1} << 30;

// Resident kB of the mappings of exactly `bytes`, summed from /proc/self/smaps.
std::size_t resident_kb_of_mappings_sized(std::size_t bytes) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool match = false;
  std::size_t total = 0;
  while (std::getline(smaps, line)) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2) {  // a mapping's header line
      match = hi - lo == bytes;
      continue;
    }
    if (match && line.rfind("Rss:", 0) == 0) total += std::stoul(line.substr(4));
  }
  return total;
}

std::size_t vm_rss_kb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoul(line.substr(6));
  return 0;
}

std::size_t map_count() {
  std::ifstream maps("/proc/self/maps");
  std::size_t n = 0;
  for (std::string line; std::getline(maps, line);) ++n;
  return n;
}

std::size_t max_map_count() {
  std::ifstream f("/proc/sys/vm/max_map_count");
  std::size_t n = 65530;
  f >> n;
  return n;
}

TEST(LimitsTest, SparseRangeOf64GiBCostsMemoryOnlyWhereTouched) {
  Context ctx(cpu_options());
  constexpr std::size_t kBytes = 64 * GiB;
  constexpr std::size_t kTableBytes = kBytes / kPageSize * 8;  // the mirror table's mapping
  const std::size_t rss_before = vm_rss_kb();
  auto* base = static_cast<std::byte*>(ctx.allocate(kBytes));
  ASSERT_EQ(ctx.range_size(base), kBytes);

  // 16 pages 4 GiB apart: one page each in 16 blocks.
  constexpr std::size_t kTouched = 16;
  auto at = [&](std::size_t k) { return base + k * (kBytes / kTouched) + 123 * kPageSize; };
  for (std::size_t k = 0; k < kTouched; ++k) fill(at(k), kPageSize, k);
  for (std::size_t k = 0; k < kTouched; k += 4) ASSERT_EQ(ctx.migrate_to_device(at(k), kPageSize).migrated, 1u);
  for (std::size_t k = 0; k < kTouched; k += 8) ASSERT_EQ(ctx.migrate_to_host(at(k), kPageSize).migrated, 1u);
  for (std::size_t k = 0; k < kTouched; ++k) expect_pattern(at(k), kPageSize, k);  // faults the rest back
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;  // a full walk of the table touches nothing new

  // The table: within 16 bytes per page of each touched block.
  const std::size_t table_kb = resident_kb_of_mappings_sized(kTableBytes);
  EXPECT_LE(table_kb * 1024, kTouched * kPagesPerBlock * 16) << "mirror table resident: " << table_kb << " kB";
  // The whole process: the touched pages, their blocks' table and page-table
  // pages, and the fixed per-block lock array (40 bytes per 2 MiB).
  const std::size_t grown_kb = vm_rss_kb() - std::min(vm_rss_kb(), rss_before);
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  // (A sanitizer's shadow of the table walked by validate() is resident too.)
  EXPECT_LE(grown_kb, 8 * 1024u) << "VmRSS grew by " << grown_kb << " kB";
#endif
  std::printf("64 GiB range, %zu pages touched: mirror table resident %zu kB, VmRSS grew %zu kB\n", kTouched,
              table_kb, grown_kb);
  ctx.free(base);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
}

TEST(LimitsTest, ThousandsOfSmallRangesWorkFarFromTheMapCountLimit) {
  Context ctx(cpu_options(128 * MiB));
  constexpr std::size_t kRanges = 4000;
  const std::size_t maps_before = map_count();
  std::vector<std::pair<void*, std::size_t>> ranges;
  for (std::size_t i = 0; i < kRanges; ++i) {
    const std::size_t bytes = (1 + i % 8) * kPageSize;
    void* p = ctx.allocate(bytes);
    fill(p, bytes, i);
    ranges.emplace_back(p, bytes);
  }
  const std::size_t maps_used = map_count() - maps_before;
#if !defined(__SANITIZE_THREAD__)  // TSan maps shadow and meta memory for every new mapping, and keeps it
  // One mapping per range and one for its table, at most; signal mode also maps
  // each range's memfd a second time (the alias uhmm fills pages through) and
  // keeps a protection table per range (signal_mechanism.cpp; 3 measured).
  const std::size_t per_range = std::string_view(ctx.fault_mode()) == "signal" ? 4 : 2;
  EXPECT_LE(maps_used, per_range * kRanges);
  EXPECT_LT(map_count(), max_map_count() / 4) << maps_used << " mappings for " << kRanges << " ranges";
#endif
  std::printf("%zu ranges: %zu mappings (vm.max_map_count %zu)\n", kRanges, maps_used, max_map_count());

  std::size_t pages = 0;
  for (const auto& [p, bytes] : ranges) {
    ASSERT_EQ(ctx.migrate_to_device(p, bytes).migrated, bytes / kPageSize);
    pages += bytes / kPageSize;
  }
  EXPECT_EQ(ctx.counters().device_pages_in_use, pages);
  for (std::size_t i = 0; i < kRanges; ++i) {
    auto [p, bytes] = ranges[i];
    if (i % 2 == 0) {
      ASSERT_EQ(ctx.migrate_to_host(p, bytes).migrated, bytes / kPageSize);
    }
    expect_pattern(p, bytes, i);  // odd ranges come back by faults
  }
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  for (const auto& [p, bytes] : ranges) ctx.free(p);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
#if !defined(__SANITIZE_THREAD__)
  EXPECT_LE(map_count(), maps_before + 64);  // the ranges are gone (runtimes may map a little meanwhile)
#endif
}

TEST(LimitsTest, TeardownWithPagesOnTheDeviceRightAfterThreadsFaulted) {
  for (int round = 0; round < 5; ++round) {
    auto ctx = std::make_unique<Context>(cpu_options());
    constexpr std::size_t kBytes = 4 * MiB;
    void* a = ctx->allocate(kBytes);
    void* b = ctx->allocate(kBytes);
    fill(a, kBytes, 1);
    fill(b, kBytes, 2);
    ASSERT_EQ(ctx->migrate_to_device(a, kBytes).migrated, kBytes / kPageSize);
    ASSERT_EQ(ctx->migrate_to_device(b, kBytes).migrated, kBytes / kPageSize);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&, t] {
        // Each thread faults one quarter of `a` back, page by page.
        auto* q = static_cast<std::byte*>(a) + t * kBytes / 4;
        volatile std::uint64_t sink = 0;
        for (std::size_t off = 0; off < kBytes / 4; off += kPageSize * 3)
          sink = sink + *reinterpret_cast<volatile std::uint64_t*>(q + off);
      });
    for (auto& t : threads) t.join();
    ctx.reset();  // `b` still on the device, `a` partly: must neither hang nor leak (ASan checks the leak)
  }
}

// Owner ids are 8 bits and 255 devices is the documented most: a loop over
// owners in an OwnerId never ends at 255. Each call below runs such a loop
// (migration between devices, to RAM, freeing device pages, a launch).
TEST(LimitsTest, TheMostDevicesMigrateToEachOtherAndBackWithoutHanging) {
  constexpr unsigned kDevices = 255;
  Context ctx(cpu_options(2 * MiB, /*fault_ahead=*/false, kDevices));
  ASSERT_EQ(ctx.device_count(), kDevices);
  const OwnerId last = ctx.device_owner(kDevices - 1);
  ASSERT_EQ(last, 255);
  constexpr std::size_t kPages = 4;
  constexpr std::size_t kBytes = kPages * kPageSize;
  void* p = ctx.allocate(kBytes);
  fill(p, kBytes, 7);
  const auto expect_on = [&](OwnerId owner) {
    for (const PageState& s : ctx.residency(p, kBytes)) {
      EXPECT_EQ(s.residency, Residency::Device);
      EXPECT_EQ(s.device.owner, owner);
    }
  };
  ASSERT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kPages);
  expect_on(ctx.device_owner(0));
  ASSERT_EQ(ctx.migrate_to_device(p, kBytes, last).migrated, kPages);  // device to device
  expect_on(last);
  expect_pattern(p, kPageSize, 7);  // a CPU fault brings the first page back
  ASSERT_EQ(ctx.migrate_to_host(p, kBytes).migrated, kPages - 1);
  expect_pattern(p, kBytes, 7);
  EXPECT_EQ(count(ctx.residency(p, kBytes), Residency::System), kPages);

  ctx.launch_on(last, kBytes / 8, [](std::size_t i, device_span<std::uint64_t> w) { w[i] += 1; },
                std::span<std::uint64_t>(static_cast<std::uint64_t*>(p), kBytes / 8));
  expect_on(last);
  EXPECT_EQ(ctx.discard(p, kBytes), kPages);  // device pages back to device 255's pool
  EXPECT_EQ(count(ctx.residency(p, kBytes), Residency::Device), 0u);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
  const Status valid = ctx.validate();
  EXPECT_TRUE(valid) << valid.message;
  ctx.free(p);
}

TEST(LimitsTest, MoreDevicesThanOwnerIdsIsInvalidArgumentNamingTheMost) {
  for (unsigned devices : {256u, 1000u}) {
    try {
      Context ctx(cpu_options(2 * MiB, true, devices));
      ADD_FAILURE() << devices << " devices accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::invalid_argument) << e.what();
      EXPECT_NE(std::string(e.what()).find("255"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
