// Migrations over the mm core: to a device (migrate_vma_setup / _pages /
// _finalize and the rounds around them), back to the host (bring_back, the
// kernel's migrate_to_ram), device ranges evicted, pinning, and page unlock.
// Defined in migrate_vma.cpp, migrate_to_device.cpp and migrate_to_ram.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "uhmm/migrate.hpp"
#include "uhmm/migration_result.hpp"
#include "uhmm/page_state.hpp"

#include "mm.hpp"

namespace uhmm::detail {

// `leave`, when given, is asked under the block mutex about each host page
// setup would select (its index in the range): true leaves it where it is
// (a launch leaves thrashing pages on the host this way).
using PageFilter = std::function<bool(std::size_t page)>;

// A launch's migration holds its pages (device_launch.cpp): setup's walk also
// locks the span's unlocked pages already on the destination, and finalize
// leaves the pages it moved LOCKED instead of unlocking them. held[i] (one per
// page of the span, the caller's) says which pages the caller now holds and
// must unlock. Pressure eviction then needs no guard: the held pages are locked.
struct PageHold {
  std::vector<std::uint8_t> held;
};

MigrationResult migrate_to_device(Mm& mm, void* p, std::size_t bytes, OwnerId owner,
                                  const PageFilter* leave = nullptr, PageHold* hold = nullptr);
MigrationResult migrate_to_host(Mm& mm, void* p, std::size_t bytes);
std::size_t migrate_device_range(Mm& mm, OwnerId owner, DevicePageIndex first, std::size_t npages);
// migrate_device_range's work, on arguments already checked: moves every
// unlocked live page of owner in [first, first + npages) back to host. With
// `wait` it also waits for locked pages (migrate_device_range, pool
// shrink); without, it skips them (eviction under pressure, whose caller may
// hold page locks itself). Pages whose copy fails stay on the device.
struct DeviceRangeEviction {
  std::size_t moved = 0;
  std::size_t failed = 0;
  bool skipped_locked = false;  // without wait: some pages were locked and left
  Status status;                // why pages failed (ok when none did)
};
DeviceRangeEviction evict_device_range(Mm& mm, OwnerId owner, DevicePageIndex first, std::size_t npages,
                                       bool wait);
// Caps owner's pool at `bytes` and evicts down to it (Context::set_device_pool_limit).
std::size_t set_device_pool_limit(Mm& mm, OwnerId owner, std::size_t bytes);
std::vector<PageState> residency(Mm& mm, const void* p, std::size_t bytes);
// Sets or clears PINNED; pinning then brings the span's device pages back.
MigrationResult set_pinned(Mm& mm, void* p, std::size_t bytes, bool pinned);

// Brings locked device pages of one block back to host RAM and updates their
// mirror entries; they stay LOCKED and their waiters asleep (the caller
// unlocks, which wakes them). Pre: `pages` are in
// ascending order, in one block, LOCKED and Device. Returns the pages that
// could not come back (still on their device). Never throws. A page the
// application discards meanwhile (DISCARDED) is no failure: unlock_pages()
// empties it, and frees its device page if it was not installed.
struct BackResult {
  std::size_t moved = 0;
  std::size_t dropped = 0;  // pages the application unmapped: device copies released, nothing installed
  std::vector<std::size_t> failed;
  Status status;
};
// Interval notifiers hear of it first as `kind`, for `cause` (the evicting
// device, or kNoOwner: the pages go to the host).
BackResult bring_back(Mm& mm, ManagedRange& range, std::span<const std::size_t> pages, std::byte* staging,
                      InvalidateKind kind = InvalidateKind::migrate, OwnerId cause = kNoOwner) noexcept;
// Clears LOCKED on pages (ascending) and announces it, then wakes threads
// waiting on them: a faulting access returns only once the mirror says
// where its page is. A page the application discarded meanwhile (DISCARDED)
// becomes a FREED host page here, whatever its holder did with it: the page
// tables say later whether it is gone.
void unlock_pages(Mm& mm, ManagedRange& range, std::span<const std::size_t> pages) noexcept;

// The per-migration state migrate_vma_setup hands to _pages and _finalize.
// `visit`, when given, sees each page of the one walk under its block mutex:
// its index, its entry before setup locked it, and its src word (the range
// snapshot's SNAPSHOT_REQ_MIGRATE rides on this walk).
using SetupVisitor = std::function<void(std::size_t i, MirrorEntry before, std::uint64_t src)>;
void migrate_vma_setup(Mm& mm, MigrateVma& args, const SetupVisitor* visit = nullptr,
                       const PageFilter* leave = nullptr, PageHold* hold = nullptr);
std::size_t migrate_vma_pages(Mm& mm, MigrateVma& args);
// Returns why pages that migrate_vma_pages moved went back to the host (their
// host copies could not be dropped: mlock'ed memory, a full mapping table), or ok.
Status migrate_vma_finalize(Mm& mm, MigrateVma& args);

struct MigrationSession {
  RangeSpan span;
  std::vector<std::uint8_t> selected;   // per page: setup locked it
  std::vector<std::uint8_t> source;     // per page: its Residency when selected
  std::vector<std::uint8_t> duplicate;  // per page: read-mostly host page, keeps its host copy (Duplicated)
  std::vector<std::uint8_t> undropped;  // per page: finalize could not drop its host copy (made by setup:
                                        // finalize allocates nothing while it holds pages)
  PageHold* hold = nullptr;             // a launch's migration: finalize keeps what moved LOCKED
  bool pages_done = false;
};

}  // namespace uhmm::detail
