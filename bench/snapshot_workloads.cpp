#include "snapshot_workloads.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "uhmm/uhmm.hpp"

namespace uhmm::bench {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t MiB = std::size_t{1} << 20;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

ContextOptions options(std::size_t pool) {
  ContextOptions o = ContextOptions::from_environment();
  o.device_pool_bytes = (pool + kChunkSize - 1) & ~(kChunkSize - 1);
  return o;
}

void check(const Status& s) {
  if (!s) throw std::runtime_error("snapshot bench: " + s.message);
}

}  // namespace

double snapshot_word_gbps(std::size_t bytes, int rounds) {
  Context ctx(options(2 * MiB));
  auto* data = static_cast<std::byte*>(ctx.allocate(bytes));
  std::memset(data, 1, bytes);
  std::vector<std::uint64_t> pfns(bytes / kPageSize);
  SnapshotRange r;
  r.start = data;
  r.end = data + bytes;
  r.pfns = pfns.data();
  r.owner = ctx.device_owner(0);
  check(snapshot_range(ctx, r));  // warm
  double best = 1e30;
  for (int i = 0; i < rounds; ++i) {
    const auto t0 = Clock::now();
    check(snapshot_range(ctx, r));
    best = std::min(best, seconds_since(t0));
  }
  ctx.free(data);
  return static_cast<double>(pfns.size() * sizeof(std::uint64_t)) / best / 1e9;
}

WalkTimes one_walk_vs_two(std::size_t bytes, bool half_written, int rounds) {
  Context ctx(options(bytes + 2 * MiB));
  const OwnerId owner = ctx.device_owner(0);
  DevicePagemap& device = device_pagemap(ctx, owner);
  const std::size_t n = bytes / kPageSize;
  std::vector<std::uint64_t> pfns(n), src(n), dst(n);
  auto fresh = [&] {
    auto* p = static_cast<std::byte*>(ctx.allocate(bytes));
    if (half_written) std::memset(p, 3, bytes / 2);
    return p;
  };
  auto finish = [&](MigrateVma& m) {
    check(device.alloc_and_copy(m));
    if (migrate_vma_pages(ctx, m) != n) throw std::runtime_error("snapshot bench: pages did not all migrate");
    migrate_vma_finalize(ctx, m);
  };
  WalkTimes best{1e30, 1e30};
  for (int i = 0; i < rounds; ++i) {
    {
      auto* p = fresh();
      const auto t0 = Clock::now();
      SnapshotRange r;
      r.start = p;
      r.end = p + bytes;
      r.pfns = pfns.data();
      r.owner = owner;
      r.default_flags = SNAPSHOT_REQ_POPULATE;
      check(snapshot_range(ctx, r));
      MigrateVma m;
      m.start = p;
      m.end = p + bytes;
      m.src = src.data();
      m.dst = dst.data();
      m.flags = MIGRATE_VMA_SELECT_SYSTEM | MIGRATE_VMA_SELECT_COMPOUND;
      m.destination = owner;
      migrate_vma_setup(ctx, m);
      finish(m);
      best.two_walks_s = std::min(best.two_walks_s, seconds_since(t0));
      ctx.free(p);
    }
    {
      auto* p = fresh();
      const auto t0 = Clock::now();
      MigrateVma m;
      m.src = src.data();
      m.dst = dst.data();
      m.flags = MIGRATE_VMA_SELECT_SYSTEM | MIGRATE_VMA_SELECT_COMPOUND;
      SnapshotRange r;
      r.start = p;
      r.end = p + bytes;
      r.pfns = pfns.data();
      r.owner = owner;
      r.default_flags = SNAPSHOT_REQ_MIGRATE;
      r.migrate = &m;
      check(snapshot_range(ctx, r));
      finish(m);
      best.one_walk_s = std::min(best.one_walk_s, seconds_since(t0));
      ctx.free(p);
    }
  }
  return best;
}

}  // namespace uhmm::bench
