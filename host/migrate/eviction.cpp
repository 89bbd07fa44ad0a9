#include "eviction.hpp"

#include <algorithm>
#include <chrono>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "migration.hpp"
#include "uhmm/detail/log.hpp"

namespace uhmm::detail {
namespace {

// Where advice ranks a chunk of owner's for eviction: chunks holding a page
// that prefers the host go first, chunks holding a page that prefers this
// device (or that this device accesses) last, the others between.
enum class AdviceRank : std::uint8_t { prefers_host = 0, neutral = 1, prefers_device = 2 };

AdviceRank advice_rank(Mm& ctx, OwnerId owner, std::size_t chunk) {
  const ReverseMap& map = ctx.rmap(owner);
  const std::size_t first = chunk * kPagesPerChunk;
  const std::size_t end = std::min(first + kPagesPerChunk, map.capacity());
  AdviceRank rank = AdviceRank::neutral;
  RangeSpan span;  // the last range looked up: a chunk's pages mostly share one
  for (std::size_t k = first; k < end; ++k) {
    const auto target = map.get(static_cast<DevicePageIndex>(k));
    if (!target) continue;
    if (!span || span.range().id() != target->range_id) span = ctx.ranges.find_by_id(target->range_id);
    if (!span || span.range().advice().empty()) continue;
    const RangeAdvice a = span.range().advice().get(target->page);
    if (a.preferred == Location::device(owner) || a.accessed_by_device(owner)) return AdviceRank::prefers_device;
    if (a.preferred.is_host()) rank = AdviceRank::prefers_host;
  }
  return rank;
}

// owner's chunks in eviction order: by advice rank once any range was
// advised, then least recently used first (ties: lower chunk first).
std::vector<std::size_t> chunks_by_age(Mm& ctx, OwnerId owner) {
  const std::size_t n = ctx.recency->chunks(owner);
  const bool ranked = ctx.advised.load(std::memory_order_relaxed);
  std::vector<std::tuple<AdviceRank, std::uint64_t, std::size_t>> aged(n);
  for (std::size_t c = 0; c < n; ++c)
    aged[c] = {ranked ? advice_rank(ctx, owner, c) : AdviceRank::neutral, ctx.recency->stamp(owner, c), c};
  if (ranked) AtomicCounters::add(ctx.counters.advice_ranked_evictions, 1);
  std::sort(aged.begin(), aged.end());
  std::vector<std::size_t> out(n);
  for (std::size_t c = 0; c < n; ++c) out[c] = std::get<2>(aged[c]);
  return out;
}

struct ChunkPages {
  DevicePageIndex first = 0;
  std::size_t count = 0;  // usable pages of the chunk (the last may be short)
};

ChunkPages chunk_pages(Mm& ctx, OwnerId owner, std::size_t chunk) {
  const std::size_t capacity = ctx.rmap(owner).capacity();
  const std::size_t first = chunk * kPagesPerChunk;
  return {static_cast<DevicePageIndex>(first), std::min(kPagesPerChunk, capacity - first)};
}

// What the reverse map says the chunk holds (a hint: entries are re-checked
// under their block locks by the eviction itself).
struct ChunkContents {
  std::size_t live = 0;
  bool guarded = false;
};

ChunkContents contents(Mm& ctx, OwnerId owner, ChunkPages pages, const EvictionGuard* guard) {
  ChunkContents out;
  const ReverseMap& map = ctx.rmap(owner);
  for (std::size_t k = 0; k < pages.count; ++k) {
    const auto target = map.get(static_cast<DevicePageIndex>(pages.first + k));
    if (!target) continue;
    ++out.live;
    if (guard != nullptr && target->range_id == guard->range_id && target->page >= guard->first &&
        target->page < guard->end)
      out.guarded = true;
  }
  return out;
}

void count(Mm& ctx, const EvictionResult& r) {
  AtomicCounters::add(ctx.counters.device_eviction_chunks, r.chunks);
  AtomicCounters::add(ctx.counters.device_eviction_bytes, r.pages * kPageSize);
}

}  // namespace

EvictionResult make_room(Mm& ctx, OwnerId owner, std::size_t pages, const EvictionGuard* guard) noexcept {
  EvictionResult out;
  if (ctx.pagemap(owner) == nullptr || pages == 0) return out;
  try {
    for (std::size_t chunk : chunks_by_age(ctx, owner)) {
      if (out.pages >= pages) break;
      const ChunkPages cp = chunk_pages(ctx, owner, chunk);
      const ChunkContents c = contents(ctx, owner, cp, guard);
      if (c.live == 0 || c.guarded) continue;
      const DeviceRangeEviction r = evict_device_range(ctx, owner, cp.first, cp.count, /*wait=*/false);
      if (!r.status)
        log().warn("eviction: {} pages of device {} chunk {} stayed on the device: {}", r.failed, owner, chunk,
                   r.status.message);
      out.pages += r.moved;
      out.chunks += r.moved > 0;
    }
  } catch (const std::exception& e) {
    // Only host allocation can throw here; what moved has moved.
    log().error("eviction: {}", e.what());
  }
  count(ctx, out);
  return out;
}

std::size_t evictable_pages(Mm& ctx, OwnerId owner) noexcept {
  const ReverseMap& map = ctx.rmap(owner);
  std::size_t out = 0;
  RangeSpan span;  // the last range looked up: neighbouring pages mostly share one
  for (std::size_t k = 0; k < map.capacity(); ++k) {
    const auto target = map.get(static_cast<DevicePageIndex>(k));
    if (!target) continue;
    if (!span || span.range().id() != target->range_id) span = ctx.ranges.find_by_id(target->range_id);
    if (!span || target->page >= span.range().npages()) continue;
    auto& table = span.range().table();
    std::lock_guard lock(table.block_mutex(MirrorTable::block_of(target->page)));
    out += !table.entry(target->page).locked();
  }
  return out;
}

EvictionResult evict_down_to(Mm& ctx, OwnerId owner, std::size_t limit_pages) {
  EvictionResult out;
  DevicePagemap* pagemap = ctx.pagemap(owner);
  Status failure;
  // A sweep waits for locked pages; a second sweep is needed only when pages
  // arrived meanwhile (migrations that had allocated before the limit fell).
  constexpr int kInFlightSweeps = 1000;
  for (int sweep = 0; pagemap->pages_in_use() > limit_pages; ++sweep) {
    std::size_t moved = 0;
    for (std::size_t chunk : chunks_by_age(ctx, owner)) {
      if (pagemap->pages_in_use() <= limit_pages) break;
      const ChunkPages cp = chunk_pages(ctx, owner, chunk);
      if (contents(ctx, owner, cp, nullptr).live == 0) continue;
      const DeviceRangeEviction r = evict_device_range(ctx, owner, cp.first, cp.count, /*wait=*/true);
      if (!r.status && failure) failure = r.status;
      moved += r.moved;
      out.pages += r.moved;
      out.chunks += r.moved > 0;
    }
    if (moved == 0) {
      // What is left failed to copy back, or is still in flight to the device
      // (allocated before the limit fell, not yet recorded): give those a moment.
      if (!failure || sweep >= kInFlightSweeps) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  count(ctx, out);
  if (const std::size_t in_use = pagemap->pages_in_use(); in_use > limit_pages)
    throw Error(failure ? Errc::busy : Errc::device_error,
                fmt::format("device {}: {} pages stay above the limit of {} pages: {}", owner, in_use - limit_pages,
                            limit_pages, failure ? "still in flight" : failure.message));
  return out;
}

}  // namespace uhmm::detail
