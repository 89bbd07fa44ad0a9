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

#include "context_impl.hpp"
#include "locked_pages.hpp"
#include "owner_ids.hpp"
#include "page_runs.hpp"
#include "read_mostly.hpp"
#include "uhmm/detail/log.hpp"
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

ContextImpl::BackResult ContextImpl::bring_back(ManagedRange& range, std::span<const std::size_t> pages,
                                                std::byte* staging, InvalidateKind kind, OwnerId cause) noexcept {
  BackResult out;
  if (pages.empty()) return out;
  // The pages are locked (snapshots see them as not valid); devices drop
  // their view before the device pages are freed below.
  notifiers.invalidate(range, pages.front(), pages.back() + 1, kind, cause).end();
  const std::uint64_t start_ns = now_ns();
  auto& table = range.table();
  const std::size_t block = MirrorTable::block_of(pages.front());
  const std::size_t base = table.block_begin(block);
  const std::size_t end = table.block_end(block);

  // Nothing here allocates (the fault service calls this near the process's
  // limits): a block's worth of bookkeeping lives on the stack.
  // ok[p - base]: the page's bytes are in staging.
  std::array<std::uint8_t, kPagesPerBlock> ok{};
  std::array<DevicePage, kPagesPerBlock> device;
  {
    std::lock_guard lock(table.block_mutex(block));
    for (std::size_t k = 0; k < pages.size(); ++k) device[k] = table.entry(pages[k]).device_page();
  }
  std::array<DevicePageIndex, kPagesPerBlock> indices_of;
  std::array<std::byte*, kPagesPerBlock> dst_of;
  std::array<std::size_t, kPagesPerBlock> which;
  for (const OwnerId owner : owner_ids(devices_.size())) {
    std::size_t n = 0;
    for (std::size_t k = 0; k < pages.size(); ++k) {
      if (device[k].owner != owner) continue;
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
      BatchResult r = devices_[owner - 1]->copy_to_ram(indices.subspan(done), dst.subspan(done));
      AtomicCounters::add(counters.copy_ns_to_host, now_ns() - copy_start);
      done += std::min(r.pages_done, indices.size() - done);
      if (!r.status) {
        AtomicCounters::add(counters.copy_failures, 1);
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

  // Map what arrived, one install per contiguous run.
  for_each_run(base, end, [&](std::size_t p) { return ok[p - base] != 0; },
               [&](std::size_t p, std::size_t count) {
                 std::size_t copied = 0;
                 const int err = mechanism->install_copy(range, p, count, staging + (p - base) * kPageSize, &copied);
                 if (err == 0) return;
                 // EEXIST: something mapped a page we hold locked (the application
                 // remapped the range); map the others page by page.
                 for (std::size_t q = p + copied / kPageSize; q < p + count; ++q) {
                   const int e = mechanism->install_copy(range, q, 1, staging + (q - base) * kPageSize, nullptr);
                   if (e != 0 && e != EEXIST) {
                     ok[q - base] = 0;
                     out.status = failure(Errc::system_error, [&] {
                       return fmt::format("installing the page at {} failed: {}",
                                          static_cast<void*>(range.page_address(q)), std::strerror(e));
                     });
                   }
                 }
               });

  {
    std::lock_guard lock(table.block_mutex(block));
    for (std::size_t k = 0; k < pages.size(); ++k) {
      if (!ok[pages[k] - base]) {
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
  for (const OwnerId owner : owner_ids(devices_.size())) {
    std::size_t n = 0;
    for (std::size_t k = 0; k < pages.size(); ++k)
      if (device[k].owner == owner && ok[pages[k] - base]) indices_of[n++] = device[k].index;
    if (n == 0) continue;
    for (std::size_t k = 0; k < n; ++k) rmaps_[owner - 1]->clear(indices_of[k]);
    devices_[owner - 1]->page_free(std::span<const DevicePageIndex>(indices_of.data(), n));
  }
  AtomicCounters::add(counters.pages_to_host, out.moved);
  AtomicCounters::add(counters.bytes_to_host, out.moved * kPageSize);
  observer.migrated_to_host(start_ns, reinterpret_cast<std::uintptr_t>(range.page_address(pages.front())), pages.size(),
                            out.moved);
  return out;
}

void ContextImpl::unlock(ManagedRange& range, std::span<const std::size_t> pages) noexcept {
  if (pages.empty()) return;
  auto& table = range.table();
  std::size_t block = MirrorTable::block_of(pages.front());
  std::unique_lock lock(table.block_mutex(block));
  for (std::size_t p : pages) {
    if (MirrorTable::block_of(p) != block) {
      lock.unlock();
      block = MirrorTable::block_of(p);
      lock = std::unique_lock(table.block_mutex(block));
    }
    table.entry(p).clear(MirrorEntry::kLocked);
  }
  lock.unlock();
  unlocks.announce();
  for (std::size_t i = 0; i < pages.size();) {
    std::size_t run = 1;
    while (i + run < pages.size() && pages[i + run] == pages[i] + run) ++run;
    mechanism->wake(reinterpret_cast<std::uintptr_t>(range.page_address(pages[i])), run * kPageSize);
    i += run;
  }
}

MigrationResult ContextImpl::migrate_to_host(void* p, std::size_t bytes) {
  const RangeSpan span = ranges.resolve(p, bytes, "migrate_to_host");
  auto& range = span.range();
  auto& table = range.table();
  MigrationResult result;
  result.pages = span.count();
  StagingBuffer staging(*staging_);
  if (staging.get() == nullptr) throw OutOfMemory("migrate_to_host: no host memory for a staging buffer");

  for (std::size_t block = table.block_of(span.first()); block <= table.block_of(span.end() - 1); ++block) {
    const std::size_t lo = std::max(span.first(), table.block_begin(block));
    const std::size_t hi = std::min(span.end(), table.block_end(block));
    LockedPages taken(*this, range);
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
    const BackResult back = bring_back(range, taken.pages(), staging.get());
    taken.unlock();
    result.migrated += back.moved;
    result.failed += back.failed.size();
    if (!back.status && result.status) result.status = back.status;
  }
  check_invariants();
  return result;
}

std::size_t ContextImpl::migrate_device_range(OwnerId owner, DevicePageIndex first, std::size_t npages) {
  // Owner 0 is never a device; device() would map it to the first one, but
  // rmap(0) below would index rmaps_[-1].
  if (owner == kNoOwner) throw Error(Errc::invalid_argument, "migrate_device_range: owner 0 is not a device");
  Device& dev = device(owner, "migrate_device_range");
  if (npages == 0) throw Error(Errc::zero_length, "migrate_device_range: zero pages");
  if (first >= dev.capacity_pages() || npages > dev.capacity_pages() - first)
    throw Error(Errc::out_of_range, fmt::format("migrate_device_range: pages [{}, +{}) exceed device {}'s {} pages",
                                                first, npages, owner, dev.capacity_pages()));
  const DeviceRangeEviction r = evict_device_range(owner, first, npages, /*wait=*/true);
  if (!r.status) r.status.raise_if_error();
  return r.moved;
}

ContextImpl::DeviceRangeEviction ContextImpl::evict_device_range(OwnerId owner, DevicePageIndex first,
                                                                 std::size_t npages, bool wait) {
  DeviceRangeEviction out;
  const std::uint64_t start_ns = now_ns();
  StagingBuffer staging(*staging_);
  if (staging.get() == nullptr) {
    out.status = {Errc::out_of_memory, "evicting device pages: no host memory for a staging buffer"};
    return out;
  }
  ReverseMap& map = rmap(owner);
  std::vector<std::uint8_t> gave_up(npages, 0);  // pages whose copy failed: reported, not retried forever
  for (;;) {
    const std::uint64_t generation = unlocks.generation();
    bool waiting = false;
    bool progressed = false;
    for (std::size_t k = 0; k < npages; ++k) {
      const auto target = map.get(static_cast<DevicePageIndex>(first + k));
      if (!target || gave_up[k]) continue;
      // The range may be being freed, or retired (the application unmapped
      // it): then it is gone from the registry (its pages are released, not
      // copied: free() or reap_retired()), or this span keeps it alive until done.
      RangeSpan span = ranges.find_by_id(target->range_id);
      if (!span) continue;
      auto& range = span.range();
      auto& table = range.table();
      // Take every page of this block that lives in the device range, in one go.
      const std::size_t block = MirrorTable::block_of(target->page);
      LockedPages taken(*this, range), duplicated(*this, range);
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
        collapse_to_host(*this, range, duplicated.pages(), InvalidateKind::eviction, owner);
        out.moved += duplicated.size();
        duplicated.unlock();
        progressed = true;
      }
      if (taken.empty()) continue;
      const BackResult back = bring_back(range, taken.pages(), staging.get(), InvalidateKind::eviction, owner);
      for (std::size_t q : back.failed) {
        // Still on the device, still authoritative: report it, don't spin on it.
        std::lock_guard lock(table.block_mutex(block));
        gave_up[table.entry(q).device_page().index - first] = 1;
        ++out.failed;
      }
      taken.unlock();
      out.moved += back.moved;
      progressed = progressed || back.moved > 0;
      if (!back.status && out.status) out.status = back.status;
    }
    out.skipped_locked = waiting;
    if (!wait || (!waiting && !progressed)) break;
    if (waiting && !progressed) unlocks.wait_after(generation);
  }
  AtomicCounters::add(counters.device_evictions, out.moved);
  observer.evicted(start_ns, owner, first, npages, out.moved);
  check_invariants();
  return out;
}

}  // namespace uhmm::detail
