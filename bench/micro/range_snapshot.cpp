// Range snapshots (hmm_range_fault) of a 64 MiB range: the snapshot alone, in
// pages per second, and making a never-touched 64 MiB range device-resident
// two ways: two walks (snapshot with POPULATE, then migrate_vma_setup) and the
// one walk (snapshot with SNAPSHOT_REQ_MIGRATE), each finished with
// alloc_and_copy, migrate_vma_pages and migrate_vma_finalize. The one walk
// reports x_two_walks, its time over the two walks' measured earlier in the
// same run (below 1: the one walk is faster).
#include <benchmark/benchmark.h>

#include <cstring>
#include <string>
#include <vector>

#include "micro_context.hpp"
#include "startup_floors.hpp"

namespace uhmm::bench::micro {
namespace {

constexpr std::size_t kBytes = 64 * kMiB;
constexpr std::size_t kPages = kBytes / kPageSize;

void BM_SnapshotRange(benchmark::State& state) {
  Context ctx(options_with_pool(2 * kBlockSize));
  auto* data = static_cast<std::byte*>(ctx.allocate(kBytes));
  std::memset(data, 1, kBytes);  // host-resident: every page reported VALID | WRITE
  std::vector<std::uint64_t> pfns(kPages);
  SnapshotRange r;
  r.start = data;
  r.end = data + kBytes;
  r.pfns = pfns.data();
  r.owner = ctx.device_owner(0);
  for (auto _ : state) {
    const Status s = snapshot_range(ctx, r);
    if (!s) {
      fail(state, "snapshot_range: " + s.message);
      break;
    }
    benchmark::DoNotOptimize(pfns.data());
  }
  if ((pfns[kPages - 1] & SNAPSHOT_PFN_VALID) == 0) fail(state, "a host page was not reported valid");
  ctx.free(data);
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(kPages));
}
BENCHMARK(BM_SnapshotRange)->Unit(benchmark::kMicrosecond)->UseRealTime();

enum class Walks { two, one };
double g_two_walks_s = 0;  // mean seconds of the two walks, for the one walk's ratio

// Makes the never-touched range [p, p + kBytes) device-resident; returns the
// seconds it took, or a message.
struct WalkOutcome {
  double seconds = 0;
  std::string error;
};
WalkOutcome migrate_fresh_range(Context& ctx, std::byte* p, Walks walks, std::vector<std::uint64_t>& pfns,
                                std::vector<std::uint64_t>& src, std::vector<std::uint64_t>& dst) {
  const OwnerId owner = ctx.device_owner(0);
  const auto t0 = Clock::now();
  MigrateVma m;
  m.src = src.data();
  m.dst = dst.data();
  m.flags = MIGRATE_VMA_SELECT_SYSTEM | MIGRATE_VMA_SELECT_COMPOUND;
  SnapshotRange r;
  r.start = p;
  r.end = p + kBytes;
  r.pfns = pfns.data();
  r.owner = owner;
  if (walks == Walks::two) {
    r.default_flags = SNAPSHOT_REQ_POPULATE;
    if (const Status s = snapshot_range(ctx, r); !s) return {0, "snapshot_range: " + s.message};
    m.start = p;
    m.end = p + kBytes;
    m.destination = owner;
    migrate_vma_setup(ctx, m);
  } else {
    r.default_flags = SNAPSHOT_REQ_MIGRATE;
    r.migrate = &m;
    if (const Status s = snapshot_range(ctx, r); !s) return {0, "snapshot_range: " + s.message};
  }
  // Once set up, a migration is always finished (pages, finalize), even
  // when the copy failed, or the range would stay locked.
  const Status copied = device_pagemap(ctx, owner).alloc_and_copy(m);
  const std::size_t moved = migrate_vma_pages(ctx, m);
  migrate_vma_finalize(ctx, m);
  const double seconds = seconds_since(t0);
  if (!copied) return {0, "alloc_and_copy: " + copied.message};
  if (moved != kPages) return {0, "pages did not all migrate"};
  return {seconds, {}};
}

void BM_MigrateFreshRange(benchmark::State& state, Walks walks) {
  Context ctx(options_with_pool(kBytes + 2 * kBlockSize));
  std::vector<std::uint64_t> pfns(kPages), src(kPages), dst(kPages);
  double seconds = 0;
  for (auto _ : state) {
    auto* p = static_cast<std::byte*>(ctx.allocate(kBytes));  // fresh, untimed
    const WalkOutcome w = migrate_fresh_range(ctx, p, walks, pfns, src, dst);
    ctx.free(p);
    if (!w.error.empty()) {
      fail(state, w.error);
      break;
    }
    state.SetIterationTime(w.seconds);
    seconds += w.seconds;
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(kPages));
  if (state.iterations() == 0 || seconds <= 0) return;
  const double mean_s = seconds / static_cast<double>(state.iterations());
  if (walks == Walks::two)
    g_two_walks_s = mean_s;
  else if (g_two_walks_s > 0)
    state.counters["x_two_walks"] = mean_s / g_two_walks_s;
}
// Registered in this order so that the two walks' time is there for the ratio.
BENCHMARK_CAPTURE(BM_MigrateFreshRange, two_walks, Walks::two)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_MigrateFreshRange, one_walk, Walks::one)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace uhmm::bench::micro
