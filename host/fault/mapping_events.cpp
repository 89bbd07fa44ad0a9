#include "mapping_events.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "migration.hpp"
#include "owner_ids.hpp"
#include "uhmm/detail/log.hpp"
#include "uhmm/detail/test_points.hpp"
#include "uhmm/migrate.hpp"
#include "userfaultfd.hpp"

namespace uhmm::detail {
namespace {

// The pages of `range` that [lo, hi) covers, clipped to the range.
std::pair<std::size_t, std::size_t> pages_within(const ManagedRange& range, std::uintptr_t lo, std::uintptr_t hi) {
  const auto base = reinterpret_cast<std::uintptr_t>(range.base());
  const std::uintptr_t a = std::max(lo, base);
  const std::uintptr_t b = std::min(hi, base + range.bytes());
  if (a >= b) return {0, 0};
  return {(a - base) >> kPageShift, (b - base + kPageSize - 1) >> kPageShift};
}

// Whether the page tables map a page at `page` (mincore: present, or in
// the swap cache).
bool page_resident(const void* page) noexcept {
  unsigned char in_core = 0;
  return ::mincore(const_cast<void*>(page), kPageSize, &in_core) == 0 && (in_core & 1) != 0;
}

}  // namespace

MappingEvents::MappingEvents(Mm& ctx, Userfaultfd& uffd) : ctx_(ctx), uffd_(uffd) {
  staging_.reserve(4);  // deeper nesting takes a rare allocation
  staging_.push_back(ctx_.staging().acquire());
  if (staging_.front() == nullptr) throw OutOfMemory("no host memory for the mapping events' staging buffer");
}

MappingEvents::~MappingEvents() {
  for (std::byte* buffer : staging_) ctx_.staging().release(buffer);
}

std::byte* MappingEvents::staging_at(std::size_t level) noexcept {
  while (staging_.size() <= level) {
    std::byte* buffer = ctx_.staging().acquire();
    if (buffer == nullptr) return nullptr;
    try {
      staging_.push_back(buffer);
    } catch (const std::bad_alloc&) {
      ctx_.staging().release(buffer);
      return nullptr;
    }
  }
  return staging_[level];
}

void MappingEvents::apply(const FaultEvent& event) noexcept {
  switch (event.kind) {
    case FaultEvent::Kind::remove:
      discard(event.address, event.end);
      break;
    case FaultEvent::Kind::unmap:
      unmap(event.address, event.end);
      break;
    case FaultEvent::Kind::remap:
      remap(event.address, event.to, event.end - event.address);
      break;
    case FaultEvent::Kind::fault:
      break;
  }
}

void MappingEvents::fault_outside_ranges(std::uintptr_t address, bool write_protect) noexcept {
  void* page = reinterpret_cast<void*>(address);
  if (!write_protect && uffd_.zeropage(page, kPageSize) != 0) uffd_.wake(page, kPageSize);
}

std::size_t MappingEvents::drop_device_pages(ManagedRange& range, std::size_t first, std::size_t end,
                                             InvalidateKind kind) noexcept {
  std::vector<std::vector<DevicePageIndex>> to_free(ctx_.device_count() + 1);
  std::size_t dropped = 0;
  // Interval notifiers hear only of discards that change something: uhmm's
  // own zaps in migrate_vma_finalize meet locked pages alone (and drivers
  // would retry on every migration). A first pass stops at the first page it
  // would change, having changed nothing but DISCARDED marks (idempotent);
  // then the invalidation opens, and stays open until the entries changed.
  NotifierRegistry::Invalidation invalidation;
  for (bool invalidated = false;; invalidated = true) {
    if (invalidated) invalidation = ctx_.notifiers.invalidate(range, first, end, kind, kNoOwner);
    if (!drop_pass(range, first, end, kind, invalidated, to_free, dropped)) break;
  }
  for (const OwnerId owner : owner_ids(to_free.size() - 1)) {
    if (to_free[owner].empty()) continue;
    for (DevicePageIndex index : to_free[owner]) ctx_.rmap(owner).clear(index);
    ctx_.pagemap(owner)->page_free(to_free[owner]);
  }
  AtomicCounters::add(ctx_.counters.pages_discarded, dropped);
  return dropped;
}

bool MappingEvents::drop_pass(ManagedRange& range, std::size_t first, std::size_t end, InvalidateKind kind,
                              bool invalidated, std::vector<std::vector<DevicePageIndex>>& to_free,
                              std::size_t& dropped) noexcept {
  auto& table = range.table();
  try {
    for (std::size_t block = MirrorTable::block_of(first); first < end && block <= MirrorTable::block_of(end - 1);
         ++block) {
      const std::size_t lo = std::max(first, table.block_begin(block));
      const std::size_t hi = std::min(end, table.block_end(block));
      std::lock_guard lock(table.block_mutex(block));
      for (std::size_t p = lo; p < hi; ++p) {
        MirrorEntry& e = table.entry(p);
        // A locked page belongs to its holder: marked, whatever it holds, and
        // emptied when the holder unlocks it (unlock_pages), whatever
        // the holder mapped meanwhile. A host page a migration reads gets
        // zeros for its copy engine's fault meanwhile (the kernel zaps it
        // next), and stays on the host (migrate_vma_pages).
        if (e.locked()) {
          e.set(MirrorEntry::kDiscarded);
          continue;
        }
        if (e.residency() == Residency::Empty) continue;
        if (!invalidated) return true;
        if (e.residency() == Residency::Device || e.residency() == Residency::Duplicated) {
          to_free[e.device_page().owner].push_back(e.device_page().index);
          ++dropped;
        }
        // A host page stays, FREED: MADV_FREE keeps it (stores after it land
        // unseen), MADV_DONTNEED zaps it; the event does not say which. Which
        // it was is learnt before the next walk that tells (written_pages.hpp);
        // meanwhile a fault on it, a copy engine's too, gets zeros. A
        // read-mostly page's device copy goes: the host one is the page.
        // A device page is gone either way (the kernel has no host page
        // here), and so is every page of an unmapped part.
        if (e.residency() == Residency::Device || kind == InvalidateKind::unmap)
          e = MirrorEntry(e.bits() & MirrorEntry::kPinned);  // POISONED goes with the page
        else
          e = MirrorEntry((MirrorEntry::system().bits() | MirrorEntry::kFreed) | (e.bits() & MirrorEntry::kPinned));
      }
    }
  } catch (const std::bad_alloc&) {
    log().error("mapping event: out of memory; some device pages of range {} stay allocated until it is freed",
                range.id());
  }
  return false;
}

void MappingEvents::discard(std::uintptr_t lo, std::uintptr_t hi) noexcept {
  for (const auto& range : ctx_.ranges.overlapping(lo, hi)) {
    const auto [first, end] = pages_within(*range, lo, hi);
    drop_device_pages(*range, first, end, InvalidateKind::discard);
  }
}

void MappingEvents::unmap(std::uintptr_t lo, std::uintptr_t hi) noexcept {
  for (const auto& range : ctx_.ranges.overlapping(lo, hi)) {
    const auto [first, end] = pages_within(*range, lo, hi);
    if (first >= end || range->all_unmapped(first, end)) continue;
    try {
      range->mark_unmapped(first, end);
    } catch (const std::bad_alloc&) {
      log().error("mapping event: out of memory recording that range {} lost pages [{}, {})", range->id(), first, end);
    }
    drop_device_pages(*range, first, end, InvalidateKind::unmap);
    log().info("the application unmapped pages [{}, {}) of managed range {} at {}", first, end, range->id(),
               static_cast<void*>(range->base()));
    if (range->all_unmapped(0, range->npages())) ctx_.retire(range);
  }
}

void MappingEvents::copy_out(ManagedRange& range, std::size_t first, std::size_t end, std::intptr_t shift,
                             std::byte* staging) noexcept {
  auto& table = range.table();
  // Every device page of the part is locked before the first copy: the UNMAP
  // of the old place that follows a REMAP is read (and applied) by a copy's
  // EAGAIN pump, and must not free any of them under it (it freed those of
  // every block after the first).
  std::vector<std::size_t> pages;
  std::vector<DevicePage> where;
  std::vector<std::size_t> held;  // device pages another operation holds
  try {
    for (std::size_t block = MirrorTable::block_of(first); first < end && block <= MirrorTable::block_of(end - 1);
         ++block) {
      std::lock_guard lock(table.block_mutex(block));
      for (std::size_t p = std::max(first, table.block_begin(block)); p < std::min(end, table.block_end(block)); ++p) {
        MirrorEntry& e = table.entry(p);
        if (e.residency() != Residency::Device && e.residency() != Residency::Duplicated) continue;
        if (e.locked()) {
          if (!e.has(MirrorEntry::kDiscarded)) held.push_back(p);  // discarded before the move: zeros are right
          continue;
        }
        pages.push_back(p);
        where.push_back(e.device_page());
        e.set(MirrorEntry::kLocked);
      }
    }
  } catch (const std::bad_alloc&) {
    log().critical("mremap moved pages [{}, {}) of managed range {}: out of memory listing their device pages, some "
                   "of which read as zeros at the new place",
                   first, end, range.id());
    pages.resize(where.size());  // the page pushed last, if its device page was not, is not locked
  }
  if (!pages.empty()) test_points::at(test_points::remap_copy_locked);
  // Copy each page to staging, then into its new place.
  std::size_t lost = 0;
  for (std::size_t k = 0; k < where.size(); ++k) {
    const DevicePageIndex index = where[k].index;
    std::byte* const dst[] = {staging};
    BatchResult r;
    if (staging != nullptr) {
      r = ctx_.pagemap(where[k].owner)->copy_to_ram(std::span(&index, 1), dst);
      if (r.pages_done != 1) r = ctx_.pagemap(where[k].owner)->copy_to_ram(std::span(&index, 1), dst);
    } else {
      r.status = {Errc::out_of_memory, "no host memory for a staging buffer"};
    }
    std::byte* target = range.page_address(pages[k]) + shift;
    const int err = r.pages_done == 1 ? uffd_.copy(target, staging, kPageSize, nullptr) : EIO;
    if (err != 0 && err != EEXIST) {
      ++lost;
      log().critical("mremap moved managed page {} to {}, but its data could not be copied from the device ({}); "
                     "the page reads as zeros",
                     static_cast<void*>(range.page_address(pages[k])), static_cast<void*>(target),
                     err == EIO ? r.status.message : std::strerror(err));
    }
  }
  for (std::size_t p : held) lost += copy_held(range, p, range.page_address(p) + shift, staging) ? 0 : 1;
  AtomicCounters::add(ctx_.counters.pages_lost, lost);
  // A DISCARDED mark a REMOVE read by a copy's EAGAIN pump left goes: the
  // caller drops these pages next (the old place is unmapped).
  for (std::size_t p : pages) {
    std::lock_guard lock(table.block_mutex(MirrorTable::block_of(p)));
    table.entry(p).clear(MirrorEntry::kDiscarded);
  }
  // Announced: an eviction, a pin or a snapshot may be waiting for these pages.
  unlock_pages(ctx_, range, pages);
}

bool MappingEvents::copy_held(ManagedRange& range, std::size_t p, std::byte* target, std::byte* staging) noexcept {
  // The holder (an eviction, a bring-back) can no longer map the page at its
  // old place, which is gone. What it mapped there before the move moved with
  // the page tables (resident at the new place); otherwise its bytes are
  // still on the device page the entry names, which the holder frees only
  // after its own bookkeeping (an install that meets the vanished mapping
  // waits until this event is applied): read it, then check the entry still
  // names it, so the bytes read were that page's.
  auto& table = range.table();
  for (int attempt = 0; attempt < 3; ++attempt) {
    if (page_resident(target)) return true;
    DevicePage from;
    {
      std::lock_guard lock(table.block_mutex(MirrorTable::block_of(p)));
      const MirrorEntry e = table.entry(p);
      if (e.residency() != Residency::Device && e.residency() != Residency::Duplicated) return true;  // on the host
      from = e.device_page();
    }
    std::byte* const dst[] = {staging};
    if (staging == nullptr || ctx_.pagemap(from.owner)->copy_to_ram(std::span(&from.index, 1), dst).pages_done != 1)
      continue;
    {
      std::lock_guard lock(table.block_mutex(MirrorTable::block_of(p)));
      const MirrorEntry e = table.entry(p);
      const bool same = (e.residency() == Residency::Device || e.residency() == Residency::Duplicated) &&
                        e.device_page().owner == from.owner && e.device_page().index == from.index;
      if (!same) continue;
    }
    const int err = uffd_.copy(target, staging, kPageSize, nullptr);
    if (err == 0 || err == EEXIST) return true;
    log().critical("mremap moved managed page {} to {} while an operation held it, and installing it there failed "
                   "({}); the page reads as zeros",
                   static_cast<void*>(range.page_address(p)), static_cast<void*>(target), std::strerror(err));
    return false;
  }
  log().critical("mremap moved managed page {} to {} while an operation held it, and its data could not be read "
                 "from the device; the page reads as zeros",
                 static_cast<void*>(range.page_address(p)), static_cast<void*>(target));
  return false;
}

void MappingEvents::remap(std::uintptr_t from, std::uintptr_t to, std::size_t len) noexcept {
  // A copy below may pump (and apply) another REMAP: each level stages apart.
  std::byte* const staging = staging_at(remap_depth_++);
  for (const auto& range : ctx_.ranges.overlapping(from, from + len)) {
    const auto [first, end] = pages_within(*range, from, from + len);
    if (first >= end || range->all_unmapped(first, end)) continue;
    // An operation in flight: neither free() nor the reaping of a retired
    // range releases device pages while they are being copied out.
    const RangeSpan hold(range, 0, range->npages());
    copy_out(*range, first, end, static_cast<std::intptr_t>(to - from), staging);
    // The old place is marked unmapped (and the range retired if nothing is
    // left) by the UNMAP the kernel sends next, not here: until then it
    // counts as live, so a range the kernel maps there meanwhile is
    // registered only once that UNMAP cannot hit it (wait_for_address_reuse).
    drop_device_pages(*range, first, end, InvalidateKind::unmap);
    log().info("the application moved pages [{}, {}) of managed range {} to {}: they are ordinary memory there now",
               first, end, range->id(),
               static_cast<void*>(range->page_address(first) + static_cast<std::intptr_t>(to - from)));
  }
  test_points::at(test_points::remap_applied);
  // The new place stays registered with this userfaultfd (EVENT_REMAP keeps
  // it); unregistering makes it ordinary memory and wakes any thread that
  // faulted there meanwhile.
  if (const int err = uffd_.unregister_range(reinterpret_cast<void*>(to), len); err != 0)
    log().error("unregistering the moved mapping at {} failed: {}", reinterpret_cast<void*>(to), std::strerror(err));
  --remap_depth_;
}

}  // namespace uhmm::detail
