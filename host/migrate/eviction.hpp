// Eviction: making room in a device pool by moving its least recently used
// chunks back to host RAM through migrate_device_range's path. Used when a
// migration to the device finds the pool full (oversubscription) and when a
// pool is shrunk (Context::set_device_pool_limit).
//
// The unit is a device chunk (2 MiB, 512 device pages), not a block of a
// managed range: the pool can place a compound (2 MiB) run only in a chunk
// whose every page is free, and a block's pages may be spread over several
// chunks once single-page migrations have mixed them. Evicting a chunk frees
// exactly one reusable chunk; evicting a block might free none.
#pragma once

#include <cstddef>
#include <cstdint>

#include "uhmm/types.hpp"

namespace uhmm::detail {

class Mm;

// Pages of one range that an eviction must leave where they are: the request
// that needs the room (a prefetch never evicts its own pages).
struct EvictionGuard {
  std::uint32_t range_id = 0;
  std::size_t first = 0;  // pages [first, end) of the range
  std::size_t end = 0;
};

struct EvictionResult {
  std::size_t pages = 0;   // device pages moved back to host
  std::size_t chunks = 0;  // chunks from which at least one page moved
};

// Evicts owner's least recently used chunks until at least `pages` device
// pages were freed or no chunk is left to take. Chunks holding a page of
// `guard` (when given) are left alone; locked pages (a migration, fault or
// kernel holds them) are skipped, never waited for, so it is safe to call
// while the caller holds locks on other pages. Never throws: pages whose copy
// back fails stay on the device (they are counted as copy failures).
EvictionResult make_room(Mm& ctx, OwnerId owner, std::size_t pages, const EvictionGuard* guard) noexcept;

// owner's device pages an eviction could take now: named by a registered
// range and not locked. Pages in use beyond these are held by operations in
// flight (or by ranges being freed). Walks the whole pool: for a failure path.
std::size_t evictable_pages(Mm& ctx, OwnerId owner) noexcept;

// Evicts owner's least recently used chunks until at most `limit_pages`
// device pages are in use, waiting for pages locked by operations in flight.
// The caller holds no page locks. Throws uhmm::Error (device_error) when
// pages whose copy failed keep the pool above the limit; what could move has
// moved by then.
EvictionResult evict_down_to(Mm& ctx, OwnerId owner, std::size_t limit_pages);

}  // namespace uhmm::detail
