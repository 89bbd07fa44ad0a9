#include "context_impl.hpp"

#include <algorithm>
#include <chrono>
#include <thread>

#include <fmt/format.h>

#include "deferring_pagemap.hpp"
#include "eviction.hpp"
#include "fault_service.hpp"
#include "owner_ids.hpp"
#include "written_pages.hpp"
#include "uhmm/detail/log.hpp"
#include "uhmm/migrate.hpp"

namespace uhmm::detail {

ContextImpl::ContextImpl(const ContextOptions& opts) : options(opts), mechanism(open_fault_mechanism(options)) {
  devices_ = open_devices(options, [this](OwnerId owner) { return pagemap(owner); });
  if (devices_.empty()) throw Error(Errc::device_error, "no device was opened");
  std::vector<std::size_t> capacities;
  for (const auto& d : devices_) {
    rmaps_.push_back(std::make_unique<ReverseMap>(d->capacity_pages()));
    capacities.push_back(d->capacity_pages());
  }
  recency = std::make_unique<AccessRecency>(capacities);
  for (const auto& d : devices_) public_pagemaps.push_back(std::make_unique<DeferringPagemap>(*d));
  staging_ = std::make_unique<StagingPool>(devices_.front()->backend());
  faults_ = std::make_unique<FaultService>(*this);
  log().info("context ready: {} device(s) on the {} backend, fault-ahead {} (prefetch threshold {}%), {} faults",
             devices_.size(), devices_.front()->info().backend, options.fault_ahead ? "on" : "off",
             options.prefetch_threshold, mechanism->name());
}

ContextImpl::~ContextImpl() {
  // Ranges first (their device pages go back to the pools), then the fault
  // service, then the devices.
  for (const auto& range : ranges.all()) {
    try {
      free(range->base());
    } catch (const std::exception& e) {
      log().error("freeing a range at teardown failed: {}", e.what());
    }
  }
  reap_retired(/*wait=*/true);
  faults_.reset();
  reap_retired(/*wait=*/true);  // a range the service retired while stopping
  staging_.reset();
  launch_streams.clear();
  devices_.clear();
}

Device& ContextImpl::device(OwnerId owner, std::string_view call) const {
  if (owner == kNoOwner) return *devices_.front();
  if (owner > devices_.size())
    throw Error(Errc::invalid_argument,
                fmt::format("{}: device {} does not exist (this context has devices 1..{})", call, owner, devices_.size()));
  return *devices_[owner - 1];
}

DevicePagemap* ContextImpl::pagemap(OwnerId owner) const noexcept {
  return owner == kNoOwner || owner > devices_.size() ? nullptr : devices_[owner - 1].get();
}

void* ContextImpl::allocate(std::size_t bytes) {
  if (bytes == 0) throw Error(Errc::zero_length, "allocate: zero bytes");
  if (bytes > (std::size_t{1} << 40))
    throw Error(Errc::invalid_argument, fmt::format("allocate: {} bytes is more than the 1 TiB a range may span", bytes));
  const std::size_t rounded = (bytes + kPageSize - 1) & ~(kPageSize - 1);
  reap_retired(/*wait=*/false);
  try {
    auto range = std::make_shared<ManagedRange>(next_range_id_.fetch_add(1), rounded, *mechanism);
    void* base = range->base();
    wait_for_address_reuse(range->base(), range->bytes());
    ranges.add(std::move(range));
    return base;
  } catch (const std::bad_alloc&) {
    throw OutOfMemory(fmt::format("allocate: no host memory to manage {} bytes", bytes));
  }
}

void ContextImpl::free(void* base) {
  ranges.gate().wait_applied();  // a munmap this thread did first has retired the range
  reap_retired(/*wait=*/false);
  auto range = ranges.remove(base, "free");
  // Nothing new can reach the range; wait for what already has.
  range->wait_idle();
  {
    const auto invalidation = notifiers.invalidate(*range, 0, range->npages(), InvalidateKind::free, kNoOwner);
    release_device_pages(*range);
  }
  // ~ManagedRange unregisters (waking any thread still faulting here) and
  // unmaps what the application left mapped.
}

std::size_t ContextImpl::release_device_pages(ManagedRange& range) noexcept {
  std::size_t released = 0;
  auto& table = range.table();
  // Only the blocks ever used: freeing a sparse 1 TiB range costs what it touched.
  table.for_each_touched_block([&](std::size_t block) {
    // One block at a time: a huge range's list would cost more than its table.
    std::vector<std::pair<OwnerId, DevicePageIndex>> to_free;
    {
      std::lock_guard lock(table.block_mutex(block));
      for (std::size_t p = table.block_begin(block); p < table.block_end(block); ++p) {
        const MirrorEntry e = table.entry(p);
        if (e.bits() == 0) continue;  // Empty, unlocked: the common case of a sparse table, left untouched
        if (e.residency() == Residency::Device || e.residency() == Residency::Duplicated) {
          try {
            to_free.emplace_back(e.device_page().owner, e.device_page().index);
          } catch (const std::bad_alloc&) {
            continue;  // leaks the device page rather than losing track of the range
          }
        }
        table.entry(p) = MirrorEntry{};  // no entry names a device page once it is free
      }
    }
    std::sort(to_free.begin(), to_free.end());
    released += to_free.size();
    std::vector<DevicePageIndex> indices;
    for (std::size_t i = 0; i < to_free.size();) {
      const OwnerId owner = to_free[i].first;
      indices.clear();
      for (; i < to_free.size() && to_free[i].first == owner; ++i) {
        rmaps_[owner - 1]->clear(to_free[i].second);
        try {
          indices.push_back(to_free[i].second);
        } catch (const std::bad_alloc&) {
          devices_[owner - 1]->page_free(std::span(&to_free[i].second, 1));
        }
      }
      devices_[owner - 1]->page_free(indices);
    }
  });
  return released;
}

void ContextImpl::retire(const std::shared_ptr<ManagedRange>& range) noexcept {
  if (!ranges.retire(*range)) return;  // freed meanwhile
  AtomicCounters::add(counters.ranges_retired, 1);
  log().warn("the application unmapped the managed range at {} ({} bytes) without freeing it; it is retired",
             static_cast<void*>(range->base()), range->bytes());
  try {
    std::lock_guard lock(retired_mutex_);
    retired_.push_back(range);
  } catch (const std::bad_alloc&) {
    log().error("no memory to track a retired range: its device pages stay allocated");
  }
}

std::size_t ContextImpl::reap_retired(bool wait) noexcept {
  std::vector<std::shared_ptr<ManagedRange>> ready;
  {
    std::lock_guard lock(retired_mutex_);
    if (retired_.empty()) return 0;
    for (auto it = retired_.begin(); it != retired_.end();) {
      if (wait || (*it)->idle()) {
        ready.push_back(std::move(*it));
        it = retired_.erase(it);
      } else {
        ++it;
      }
    }
  }
  std::size_t released = 0;
  for (const auto& range : ready) {
    range->wait_idle();
    released += release_device_pages(*range);
  }
  return released;
}

void ContextImpl::wait_for_address_reuse(const std::byte* base, std::size_t bytes) {
  const auto lo = reinterpret_cast<std::uintptr_t>(base);
  // The kernel gave us this address, so whatever range had it was unmapped;
  // its UNMAP event is read or on its way (the service applies it in
  // microseconds). Registering before it is applied would let it hit the new range.
  for (int round = 0;; ++round) {
    ranges.gate().wait_applied();
    bool live = false;
    for (const auto& other : ranges.overlapping(lo, lo + bytes)) {
      const auto other_lo = reinterpret_cast<std::uintptr_t>(other->base());
      const std::size_t first = lo > other_lo ? (lo - other_lo) >> kPageShift : 0;
      const std::size_t end = std::min(other->npages(), (lo + bytes - other_lo + kPageSize - 1) >> kPageShift);
      if (!other->all_unmapped(first, end)) live = true;
    }
    if (!live) return;
    // Without mapping events (signal mode) no UNMAP is coming: fail at once.
    if (round == (mechanism->follows_mapping_changes() ? 2000 : 0))
      throw Error(Errc::system_error,
                  fmt::format("allocate: the kernel reused {} while uhmm still manages it there; the application "
                              "unmapped a managed range without free() and this kernel did not report it",
                              static_cast<const void*>(base)));
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

MigrationResult ContextImpl::migrate_to_device(void* p, std::size_t bytes, OwnerId owner, const PageFilter* leave,
                                               PageHold* hold) {
  const std::uint64_t start_ns = now_ns();
  Device& dev = device(owner, "migrate_to_device");
  const RangeSpan span = ranges.resolve(p, bytes, "migrate_to_device");  // validates before anything changes
  const auto& table = span.range().table();
  enum : std::uint8_t { kUntouched, kMoved, kFailed };
  std::vector<std::uint8_t> outcome(span.count(), kUntouched);
  std::vector<std::uint64_t> src(span.count()), dst(span.count());
  Status failure;        // of the latest pass that left pages behind, in any round
  Status round_failure;  // the same, in this round only

  // One pass per source: host and never-touched pages first, then the pages of
  // each other device (selected by owner, copied device to device).
  auto pass = [&](std::uint64_t flags, OwnerId from) {
    MigrateVma args;
    args.start = p;
    args.end = static_cast<std::byte*>(p) + bytes;
    args.src = src.data();
    args.dst = dst.data();
    args.flags = flags;
    args.pgmap_owner = from;
    args.destination = dev.owner();
    migrate_vma_setup(*this, args, nullptr, leave, hold);
    const std::uint64_t copy_start = now_ns();
    const Status copied = args.cpages > 0 ? dev.alloc_and_copy(args) : Status{};
    AtomicCounters::add(counters.copy_ns_to_device, args.cpages > 0 ? now_ns() - copy_start : 0);
    migrate_vma_pages(*this, args);
    const Status kept = migrate_vma_finalize(*this, args);  // pages whose host copies could not go
    // src[i] now: MIGRATE for pages that moved; other bits without MIGRATE for
    // pages selected that could not move; 0 for pages not selected.
    std::size_t failed = 0;
    for (std::size_t i = 0; i < span.count(); ++i) {
      if (src[i] & MIGRATE_PFN_MIGRATE) outcome[i] = kMoved;
      else if (src[i] != 0) outcome[i] = kFailed, ++failed;
    }
    if (failed > 0) {
      round_failure = !kept ? kept : copied ? Status{Errc::device_error, "pages were not migrated"} : copied;
      if (round_failure.code != Errc::out_of_memory) AtomicCounters::add(counters.copy_failures, 1);
      failure = round_failure;
    }
  };
  auto all_passes = [&] {
    pass(MIGRATE_VMA_SELECT_SYSTEM | MIGRATE_VMA_FAULT | MIGRATE_VMA_SELECT_COMPOUND, kNoOwner);
    for (const OwnerId other : owner_ids(devices_.size())) {
      if (other == dev.owner()) continue;
      bool present = false;
      for (std::size_t q = span.first(); q < span.end() && !present; ++q) {
        std::lock_guard lock(table.block_mutex(MirrorTable::block_of(q)));
        const MirrorEntry e = table.entry(q);
        present = e.residency() == Residency::Device && e.device_page().owner == other;
      }
      if (present) pass(MIGRATE_VMA_SELECT_DEVICE_PRIVATE, other);
    }
  };

  // A full pool: evict the least recently used chunks, never this request's
  // own pages, and run the passes again for what is left. A request larger
  // than the pool migrates what fits; the rest fails with out_of_memory. The
  // rounds are bounded: under contention other threads may take the room
  // each round frees (each round still moves pages for someone). A held
  // migration needs no guard: its pages on the device are locked.
  constexpr int kEvictionRounds = 16;
  const EvictionGuard guard{span.range().id(), span.first(), span.end()};
  const EvictionGuard* own = hold != nullptr ? nullptr : &guard;
  for (int round = 0;; ++round) {
    round_failure = Status{};
    all_passes();
    const auto left = static_cast<std::size_t>(std::count(outcome.begin(), outcome.end(), kFailed));
    if (left == 0 || round_failure.code != Errc::out_of_memory || !options.evict || round + 1 == kEvictionRounds)
      break;
    // Ranges the application unmapped hold device pages no registered range
    // names (eviction cannot find them by id): releasing those makes room first.
    if (reap_retired(/*wait=*/false) == 0 && make_room(*this, dev.owner(), left, own).pages == 0) break;
  }

  // Per page, the last pass that selected it decides (a page another thread
  // moved between passes may be taken twice, and counts once). Pages already
  // here are used by this request too: their chunks count as recently used.
  MigrationResult result;
  result.pages = span.count();
  const std::uint64_t now = recency->tick();
  for (std::size_t i = 0; i < span.count(); ++i) {
    if (outcome[i] == kMoved) ++result.migrated;
    if (outcome[i] == kFailed) ++result.failed;
    if (outcome[i] != kUntouched) continue;
    const std::size_t page = span.first() + i;
    std::lock_guard lock(table.block_mutex(MirrorTable::block_of(page)));
    const MirrorEntry e = table.entry(page);
    const bool there = (e.residency() == Residency::Device || e.residency() == Residency::Duplicated) &&
                       e.device_page().owner == dev.owner() && (!e.locked() || (hold != nullptr && hold->held[i]));
    there ? ++result.already : ++result.skipped;
    if (there) recency->touch(e.device_page(), now);
  }
  // A page that failed in an earlier round and was locked by someone else in
  // the later ones failed for that round's reason.
  if (result.failed > 0) {
    result.status = failure ? Status{Errc::device_error, "pages were not migrated"} : failure;
    if (result.status.code == Errc::out_of_memory) AtomicCounters::add(counters.alloc_failures, result.failed);
  }
  observer.migrated_to_device(start_ns, dev.owner(), result);
  return result;
}

std::size_t ContextImpl::set_device_pool_limit(OwnerId owner, std::size_t bytes) {
  Device& dev = device(owner, "set_device_pool_limit");
  const std::size_t capacity = dev.capacity_pages() * kPageSize;
  if (bytes > capacity)
    throw Error(Errc::invalid_argument,
                fmt::format("set_device_pool_limit: {} bytes is more than device {}'s pool of {} bytes "
                            "(device_pool_bytes); a pool cannot grow past it",
                            bytes, dev.owner(), capacity));
  // Cap first, so that no migration fills what the eviction empties.
  dev.set_page_limit(bytes / kPageSize);
  const std::size_t evicted = evict_down_to(*this, dev.owner(), bytes / kPageSize).pages;
  // The device's memory shrinks too, not only the pool's count (issue 16, defect 8).
  (void)dev.release_free_chunks();
  return evicted;
}

std::vector<PageState> ContextImpl::residency(const void* p, std::size_t bytes) const {
  const RangeSpan span = ranges.resolve(p, bytes, "residency");
  learn_written_pages(const_cast<ContextImpl&>(*this), span.range(), span.first(), span.count());
  auto& table = span.range().table();
  std::vector<PageState> out(span.count());
  for (std::size_t block = table.block_of(span.first()); block <= table.block_of(span.end() - 1); ++block) {
    const std::size_t lo = std::max(span.first(), table.block_begin(block));
    const std::size_t hi = std::min(span.end(), table.block_end(block));
    std::lock_guard lock(table.block_mutex(block));
    for (std::size_t q = lo; q < hi; ++q) {
      const MirrorEntry e = table.entry(q);
      PageState& s = out[q - span.first()];
      s.residency = e.residency();
      if (e.residency() == Residency::Device || e.residency() == Residency::Duplicated) s.device = e.device_page();
      s.locked = e.locked();
      s.pinned = e.has(MirrorEntry::kPinned);
      s.dirty = e.has(MirrorEntry::kDirty);
      s.writable = e.has(MirrorEntry::kWrite);
    }
  }
  return out;
}

MigrationResult ContextImpl::set_pinned(void* p, std::size_t bytes, bool pinned) {
  const char* call = pinned ? "pin" : "unpin";
  const RangeSpan span = ranges.resolve(p, bytes, call);
  auto& table = span.range().table();
  if (pinned)
    notifiers.invalidate(span.range(), span.first(), span.end(), InvalidateKind::protection_change, kNoOwner).end();
  for (std::size_t block = table.block_of(span.first()); block <= table.block_of(span.end() - 1); ++block) {
    const std::size_t lo = std::max(span.first(), table.block_begin(block));
    const std::size_t hi = std::min(span.end(), table.block_end(block));
    std::lock_guard lock(table.block_mutex(block));
    for (std::size_t q = lo; q < hi; ++q)
      pinned ? table.entry(q).set(MirrorEntry::kPinned) : table.entry(q).clear(MirrorEntry::kPinned);
  }
  if (!pinned) return {};
  // Pages locked by a migration in flight may still land on a device; no new
  // migration selects them now, so wait for those and bring them back too.
  MigrationResult total;
  total.pages = span.count();
  for (;;) {
    const std::uint64_t generation = unlocks.generation();
    const MigrationResult r = migrate_to_host(p, bytes);
    total.migrated += r.migrated;
    if (!r.status && total.status) total.status = r.status;
    std::size_t locked = 0, on_device = 0;
    for (const PageState& state : residency(p, bytes)) {
      locked += state.locked;
      on_device += state.residency == Residency::Device;
    }
    // Done when nothing is locked and every page still on a device is one this
    // pass failed to copy back. A migration in flight can unlock its pages on a
    // device between the pass above and the residency check: another pass
    // brings them back (they are pinned now, so nothing moves them out again).
    if (locked == 0 && on_device <= r.failed) {
      total.failed = on_device;  // could not come back (copy failures)
      total.already = total.pages - total.migrated - total.failed;
      return total;
    }
    if (locked == 0) continue;
    unlocks.wait_after(generation);
  }
}

Status ContextImpl::validate(bool quiescent) const {
  for (const auto& d : devices_)
    if (Status s = d->validate(); !s) return s;
  // Each entry is checked under its block lock, where "names device page i"
  // implies "i is allocated" at every instant (a page is allocated before an
  // entry names it and freed after the entry stops naming it). That no device
  // page backs two entries can only be checked when nothing moves.
  std::vector<std::vector<std::uint8_t>> seen(devices_.size());
  if (quiescent)
    for (std::size_t d = 0; d < devices_.size(); ++d) seen[d].assign(devices_[d]->capacity_pages(), 0);
  for (const auto& range : ranges.all()) {
    auto& table = range->table();
    if (Status s = table.validate(); !s) return s;
    Status bad;
    table.for_each_touched_block([&](std::size_t block) {  // the others are Empty
      std::lock_guard lock(table.block_mutex(block));
      for (std::size_t p = table.block_begin(block); p < table.block_end(block) && bad; ++p) {
        const MirrorEntry e = table.entry(p);
        if (quiescent && e.locked()) {
          bad = {Errc::system_error, fmt::format("range {} page {} is still locked", range->id(), p)};
          continue;
        }
        if (e.residency() != Residency::Device && e.residency() != Residency::Duplicated) continue;
        const DevicePage page = e.device_page();
        if (page.owner == kNoOwner || page.owner > devices_.size() ||
            page.index >= devices_[page.owner - 1]->capacity_pages() ||
            devices_[page.owner - 1]->address_of(page.index) == 0)
          bad = {Errc::system_error, fmt::format("range {} page {} names device page {}:{}, which is not allocated",
                                                 range->id(), p, page.owner, page.index)};
        else if (quiescent && seen[page.owner - 1][page.index]++ != 0)
          bad = {Errc::system_error, fmt::format("device page {}:{} backs two pages", page.owner, page.index)};
      }
    });
    if (!bad) return bad;
  }
  return {};
}

void ContextImpl::check_invariants() const {
#if defined(UHMM_EXPENSIVE_CHECKS)
  if (Status s = validate(/*quiescent=*/false); !s) {
    log().critical("invariant broken: {}", s.message);
    std::abort();
  }
#endif
}

}  // namespace uhmm::detail
