// The state behind uhmm::Context and the mm operations on it. The engine's
// pieces live in their own files: migrate_vma.cpp (to a device),
// migrate_to_ram.cpp (back to host), fault_service.cpp (CPU faults),
// launch.cpp (kernels over managed spans).
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "access_recency.hpp"
#include "atomic_counters.hpp"
#include "lock_order.hpp"
#include "observer.hpp"
#include "range_registry.hpp"
#include "reverse_map.hpp"
#include "staging_pool.hpp"
#include "uhmm/context.hpp"
#include "uhmm/detail/device.hpp"
#include "fault_mechanism.hpp"
#include "fault_policy.hpp"
#include "launch_stream_pool.hpp"
#include "notifier_registry.hpp"
#include "unlock_events.hpp"

namespace uhmm::detail {

class FaultService;

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

class ContextImpl {
 public:
  explicit ContextImpl(const ContextOptions& options);
  ~ContextImpl();
  ContextImpl(const ContextImpl&) = delete;
  ContextImpl& operator=(const ContextImpl&) = delete;

  void* allocate(std::size_t bytes);
  void free(void* base);
  MigrationResult migrate_to_device(void* p, std::size_t bytes, OwnerId owner, const PageFilter* leave = nullptr,
                                    PageHold* hold = nullptr);
  MigrationResult migrate_to_host(void* p, std::size_t bytes);
  std::size_t migrate_device_range(OwnerId owner, DevicePageIndex first, std::size_t npages);
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
  DeviceRangeEviction evict_device_range(OwnerId owner, DevicePageIndex first, std::size_t npages, bool wait);
  // Caps owner's pool at `bytes` and evicts down to it (Context::set_device_pool_limit).
  std::size_t set_device_pool_limit(OwnerId owner, std::size_t bytes);
  std::vector<PageState> residency(const void* p, std::size_t bytes) const;
  // Sets or clears PINNED; pinning then brings the span's device pages back.
  MigrationResult set_pinned(void* p, std::size_t bytes, bool pinned);

  // The device of `owner` (kNoOwner: the first); throws Errc::invalid_argument.
  Device& device(OwnerId owner, std::string_view call) const;
  DevicePagemap* pagemap(OwnerId owner) const noexcept;
  ReverseMap& rmap(OwnerId owner) noexcept { return *rmaps_[owner - 1]; }

  // Brings locked device pages of one block back to host RAM and updates their
  // mirror entries; they stay LOCKED and their waiters asleep (the caller
  // unlocks, which wakes them). Pre: `pages` are in
  // ascending order, in one block, LOCKED and Device. Returns the pages that
  // could not come back (still on their device). Never throws. A page the
  // application discards meanwhile (DISCARDED) is no failure: unlock() empties
  // it, and frees its device page if it was not installed.
  struct BackResult {
    std::size_t moved = 0;
    std::size_t dropped = 0;  // pages the application unmapped: device copies released, nothing installed
    std::vector<std::size_t> failed;
    Status status;
  };
  // Interval notifiers hear of it first as `kind`, for `cause` (the evicting
  // device, or kNoOwner: the pages go to the host).
  BackResult bring_back(ManagedRange& range, std::span<const std::size_t> pages, std::byte* staging,
                        InvalidateKind kind = InvalidateKind::migrate, OwnerId cause = kNoOwner) noexcept;
  // Clears LOCKED on pages (ascending) and announces it, then wakes threads
  // waiting on them: a faulting access returns only once the mirror says
  // where its page is. A page the application discarded meanwhile (DISCARDED)
  // becomes a FREED host page here, whatever its holder did with it
  // (finish_discarded): the page tables say later whether it is gone.
  void unlock(ManagedRange& range, std::span<const std::size_t> pages) noexcept;

  // A range the application unmapped entirely (mapping_events.cpp): dropped
  // from the registry at once, so its address can be reused; what it still
  // holds on a device is released once no operation uses it (reap_retired).
  void retire(const std::shared_ptr<ManagedRange>& range) noexcept;
  // Releases retired ranges no operation uses any more; with `wait`, all of
  // them. Returns how many device pages went back to their pools.
  std::size_t reap_retired(bool wait) noexcept;

  // Validates the mirror tables and the pools (expensive; checked builds call
  // it after every operation through check_invariants()). With `quiescent`
  // (no operation in flight) it also checks what only holds at rest: no page
  // locked, no device page backing two pages.
  Status validate(bool quiescent) const;
  void check_invariants() const;

  const ContextOptions options;
  FaultPolicy policy{options};
  // How faults reach the fault service and pages reach the range (declared
  // before the ranges: it outlives them).
  const std::unique_ptr<FaultMechanism> mechanism;
  RangeRegistry ranges;
  AtomicCounters counters;
  NotifierRegistry notifiers{counters.notifier_invalidations};  // interval notifiers (interval_notifier.hpp)
  Observer observer{options.trace_path};
  UnlockEvents unlocks;
  std::unique_ptr<AccessRecency> recency;  // set once the devices are open
  // Some range was advised once (range_advice.cpp): eviction then ranks
  // chunks by their pages' advice, which costs a look at each page.
  std::atomic<bool> advised{false};
  LaunchStreamPools launch_streams;        // cleared before the devices close
  // device_pagemap()'s answers: each device with signals deferred per call.
  std::vector<std::unique_ptr<DevicePagemap>> public_pagemaps;

  // Gives every device page a range still names back to its pool (returns how
  // many); the entries become Empty. Visits the touched blocks alone. Pre: no
  // operation uses the range (tests call it on a quiet one).
  std::size_t release_device_pages(ManagedRange& range) noexcept;

 private:
  std::vector<std::unique_ptr<Device>> devices_;
  std::vector<std::unique_ptr<ReverseMap>> rmaps_;
  std::unique_ptr<StagingPool> staging_;
  std::unique_ptr<FaultService> faults_;
  std::atomic<std::uint32_t> next_range_id_{0};
  Ranked<std::mutex, LockRank::retired> retired_mutex_;
  std::vector<std::shared_ptr<ManagedRange>> retired_;

  // Waits until no live part of a registered range overlaps [base, base + bytes)
  // (the application unmapped it and the event is on its way); throws if that
  // never happens.
  void wait_for_address_reuse(const std::byte* base, std::size_t bytes);
  // unlock() of the DISCARDED pages among `pages` (still LOCKED): their
  // device pages freed, they become host pages marked FREED (Empty where the
  // application unmapped them), PINNED kept, and LOCKED is cleared. Never
  // zapped again: a store the application made since its madvise is kept.
  void finish_discarded(ManagedRange& range, std::span<const std::size_t> pages) noexcept;

  friend class FaultService;
  friend class ::uhmm::Context;

 public:
  StagingPool& staging() noexcept { return *staging_; }
  std::size_t device_count() const noexcept { return devices_.size(); }
};

// The per-migration state migrate_vma_setup hands to _pages and _finalize.
// `visit`, when given, sees each page of the one walk under its block mutex:
// its index, its entry before setup locked it, and its src word (the range
// snapshot's SNAPSHOT_REQ_MIGRATE rides on this walk).
using SetupVisitor = std::function<void(std::size_t i, MirrorEntry before, std::uint64_t src)>;
void migrate_vma_setup(ContextImpl& ctx, MigrateVma& args, const SetupVisitor* visit = nullptr,
                       const PageFilter* leave = nullptr, PageHold* hold = nullptr);
std::size_t migrate_vma_pages(ContextImpl& ctx, MigrateVma& args);
// Returns why pages that migrate_vma_pages moved went back to the host (their
// host copies could not be dropped: mlock'ed memory, a full mapping table), or ok.
Status migrate_vma_finalize(ContextImpl& ctx, MigrateVma& args);

struct MigrationSession {
  RangeSpan span;
  std::vector<std::uint8_t> selected;  // per page: setup locked it
  std::vector<std::uint8_t> source;    // per page: its Residency when selected
  std::vector<std::uint8_t> duplicate; // per page: read-mostly host page, keeps its host copy (Duplicated)
  std::vector<std::uint8_t> undropped; // per page: finalize could not drop its host copy (made by setup:
                                       // finalize allocates nothing while it holds pages)
  PageHold* hold = nullptr;            // a launch's migration: finalize keeps what moved LOCKED
  bool pages_done = false;
};

}  // namespace uhmm::detail
