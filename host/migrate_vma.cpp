// Migration to a device: migrate_vma_setup / _pages / _finalize (one walk of
// the mirror table collects, locks and write-protects; the driver copies; the
// new homes are recorded; host copies are dropped in contiguous runs).
#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "context_impl.hpp"
#include "deferred_signals.hpp"
#include "owner_ids.hpp"
#include "page_runs.hpp"
#include "staging_pool.hpp"
#include "uhmm/detail/log.hpp"
#include "uhmm/detail/test_points.hpp"
#include "uhmm/migrate.hpp"
#include "written_pages.hpp"

namespace uhmm::detail {
namespace {

constexpr std::uint64_t kKnownFlags = MIGRATE_VMA_SELECT_SYSTEM | MIGRATE_VMA_SELECT_DEVICE_PRIVATE |
                                      MIGRATE_VMA_SELECT_COMPOUND | MIGRATE_VMA_FAULT;

void check_args(const ContextImpl& ctx, const MigrateVma& a) {
  if (a.src == nullptr || a.dst == nullptr)
    throw Error(Errc::invalid_argument, "migrate_vma_setup: src and dst arrays are required");
  if (a.end <= a.start)
    throw Error(a.end == a.start ? Errc::zero_length : Errc::invalid_argument,
                fmt::format("migrate_vma_setup: end {} is not after start {}", a.end, a.start));
  if ((a.flags & ~kKnownFlags) != 0)
    throw Error(Errc::invalid_argument, fmt::format("migrate_vma_setup: unknown flags {:#x}", a.flags & ~kKnownFlags));
  if ((a.flags & (MIGRATE_VMA_SELECT_SYSTEM | MIGRATE_VMA_SELECT_DEVICE_PRIVATE)) == 0)
    throw Error(Errc::invalid_argument, "migrate_vma_setup: select SYSTEM and/or DEVICE_PRIVATE pages");
  if ((a.flags & MIGRATE_VMA_SELECT_DEVICE_PRIVATE) != 0 && ctx.pagemap(a.pgmap_owner) == nullptr)
    throw Error(Errc::invalid_argument,
                fmt::format("migrate_vma_setup: pgmap_owner {} is not a device of this context", a.pgmap_owner));
  if (a.session) throw Error(Errc::busy, "migrate_vma_setup: this MigrateVma is already set up; finalize it first");
}

// Which pages setup takes, and what src[] says of them.
std::uint64_t select(MirrorEntry e, const MigrateVma& a) {
  if (e.locked() || e.has(MirrorEntry::kPinned) || e.has(MirrorEntry::kPoisoned)) return 0;
  switch (e.residency()) {
    case Residency::Empty:
      return (a.flags & MIGRATE_VMA_FAULT) && (a.flags & MIGRATE_VMA_SELECT_SYSTEM)
                 ? MIGRATE_PFN_MIGRATE | MIGRATE_PFN_WRITE
                 : 0;
    case Residency::System:
      return (a.flags & MIGRATE_VMA_SELECT_SYSTEM) ? MIGRATE_PFN_MIGRATE | MIGRATE_PFN_VALID | MIGRATE_PFN_WRITE : 0;
    case Residency::Device:
      return (a.flags & MIGRATE_VMA_SELECT_DEVICE_PRIVATE) && e.device_page().owner == a.pgmap_owner
                 ? migrate_pfn_device(e.device_page()) | MIGRATE_PFN_MIGRATE | MIGRATE_PFN_WRITE
                 : 0;
    case Residency::Duplicated:
      return 0;  // read-mostly: already on a device, and on the host (a write collapses it first)
  }
  return 0;
}

// A held migration's walk also locks what is already on the destination.
bool already_there(MirrorEntry e, OwnerId destination) {
  return (e.residency() == Residency::Device || e.residency() == Residency::Duplicated) &&
         e.device_page().owner == destination && !e.locked();
}

int drop_host_copies(ContextImpl& ctx, ManagedRange& range, std::size_t first, std::size_t count) noexcept {
  if (const int injected = test_points::migration_drop_error.load(std::memory_order_relaxed); injected != 0) {
    if (count > 1) (void)ctx.mechanism->drop(range, first, count / 2);  // stopped part way
    return injected;
  }
  return ctx.mechanism->drop(range, first, count);
}

// The pages [first, first + n) with `mine` that the application discarded
// while this migration held them (still LOCKED): unlock() empties them. Rare:
// one page at a time, no allocation.
template <class Mine>
void unlock_discarded(ContextImpl& ctx, ManagedRange& range, std::size_t first, std::size_t n, Mine&& mine) noexcept {
  auto& table = range.table();
  for (std::size_t i = 0; i < n; ++i) {
    if (!mine(i)) continue;
    const std::size_t p = first + i;
    bool discarded = false;
    {
      std::lock_guard lock(table.block_mutex(MirrorTable::block_of(p)));
      discarded = table.entry(p).has(MirrorEntry::kDiscarded);
    }
    if (discarded) ctx.unlock(range, std::span(&p, 1));
  }
}

// Migrated pages whose host copies could not be dropped (`pages`, ascending,
// still locked): the device copies come back over them (a run the failed
// drop zapped in part gets its data back; a page still mapped keeps its own,
// which the copy read), the device pages are freed, and src[] reports them
// not migrated. Returns the reason, naming the usual cause.
Status back_to_host(ContextImpl& ctx, ManagedRange& range, const std::vector<std::size_t>& pages, int err,
                    MigrateVma& a, std::size_t first) {
  StagingBuffer staging(ctx.staging());
  std::size_t lost = 0;
  for (std::size_t k = 0; k < pages.size();) {
    const std::size_t block = MirrorTable::block_of(pages[k]);
    std::size_t end = k;
    while (end < pages.size() && MirrorTable::block_of(pages[end]) == block) ++end;
    const std::span<const std::size_t> of_block(pages.data() + k, end - k);
    if (staging.get() == nullptr) {
      lost += of_block.size();
    } else {
      const ContextImpl::BackResult r = ctx.bring_back(range, of_block, staging.get());
      lost += r.failed.size();
      for (std::size_t p : of_block) {
        if (std::find(r.failed.begin(), r.failed.end(), p) != r.failed.end()) continue;
        a.src[p - first] &= ~MIGRATE_PFN_MIGRATE;
        a.dst[p - first] = 0;  // freed by bring_back
      }
    }
    k = end;
  }
  if (lost > 0)
    log().critical("{} migrated pages at {} kept a host copy that could not be dropped ({}) nor replaced by their "
                   "device copy: a CPU access may read stale data",
                   lost, static_cast<void*>(range.page_address(pages.front())), std::strerror(err));
  return {Errc::system_error,
          fmt::format("{} pages stayed on the host: dropping their host copies failed ({}){}", pages.size() - lost,
                      std::strerror(err),
                      err == EINVAL ? "; the memory is mlock'ed and this kernel lacks MADV_DONTNEED_LOCKED (Linux 5.18)"
                                    : err == ENOMEM ? "; the process is out of mappings (vm.max_map_count)"
                                                    : "; is the memory mlock'ed?")};
}

// Signal mode: a never-touched page is open, so the application or the kernel
// may have written it unseen. Setup holds (write-protects) the Empty pages it
// selected, then asks which hold data: those are host pages (copied, and
// recorded System), the rest are zero-filled on the device as usual.
void adopt_written_empty_pages(ContextImpl& ctx, MigrateVma& a, MigrationSession& s) {
  auto& range = s.span.range();
  auto& table = range.table();
  const std::size_t first = s.span.first();
  const auto empty = [&](std::size_t i) {
    return s.selected[i] && s.source[i] == static_cast<std::uint8_t>(Residency::Empty);
  };
  std::vector<std::uint8_t> present;
  for_each_run(0, s.span.count(), empty, [&](std::size_t i, std::size_t count) {
    present.assign(count, 1);
    if (const int err = ctx.mechanism->host_data(range, first + i, count, present.data()); err != 0) {
      log().warn("migrate_vma_setup: asking which never-touched pages hold data failed ({}): all are copied",
                 std::strerror(err));
      present.assign(count, 1);
    }
    for (std::size_t k = 0; k < count; ++k) {
      if (!present[k]) continue;
      std::lock_guard lock(table.block_mutex(MirrorTable::block_of(first + i + k)));
      table.entry(first + i + k).move_to(MirrorEntry::system());  // keeps LOCKED
      s.source[i + k] = static_cast<std::uint8_t>(Residency::System);
      a.src[i + k] |= MIGRATE_PFN_VALID;
    }
  });
}

}  // namespace

void migrate_vma_setup(ContextImpl& ctx, MigrateVma& a, const SetupVisitor* visit, const PageFilter* leave,
                       PageHold* hold) {
  check_args(ctx, a);
  const std::size_t bytes =
      static_cast<std::size_t>(static_cast<std::byte*>(a.end) - static_cast<std::byte*>(a.start));
  auto session = std::make_shared<MigrationSession>();
  session->span = ctx.ranges.resolve(a.start, bytes, "migrate_vma_setup");
  auto& range = session->span.range();
  auto& table = range.table();
  const std::size_t first = session->span.first();
  const std::size_t n = session->span.count();
  session->selected.assign(n, 0);
  session->source.assign(n, 0);
  session->hold = hold;
  // Pages written while open are host pages (selected without FAULT too);
  // one written after this is found once setup holds it, below.
  learn_written_pages(ctx, range, first, n);

  // The one walk: select and lock, block by block.
  std::size_t cpages = 0;
  for (std::size_t block = table.block_of(first); block <= table.block_of(first + n - 1); ++block) {
    const std::size_t lo = std::max(first, table.block_begin(block));
    const std::size_t hi = std::min(first + n, table.block_end(block));
    std::lock_guard lock(table.block_mutex(block));
    for (std::size_t p = lo; p < hi; ++p) {
      MirrorEntry& e = table.entry(p);
      const std::size_t i = p - first;
      a.src[i] = select(e, a);
      if (leave != nullptr && a.src[i] != 0 && e.residency() == Residency::System && (*leave)(p)) a.src[i] = 0;
      a.dst[i] = 0;
      if (visit != nullptr) (*visit)(i, e, a.src[i]);
      if (hold != nullptr && already_there(e, a.destination)) {
        e.set(MirrorEntry::kLocked);
        hold->held[i] = 1;
      }
      if (a.src[i] & MIGRATE_PFN_MIGRATE) {
        e.set(MirrorEntry::kLocked);
        e.clear(MirrorEntry::kDiscarded);  // left by an earlier holder; this migration reads the page afresh
        session->selected[i] = 1;
        session->source[i] = static_cast<std::uint8_t>(e.residency());
        ++cpages;
      }
    }
  }

  // Read-mostly host pages keep their host copy (read_mostly.hpp).
  session->duplicate.assign(n, 0);
  for (const AdviceTable::Run& run : range.advice().runs(first, first + n))
    if (run.advice.read_mostly)
      for (std::size_t p = run.first; p < run.end; ++p)
        session->duplicate[p - first] = session->selected[p - first] &&
                                         session->source[p - first] == static_cast<std::uint8_t>(Residency::System);

  // Whole selected blocks of host or never-touched pages move as one unit.
  if (a.flags & MIGRATE_VMA_SELECT_COMPOUND) {
    for (std::size_t block = table.block_of(first); block <= table.block_of(first + n - 1); ++block) {
      const std::size_t lo = table.block_begin(block);
      if (lo < first || lo + kPagesPerBlock > first + n) continue;
      const bool whole = std::all_of(a.src + (lo - first), a.src + (lo - first) + kPagesPerBlock,
                                     [](std::uint64_t w) { return (w & MIGRATE_PFN_MIGRATE) && !(w & MIGRATE_PFN_DEVICE); });
      if (whole) a.src[lo - first] |= MIGRATE_PFN_COMPOUND;
    }
  }

  // Devices drop their view of the selected pages now that they are locked
  // (a snapshot reports them as not valid until finalize unlocks them).
  if (cpages > 0) {
    std::size_t lo = 0, hi = n;
    while (!session->selected[lo]) ++lo;
    while (!session->selected[hi - 1]) --hi;
    ctx.notifiers.invalidate(range, first + lo, first + hi, InvalidateKind::migrate, a.destination).end();
  }

  // Hold writers while the copy runs; readers go on. Pages selected from the
  // host are mapped (the service mapped them), so this always applies; if it
  // fails anyway, those pages are dropped from the migration rather than
  // copied while writable. Where never-touched pages are open (signal mode)
  // they are held too, then asked whether they hold data.
  const bool open_empty = ctx.mechanism->opens_empty_pages();
  for_each_run(
      0, n,
      [&](std::size_t i) {
        return session->selected[i] && !(a.src[i] & MIGRATE_PFN_DEVICE) &&
               ((a.src[i] & MIGRATE_PFN_VALID) ||
                (open_empty && session->source[i] == static_cast<std::uint8_t>(Residency::Empty)));
      },
      [&](std::size_t i, std::size_t count) {
        const int err = ctx.mechanism->write_protect(range, first + i, count, true);
        if (err == 0) return;
        log().error("write-protecting {} pages at {} failed ({}): they stay on the host", count,
                    static_cast<void*>(range.page_address(first + i)), std::strerror(err));
        for (std::size_t k = i; k < i + count; ++k) {
          std::lock_guard lock(table.block_mutex(MirrorTable::block_of(first + k)));
          table.entry(first + k).clear(MirrorEntry::kLocked);
          session->selected[k] = 0;
          a.src[k] = 0;
          --cpages;
        }
        ctx.unlocks.announce();
      });
  if (open_empty) adopt_written_empty_pages(ctx, a, *session);
  a.cpages = cpages;
  a.session = std::move(session);
}

std::size_t migrate_vma_pages(ContextImpl& ctx, MigrateVma& a) {
  if (!a.session) throw Error(Errc::invalid_argument, "migrate_vma_pages: call migrate_vma_setup first");
  auto& s = *a.session;
  if (s.pages_done) throw Error(Errc::invalid_argument, "migrate_vma_pages: already called for this migration");
  auto& range = s.span.range();
  auto& table = range.table();
  const std::size_t first = s.span.first();
  const std::size_t n = s.span.count();
  std::size_t migrated = 0;
  const std::uint64_t now = ctx.recency->tick();  // a migration onto a device is a use of its chunks
  for (std::size_t block = table.block_of(first); block <= table.block_of(first + n - 1); ++block) {
    const std::size_t lo = std::max(first, table.block_begin(block));
    const std::size_t hi = std::min(first + n, table.block_end(block));
    std::lock_guard lock(table.block_mutex(block));
    for (std::size_t p = lo; p < hi; ++p) {
      const std::size_t i = p - first;
      MirrorEntry& e = table.entry(p);
      // The application discarded the page while it was copied: what the copy
      // read may predate the discard, so the page does not move (as the kernel
      // fails to migrate a page whose PTE changed under migrate_vma), and
      // finalize's unlock empties it.
      const bool discarded = s.selected[i] && e.has(MirrorEntry::kDiscarded);
      const bool ok = s.selected[i] && (a.src[i] & MIGRATE_PFN_MIGRATE) && (a.dst[i] & MIGRATE_PFN_VALID) &&
                      (a.dst[i] & MIGRATE_PFN_DEVICE) && ctx.pagemap(migrate_pfn_to_device_page(a.dst[i]).owner) &&
                      !discarded;
      if (!ok) {
        a.src[i] &= ~MIGRATE_PFN_MIGRATE;
        continue;
      }
      const DevicePage page = migrate_pfn_to_device_page(a.dst[i]);
      e.move_to(s.duplicate[i] ? MirrorEntry::duplicated(page) : MirrorEntry::device(page));
      ctx.rmap(page.owner).set(page.index, {range.id(), static_cast<std::uint32_t>(p)});
      ctx.recency->touch(page, now);
      ++migrated;
    }
  }
  s.pages_done = true;
  return migrated;
}

Status migrate_vma_finalize(ContextImpl& ctx, MigrateVma& a) {
  if (!a.session) throw Error(Errc::invalid_argument, "migrate_vma_finalize: call migrate_vma_setup first");
  const auto session = std::move(a.session);
  auto& s = *session;
  auto& range = s.span.range();
  auto& table = range.table();
  const std::size_t first = s.span.first();
  const std::size_t n = s.span.count();
  auto migrated = [&](std::size_t i) { return s.pages_done && s.selected[i] && (a.src[i] & MIGRATE_PFN_MIGRATE); };
  auto from = [&](std::size_t i, Residency r) { return s.selected[i] && s.source[i] == static_cast<std::uint8_t>(r); };

  // Host copies of migrated pages go, one call per run, while still locked:
  // an access now faults and waits for the unlock below, then finds the page
  // on the device.
  bool zapped = false;
  // Never-touched pages are zapped too where the application's madvise is
  // followed: after its MADV_FREE (or in the moment before its MADV_DONTNEED
  // zaps) an Empty page can still be mapped, and must not shadow its new
  // device home. In signal mode an Empty page is open: it is closed (its
  // hole punched) like a host page.
  const bool follows = ctx.mechanism->follows_mapping_changes();
  const bool open_empty = ctx.mechanism->opens_empty_pages();
  auto had_host_page = [&](std::size_t i) {
    return from(i, Residency::System) || ((follows || open_empty) && from(i, Residency::Empty));
  };
  // Duplicated pages keep theirs, write-protected. A run whose host copy
  // cannot go (mlock'ed memory on a kernel without MADV_DONTNEED_LOCKED, no
  // mapping left to split) goes back to the host below.
  std::vector<std::size_t> undropped;
  int drop_error = 0;
  auto dropped = [&](std::size_t i) { return migrated(i) && had_host_page(i) && !s.duplicate[i]; };
  for_each_run(0, n, dropped, [&](std::size_t i, std::size_t count) {
    zapped = true;
    const int err = drop_host_copies(ctx, range, first + i, count);
    if (err == 0) return;
    drop_error = err;
    for (std::size_t k = i; k < i + count; ++k) undropped.push_back(first + k);
  });
  // With mapping events, each drop (MADV_DONTNEED) raised a REMOVE event that
  // the fault service has read (the kernel waits for that) but may not have
  // applied yet; it must see these pages still locked, or it would take
  // uhmm's own zap for the application's and drop the device pages
  // (mapping_events.hpp). The DISCARDED marks it left name that zap.
  if (zapped && follows) {
    ctx.ranges.gate().wait_applied();
    for (std::size_t i = 0; i < n; ++i)
      if (dropped(i)) table.forget_own_discard(first + i);
  }
  Status kept;
  if (!undropped.empty()) kept = back_to_host(ctx, range, undropped, drop_error, a, first);
  // Pages that stay on the host become writable again; their writers are
  // woken below, once the pages are unlocked.
  auto stayed = [&](std::size_t i) {
    return !migrated(i) && (from(i, Residency::System) || (open_empty && from(i, Residency::Empty)));
  };
  for_each_run(0, n, stayed, [&](std::size_t i, std::size_t count) {
    // On failure they stay read-only: a store faults, and the fault service
    // lifts the protection then (the mirror says System).
    if (const int err = ctx.mechanism->write_protect(range, first + i, count, false); err != 0)
      log().error("lifting the write-protection of {} pages at {} that stayed on the host failed: {}", count,
                  static_cast<void*>(range.page_address(first + i)), std::strerror(err));
  });

  // Device pages that back nothing now: destinations of failed pages, and the
  // sources of device-to-device moves.
  std::vector<std::vector<DevicePageIndex>> to_free(ctx.device_count() + 1);
  std::uint64_t to_device = 0, zero_filled = 0, compound = 0, duplicated = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (!s.selected[i]) continue;
    if (migrated(i)) {
      if (from(i, Residency::Device)) {
        const DevicePage old = migrate_pfn_to_device_page(a.src[i]);
        to_free[old.owner].push_back(old.index);
      }
      from(i, Residency::Empty) ? ++zero_filled : ++to_device;
      duplicated += s.duplicate[i];
      if ((a.src[i] & MIGRATE_PFN_COMPOUND) && (a.dst[i] & MIGRATE_PFN_COMPOUND)) ++compound;
    } else if (a.dst[i] & MIGRATE_PFN_VALID) {
      const DevicePage page = migrate_pfn_to_device_page(a.dst[i]);
      if (ctx.pagemap(page.owner) != nullptr) to_free[page.owner].push_back(page.index);
    }
  }

  bool any_discarded = false;
  for (std::size_t block = table.block_of(first); block <= table.block_of(first + n - 1); ++block) {
    const std::size_t lo = std::max(first, table.block_begin(block));
    const std::size_t hi = std::min(first + n, table.block_end(block));
    std::lock_guard lock(table.block_mutex(block));
    for (std::size_t p = lo; p < hi; ++p) {
      const std::size_t i = p - first;
      if (!s.selected[i]) continue;
      if (s.hold != nullptr && migrated(i)) s.hold->held[i] = 1;  // the launch unlocks it
      else if (table.entry(p).has(MirrorEntry::kDiscarded)) any_discarded = true;  // unlocked (emptied) below
      else table.entry(p).clear(MirrorEntry::kLocked);
    }
  }
  for (const OwnerId owner : owner_ids(to_free.size() - 1)) {
    if (to_free[owner].empty()) continue;
    for (DevicePageIndex index : to_free[owner]) ctx.rmap(owner).clear(index);
    ctx.pagemap(owner)->page_free(to_free[owner]);
  }
  if (any_discarded)
    unlock_discarded(ctx, range, first, n, [&](std::size_t i) { return s.selected[i] && !(s.hold && migrated(i)); });
  ctx.unlocks.announce();
  for_each_run(0, n, stayed, [&](std::size_t i, std::size_t count) {
    ctx.mechanism->wake(reinterpret_cast<std::uintptr_t>(range.page_address(first + i)), count * kPageSize);
  });

  AtomicCounters::add(ctx.counters.pages_to_device, to_device + zero_filled);
  AtomicCounters::add(ctx.counters.bytes_to_device, to_device * kPageSize);
  AtomicCounters::add(ctx.counters.pages_zero_filled_on_device, zero_filled);
  AtomicCounters::add(ctx.counters.compound_migrations, compound);
  AtomicCounters::add(ctx.counters.pages_duplicated, duplicated);
  ctx.check_invariants();
  return kept;
}

}  // namespace uhmm::detail

namespace uhmm {

void migrate_vma_setup(Context& ctx, MigrateVma& args) {
  detail::DeferSignals defer;
  detail::migrate_vma_setup(ctx.impl(), args);
}
std::size_t migrate_vma_pages(Context& ctx, MigrateVma& args) {
  detail::DeferSignals defer;
  return detail::migrate_vma_pages(ctx.impl(), args);
}
// Pages whose host copy could not be dropped are reported through src[] (no
// MIGRATE), as the kernel reports pages it could not migrate.
void migrate_vma_finalize(Context& ctx, MigrateVma& args) {
  detail::DeferSignals defer;
  (void)detail::migrate_vma_finalize(ctx.impl(), args);
}
std::size_t migrate_device_range(Context& ctx, OwnerId owner, DevicePageIndex first, std::size_t npages) {
  detail::DeferSignals defer;
  return ctx.impl().migrate_device_range(owner, first, npages);
}

}  // namespace uhmm
