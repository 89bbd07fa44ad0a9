// Migration back to host RAM (the kernel's migrate_to_ram): device pages are
// copied into a staging block, then installed in the managed range by the
// fault mechanism (UFFDIO_COPY, or a copy through the signal mechanism's alias). Used by the CPU fault
// service, Context::migrate_to_host and migrate_device_range.
#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <new>
#include <utility>

#include <fmt/format.h>

#include "locked_pages.hpp"
#include "migration.hpp"
#include "owner_ids.hpp"
#include "page_runs.hpp"
#include "read_mostly.hpp"
#include "signal_fault_handler.hpp"
#include "uhmm/detail/log.hpp"
#include "uhmm/detail/test_points.hpp"
#include "uhmm/migrate.hpp"

namespace uhmm::detail {
namespace {

// A failure's Status from a path that must not throw: without memory for the
// message, the code alone.
template <class Message>
Status failure(Errc code, Message&& message) noexcept {
  try {
    return {code, std::forward<Message>(message)()};
  } catch (const std::bad_alloc&) {
    return {code, {}};
  }
}

}  // namespace

BackResult bring_back(Mm& mm, ManagedRange& range, std::span<const std::size_t> pages, std::byte* staging,
                      InvalidateKind kind, OwnerId cause) noexcept {
  BackResult out;
  if (pages.empty()) return out;
  // The pages are locked (snapshots see them as not valid); devices drop
  // their view before the device pages are freed below.
  mm.notifiers.invalidate(range, pages.front(), pages.back() + 1, kind, cause).end();
  const std::uint64_t start_ns = now_ns();
  auto& table = range.table();
  const std::size_t block = MirrorTable::block_of(pages.front());
  const std::size_t base = table.block_begin(block);
  const std::size_t end = table.block_end(block);

  // Nothing here allocates (the fault service calls this near the process's
  // limits): a block's worth of bookkeeping lives on the stack.
  // ok[p - base]: the page's bytes are in staging.
  std::array<std::uint8_t, kPagesPerBlock> ok{};
  // gone[p - base]: the application unmapped the page. It is not the range's
  // any more (another range may have been allocated there, sharing the
  // userfaultfd): its device copy is released, nothing is installed.
  std::array<std::uint8_t, kPagesPerBlock> gone{};
  if (range.any_unmapped(pages.front(), pages.back() + 1))
    for (std::size_t p : pages) gone[p - base] = range.any_unmapped(p, p + 1);
  std::array<DevicePage, kPagesPerBlock> device;
  {
    std::lock_guard lock(table.block_mutex(block));
    for (std::size_t k = 0; k < pages.size(); ++k) device[k] = table.entry(pages[k]).device_page();
  }
  std::array<DevicePageIndex, kPagesPerBlock> indices_of;
  std::array<std::byte*, kPagesPerBlock> dst_of;
  std::array<std::size_t, kPagesPerBlock> which;
  for (const OwnerId owner : owner_ids(mm.device_count())) {
    std::size_t n = 0;
    for (std::size_t k = 0; k < pages.size(); ++k) {
      if (device[k].owner != owner || gone[pages[k] - base]) continue;
      indices_of[n] = device[k].index;
      dst_of[n] = staging + (pages[k] - base) * kPageSize;
      which[n++] = pages[k];
    }
    const std::span<const DevicePageIndex> indices(indices_of.data(), n);
    const std::span<std::byte* const> dst(dst_of.data(), n);
    std::size_t done = 0;
    Status last_failure;
    // One retry of what failed: an injected or transient copy fault must not
    // cost data while a second attempt can still succeed.
    for (int attempt = 0; attempt < 2 && done < indices.size(); ++attempt) {
      const std::uint64_t copy_start = now_ns();
      BatchResult r = mm.device_at(owner).copy_to_ram(indices.subspan(done), dst.subspan(done));
      AtomicCounters::add(mm.counters.copy_ns_to_host, now_ns() - copy_start);
      done += std::min(r.pages_done, indices.size() - done);
      if (!r.status) {
        AtomicCounters::add(mm.counters.copy_failures, 1);
        last_failure = std::move(r.status);
      }
    }
    // A failure the retry made good is no failure of the call: status says why
    // pages stayed on the device, and only when some did.
    if (done < indices.size())
      out.status = last_failure ? failure(Errc::device_error, [] { return "copy to host stopped early"; })
                                : std::move(last_failure);
    for (std::size_t k = 0; k < done; ++k) ok[which[k] - base] = 1;
  }

  // A page the application discarded meanwhile is not mapped (the unlock
  // frees its device copy); one it discards from now on may be, and the
  // unlock leaves it FREED (the page tables say later whether it is gone).
  test_points::at(test_points::held_install, range.page_address(pages.front()), false);
  if (mm.mechanism->follows_mapping_changes() && !signal_faults::on_service_thread()) mm.ranges.gate().wait_applied();
  {
    std::lock_guard lock(table.block_mutex(block));
    for (std::size_t p : pages)
      if (table.entry(p).has(MirrorEntry::kDiscarded)) ok[p - base] = 0;
  }

  if (auto* hook = test_points::bring_back_copied.load(std::memory_order_relaxed))
    hook(range.page_address(pages.front()));
  test_points::at(test_points::bring_back_staged);
  // Map what arrived, one install per contiguous run.
  const bool follows_unmaps = mm.mechanism->follows_mapping_changes();
  for_each_run(base, end, [&](std::size_t p) { return ok[p - base] != 0; },
               [&](std::size_t p, std::size_t count) {
                 std::size_t copied = 0;
                 const int err = mm.mechanism->install_copy(range, p, count, staging + (p - base) * kPageSize, &copied);
                 if (err == 0) return;
                 // EEXIST: something mapped a page we hold locked (the application
                 // remapped the range); map the others page by page.
                 for (std::size_t q = p + copied / kPageSize; q < p + count; ++q) {
                   const int e = mm.mechanism->install_copy(range, q, 1, staging + (q - base) * kPageSize, nullptr);
                   if (e == ENOENT && follows_unmaps) {
                     // Nothing mapped there: the application unmapped it
                     // meanwhile (its UNMAP event is on its way). Gone.
                     ok[q - base] = 0;
                     gone[q - base] = 1;
                   } else if (e != 0 && e != EEXIST) {
                     ok[q - base] = 0;
                     out.status = failure(Errc::system_error, [&] {
                       return fmt::format("installing the page at {} failed: {}",
                                          static_cast<void*>(range.page_address(q)), std::strerror(e));
                     });
                   }
                 }
               });
  test_points::at(test_points::held_install, range.page_address(pages.front()), true);
  // A page whose mapping vanished may have been moved (mremap): the REMAP
  // being applied reads its device copy (MappingEvents::copy_held), so it is
  // freed only once that is done. (The service applies events as it reads
  // them: a REMAP its install met is applied by now.)
  if (follows_unmaps && !signal_faults::on_service_thread() &&
      std::any_of(gone.begin(), gone.end(), [](std::uint8_t g) { return g != 0; }))
    mm.ranges.gate().wait_applied();

  {
    std::lock_guard lock(table.block_mutex(block));
    for (std::size_t k = 0; k < pages.size(); ++k) {
      if (gone[pages[k] - base]) {
        table.entry(pages[k]).move_to(MirrorEntry{});
        ++out.dropped;
        continue;
      }
      if (!ok[pages[k] - base]) {
        // Discarded: no failure; still on its device, which unlock() frees.
        if (table.entry(pages[k]).has(MirrorEntry::kDiscarded)) continue;
        // Allocates only when a copy failed; without memory the page is
        // still left on its device (and its fault unresolved, retried).
        try {
          out.failed.push_back(pages[k]);
        } catch (const std::bad_alloc&) {
          log().error("no memory to report a page that stayed on its device");
        }
        continue;
      }
      table.entry(pages[k]).move_to(MirrorEntry::system());
      ++out.moved;
    }
  }
  for (const OwnerId owner : owner_ids(mm.device_count())) {
    std::size_t n = 0;
    for (std::size_t k = 0; k < pages.size(); ++k)
      if (device[k].owner == owner && (ok[pages[k] - base] || gone[pages[k] - base]))
        indices_of[n++] = device[k].index;
    if (n == 0) continue;
    for (std::size_t k = 0; k < n; ++k) mm.rmap(owner).clear(indices_of[k]);
    mm.device_at(owner).page_free(std::span<const DevicePageIndex>(indices_of.data(), n));
  }
  AtomicCounters::add(mm.counters.pages_discarded, out.dropped);
  AtomicCounters::add(mm.counters.pages_to_host, out.moved);
  AtomicCounters::add(mm.counters.bytes_to_host, out.moved * kPageSize);
  mm.observer.migrated_to_host(start_ns, reinterpret_cast<std::uintptr_t>(range.page_address(pages.front())), pages.size(),
                            out.moved);
  return out;
}

namespace {

// unlock_pages() of the DISCARDED pages among `pages` (still LOCKED): their
// device pages freed, they become host pages marked FREED (Empty where the
// application unmapped them), PINNED kept, and LOCKED is cleared. Never
// zapped again: a store the application made since its madvise is kept.
void finish_discarded(Mm& mm, ManagedRange& range, std::span<const std::size_t> pages) noexcept {
  auto& table = range.table();
  std::size_t lo = range.npages(), hi = 0;
  for (std::size_t p : pages) {
    std::lock_guard lock(table.block_mutex(MirrorTable::block_of(p)));
    if (table.entry(p).has(MirrorEntry::kDiscarded)) lo = std::min(lo, p), hi = p + 1;
  }
  // Devices drop their view first, as for any discard (mapping_events.cpp).
  mm.notifiers.invalidate(range, lo, hi, InvalidateKind::discard, kNoOwner).end();
  std::size_t freed = 0;
  for (std::size_t p : pages) {
    DevicePage device{};
    {
      std::lock_guard lock(table.block_mutex(MirrorTable::block_of(p)));
      MirrorEntry& e = table.entry(p);
      if (!e.has(MirrorEntry::kDiscarded)) continue;
      if (e.residency() == Residency::Device || e.residency() == Residency::Duplicated) device = e.device_page();
      // Whatever the holder mapped, the application may have stored to it
      // since its madvise (MADV_FREE keeps the page; after MADV_DONTNEED a
      // fault maps a fresh one), so the host page is the page: FREED, which
      // the next walk that asks learns from the page tables (gone: Empty).
      // An unmapped page is Empty: something else may live there now.
      const bool unmapped = range.any_unmapped(p, p + 1);
      const std::uint64_t home = unmapped ? 0 : MirrorEntry::system().bits() | MirrorEntry::kFreed;
      e = MirrorEntry(home | (e.bits() & MirrorEntry::kPinned));  // unlocked; POISONED goes with the page
    }
    if (device.owner == kNoOwner) continue;
    mm.release_device_page(device);
    ++freed;
  }
  AtomicCounters::add(mm.counters.pages_discarded, freed);
}

}  // namespace

void unlock_pages(Mm& mm, ManagedRange& range, std::span<const std::size_t> pages) noexcept {
  if (pages.empty()) return;
  // Off the fault service, an event read before now is applied first: a
  // discard of these pages is marked by the time they are looked at. (The
  // service applies what it reads at once.)
  const bool off_service = mm.mechanism->follows_mapping_changes() && !signal_faults::on_service_thread();
  if (off_service) mm.ranges.gate().wait_applied();
  auto& table = range.table();
  bool discarded = false;
  std::size_t block = MirrorTable::block_of(pages.front());
  std::unique_lock lock(table.block_mutex(block));
  for (std::size_t p : pages) {
    if (MirrorTable::block_of(p) != block) {
      lock.unlock();
      block = MirrorTable::block_of(p);
      lock = std::unique_lock(table.block_mutex(block));
    }
    MirrorEntry& e = table.entry(p);
    if (e.has(MirrorEntry::kDiscarded))
      discarded = true;  // finished below, still locked meanwhile
    else
      e.clear(MirrorEntry::kLocked);
  }
  lock.unlock();
  if (discarded) finish_discarded(mm, range, pages);
  mm.unlocks.announce();
  for (std::size_t i = 0; i < pages.size();) {
    std::size_t run = 1;
    while (i + run < pages.size() && pages[i + run] == pages[i] + run) ++run;
    mm.mechanism->wake(reinterpret_cast<std::uintptr_t>(range.page_address(pages[i])), run * kPageSize);
    i += run;
  }
}

MigrationResult migrate_to_host(Mm& mm, void* p, std::size_t bytes) {
  const RangeSpan span = mm.ranges.resolve(p, bytes, "migrate_to_host");
  auto& range = span.range();
  auto& table = range.table();
  MigrationResult result;
  result.pages = span.count();
  StagingBuffer staging(mm.staging());
  if (staging.get() == nullptr) throw OutOfMemory("migrate_to_host: no host memory for a staging buffer");

  for (std::size_t block = table.block_of(span.first()); block <= table.block_of(span.end() - 1); ++block) {
    const std::size_t lo = std::max(span.first(), table.block_begin(block));
    const std::size_t hi = std::min(span.end(), table.block_end(block));
    LockedPages taken(mm, range);
    taken.reserve(hi - lo);
    {
      std::lock_guard lock(table.block_mutex(block));
      for (std::size_t q = lo; q < hi; ++q) {
        MirrorEntry& e = table.entry(q);
        if (e.residency() != Residency::Device) {
          ++result.already;
        } else if (e.locked()) {
          ++result.skipped;
        } else {
          taken.take(e, q);
        }
      }
    }
    const BackResult back = bring_back(mm, range, taken.pages(), staging.get());
    taken.unlock();
    result.migrated += back.moved;
    result.already += back.dropped;  // unmapped by the application meanwhile: on no device now
    result.failed += back.failed.size();
    if (!back.status && result.status) result.status = back.status;
  }
  mm.check_invariants();
  return result;
}

std::size_t migrate_device_range(Mm& mm, OwnerId owner, DevicePageIndex first, std::size_t npages) {
  // Owner 0 is never a device; mm.device() would map it to the first one, but
  // rmap(0) below would index rmaps_[-1].
  if (owner == kNoOwner) throw Error(Errc::invalid_argument, "migrate_device_range: owner 0 is not a device");
  Device& dev = mm.device(owner, "migrate_device_range");
  if (npages == 0) throw Error(Errc::zero_length, "migrate_device_range: zero pages");
  if (first >= dev.capacity_pages() || npages > dev.capacity_pages() - first)
    throw Error(Errc::out_of_range, fmt::format("migrate_device_range: pages [{}, +{}) exceed device {}'s {} pages",
                                                first, npages, owner, dev.capacity_pages()));
  const DeviceRangeEviction r = evict_device_range(mm, owner, first, npages, /*wait=*/true);
  if (!r.status) r.status.raise_if_error();
  return r.moved;
}

DeviceRangeEviction evict_device_range(Mm& mm, OwnerId owner, DevicePageIndex first, std::size_t npages,
                                       bool wait) {
  DeviceRangeEviction out;
  const std::uint64_t start_ns = now_ns();
  StagingBuffer staging(mm.staging());
  if (staging.get() == nullptr) {
    out.status = {Errc::out_of_memory, "evicting device pages: no host memory for a staging buffer"};
    return out;
  }
  ReverseMap& map = mm.rmap(owner);
  std::vector<std::uint8_t> gave_up(npages, 0);  // pages whose copy failed: reported, not retried forever
  for (;;) {
    const std::uint64_t generation = mm.unlocks.generation();
    bool waiting = false;
    bool progressed = false;
    for (std::size_t k = 0; k < npages; ++k) {
      const auto target = map.get(static_cast<DevicePageIndex>(first + k));
      if (!target || gave_up[k]) continue;
      // The range may be being freed, or retired (the application unmapped
      // it): then it is gone from the registry (its pages are released, not
      // copied: free() or mm.reap_retired()), or this span keeps it alive until done.
      RangeSpan span = mm.ranges.find_by_id(target->range_id);
      if (!span) continue;
      auto& range = span.range();
      auto& table = range.table();
      // Take every page of this block that lives in the device range, in one go.
      const std::size_t block = MirrorTable::block_of(target->page);
      LockedPages taken(mm, range), duplicated(mm, range);
      taken.reserve(kPagesPerBlock);
      duplicated.reserve(kPagesPerBlock);
      {
        std::lock_guard lock(table.block_mutex(block));
        for (std::size_t q = table.block_begin(block); q < table.block_end(block); ++q) {
          MirrorEntry& e = table.entry(q);
          const DevicePage page = e.device_page();
          const bool dup = e.residency() == Residency::Duplicated;
          if ((e.residency() != Residency::Device && !dup) || page.owner != owner || page.index < first ||
              page.index - first >= npages || gave_up[page.index - first])
            continue;
          if (e.locked()) {
            waiting = true;
            continue;
          }
          (dup ? duplicated : taken).take(e, q);
        }
      }
      // A read-mostly page has its host copy: leaving the device costs no copy.
      if (!duplicated.empty()) {
        collapse_to_host(mm, range, duplicated.pages(), InvalidateKind::eviction, owner);
        out.moved += duplicated.size();
        duplicated.unlock();
        progressed = true;
      }
      if (taken.empty()) continue;
      const BackResult back = bring_back(mm, range, taken.pages(), staging.get(), InvalidateKind::eviction, owner);
      for (std::size_t q : back.failed) {
        // Still on the device, still authoritative: report it, don't spin on it.
        std::lock_guard lock(table.block_mutex(block));
        gave_up[table.entry(q).device_page().index - first] = 1;
        ++out.failed;
      }
      taken.unlock();
      out.moved += back.moved + back.dropped;  // both left the device
      progressed = progressed || back.moved + back.dropped > 0;
      if (!back.status && out.status) out.status = back.status;
    }
    out.skipped_locked = waiting;
    if (!wait || (!waiting && !progressed)) break;
    if (waiting && !progressed) mm.unlocks.wait_after(generation);
  }
  AtomicCounters::add(mm.counters.device_evictions, out.moved);
  mm.observer.evicted(start_ns, owner, first, npages, out.moved);
  mm.check_invariants();
  return out;
}

}  // namespace uhmm::detail
