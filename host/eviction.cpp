#include "eviction.hpp"

#include <algorithm>
#include <chrono>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "context_impl.hpp"
#include "uhmm/detail/log.hpp"

namespace uhmm::detail {
namespace {

// owner's chunks, least recently used first (ties: lower chunk first).
std::vector<std::size_t> chunks_by_age(const ContextImpl& ctx, OwnerId owner) {
  const std::size_t n = ctx.recency->chunks(owner);
  std::vector<std::pair<std::uint64_t, std::size_t>> aged(n);
  for (std::size_t c = 0; c < n; ++c) aged[c] = {ctx.recency->stamp(owner, c), c};
  std::sort(aged.begin(), aged.end());
  std::vector<std::size_t> out(n);
  for (std::size_t c = 0; c < n; ++c) out[c] = aged[c].second;
  return out;
}

struct ChunkPages {
  DevicePageIndex first = 0;
  std::size_t count = 0;  // usable pages of the chunk (the last may be short)
};

ChunkPages chunk_pages(ContextImpl& ctx, OwnerId owner, std::size_t chunk) {
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

ChunkContents contents(ContextImpl& ctx, OwnerId owner, ChunkPages pages, const EvictionGuard* guard) {
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

void count(ContextImpl& ctx, const EvictionResult& r) {
  AtomicCounters::add(ctx.counters.device_eviction_chunks, r.chunks);
  AtomicCounters::add(ctx.counters.device_eviction_bytes, r.pages * kPageSize);
}

}  // namespace

EvictionResult make_room(ContextImpl& ctx, OwnerId owner, std::size_t pages, const EvictionGuard* guard) noexcept {
  EvictionResult out;
  if (ctx.pagemap(owner) == nullptr || pages == 0) return out;
  try {
    for (std::size_t chunk : chunks_by_age(ctx, owner)) {
      if (out.pages >= pages) break;
      const ChunkPages cp = chunk_pages(ctx, owner, chunk);
      const ChunkContents c = contents(ctx, owner, cp, guard);
      if (c.live == 0 || c.guarded) continue;
      const ContextImpl::DeviceRangeEviction r = ctx.evict_device_range(owner, cp.first, cp.count, /*wait=*/false);
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

EvictionResult evict_down_to(ContextImpl& ctx, OwnerId owner, std::size_t limit_pages) {
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
      const ContextImpl::DeviceRangeEviction r = ctx.evict_device_range(owner, cp.first, cp.count, /*wait=*/true);
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
