#include "mm.hpp"

#include <algorithm>
#include <chrono>
#include <thread>

#include <fmt/format.h>

#include "deferring_pagemap.hpp"
#include "uhmm/detail/log.hpp"
#include "uhmm/migrate.hpp"

namespace uhmm::detail {

Mm::Mm(const ContextOptions& opts) : options(opts), mechanism(open_fault_mechanism(options)) {
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
}

// The owner (ContextImpl) has freed the ranges and stopped the fault service.
Mm::~Mm() {
  reap_retired(/*wait=*/true);  // a range the service retired while stopping
  staging_.reset();
  launch_streams.clear();
  devices_.clear();
}

void Mm::free_all() noexcept {
  // Their device pages go back to the pools.
  for (const auto& range : ranges.all()) {
    try {
      free(range->base());
    } catch (const std::exception& e) {
      log().error("freeing a range at teardown failed: {}", e.what());
    }
  }
  reap_retired(/*wait=*/true);
}

Device& Mm::device(OwnerId owner, std::string_view call) const {
  if (owner == kNoOwner) return *devices_.front();
  if (owner > devices_.size())
    throw Error(Errc::invalid_argument,
                fmt::format("{}: device {} does not exist (this context has devices 1..{})", call, owner, devices_.size()));
  return *devices_[owner - 1];
}

DevicePagemap* Mm::pagemap(OwnerId owner) const noexcept {
  return owner == kNoOwner || owner > devices_.size() ? nullptr : devices_[owner - 1].get();
}

void* Mm::allocate(std::size_t bytes) {
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

void Mm::free(void* base) {
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

std::size_t Mm::release_device_pages(ManagedRange& range) noexcept {
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
        try {
          indices.push_back(to_free[i].second);
          rmaps_[owner - 1]->clear(to_free[i].second);
        } catch (const std::bad_alloc&) {
          release_device_page({owner, to_free[i].second});
        }
      }
      devices_[owner - 1]->page_free(indices);
    }
  });
  return released;
}

void Mm::release_device_page(DevicePage page) noexcept {
  rmaps_[page.owner - 1]->clear(page.index);
  devices_[page.owner - 1]->page_free(std::span(&page.index, 1));
}

void Mm::retire(const std::shared_ptr<ManagedRange>& range) noexcept {
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

std::size_t Mm::reap_retired(bool wait) noexcept {
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

void Mm::wait_for_address_reuse(const std::byte* base, std::size_t bytes) {
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

Status Mm::validate(bool quiescent) const {
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

void Mm::check_invariants() const {
#if defined(UHMM_EXPENSIVE_CHECKS)
  if (Status s = validate(/*quiescent=*/false); !s) {
    log().critical("invariant broken: {}", s.message);
    std::abort();
  }
#endif
}

}  // namespace uhmm::detail
