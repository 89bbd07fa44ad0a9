// Migration to a device: migrate_vma_setup / _pages / _finalize (one walk of
// the mirror table collects, locks and write-protects; the driver copies; the
// new homes are recorded; host copies are dropped in contiguous runs).
#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "migration.hpp"
#include "out_of_memory.hpp"
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

void check_args(const Mm& ctx, const MigrateVma& a) {
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

int drop_host_copies(Mm& ctx, ManagedRange& range, std::size_t first, std::size_t count) noexcept {
  if (const int injected = test_points::migration_drop_error.load(std::memory_order_relaxed); injected != 0) {
    if (count > 1) (void)ctx.mechanism->drop(range, first, count / 2);  // stopped part way
    return injected;
  }
  return ctx.mechanism->drop(range, first, count);
}

// The pages [first, first + n) with `mine` that the application discarded
// while this migration held them (still LOCKED): unlock() finishes them (FREED). Rare:
// one page at a time, no allocation.
template <class Mine>
void unlock_discarded(Mm& ctx, ManagedRange& range, std::size_t first, std::size_t n, Mine&& mine) noexcept {
  auto& table = range.table();
  for (std::size_t i = 0; i < n; ++i) {
    if (!mine(i)) continue;
    const std::size_t p = first + i;
    bool discarded = false;
    {
      std::lock_guard lock(table.block_mutex(MirrorTable::block_of(p)));
      discarded = table.entry(p).has(MirrorEntry::kDiscarded);
    }
    if (discarded) unlock_pages(ctx, range, std::span(&p, 1));
  }
}

// Migrated pages whose host copies could not be dropped (s.undropped, still
// locked): the device copies come back over them (a run the failed drop
// zapped in part gets its data back; a page still mapped keeps its own,
// which the copy read), the device pages are freed, and src[] reports them
// not migrated. Allocates nothing: the pages are locked.
struct Undropped {
  std::size_t pages = 0;  // whose host copy could not go
  std::size_t lost = 0;   // of those, the ones not replaced by their device copy either
};
Undropped back_to_host(Mm& ctx, MigrateVma& a, const MigrationSession& s) noexcept {
  auto& range = s.span.range();
  const std::size_t first = s.span.first();
  const std::size_t n = s.span.count();
  StagingBuffer staging(ctx.staging());
  Undropped out;
  std::array<std::size_t, kPagesPerBlock> of_block;
  for (std::size_t i = 0; i < n;) {
    const std::size_t end = range.table().block_end(MirrorTable::block_of(first + i)) - first;
    std::size_t count = 0;
    for (; i < std::min(n, end); ++i)
      if (s.undropped[i]) of_block[count++] = first + i;
    if (count == 0) continue;
    const std::span<const std::size_t> pages(of_block.data(), count);
    out.pages += count;
    if (staging.get() == nullptr) {
      out.lost += count;
      continue;
    }
    const BackResult r = bring_back(ctx, range, pages, staging.get());
    out.lost += r.failed.size();
    for (std::size_t p : pages) {
      if (std::find(r.failed.begin(), r.failed.end(), p) != r.failed.end()) continue;
      a.src[p - first] &= ~MIGRATE_PFN_MIGRATE;
      a.dst[p - first] = 0;  // freed by bring_back
    }
  }
  return out;
}

// Why pages stayed on the host, naming the usual cause (told once nothing is
// locked: it allocates).
Status undropped_status(const Undropped& u, int err) {
  return {Errc::system_error,
          fmt::format("{} pages stayed on the host: dropping their host copies failed ({}){}", u.pages - u.lost,
                      std::strerror(err),
                      err == EINVAL ? "; the memory is mlock'ed and this kernel lacks MADV_DONTNEED_LOCKED (Linux 5.18)"
                                    : err == ENOMEM ? "; the process is out of mappings (vm.max_map_count)"
                                                    : "; is the memory mlock'ed?")};
}

// Gives back the device pages that back nothing now: destinations of pages
// that did not migrate, and the sources of device-to-device moves. Per
// device, a block's worth at a time on the stack: allocates nothing.
template <class Migrated, class From>
void free_unused_device_pages(Mm& ctx, const MigrateVma& a, const MigrationSession& s, Migrated migrated,
                              From from) noexcept {
  const std::size_t n = s.span.count();
  std::array<DevicePageIndex, kPagesPerBlock> batch;
  for (const OwnerId owner : owner_ids(ctx.device_count())) {
    std::size_t count = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (!s.selected[i]) continue;
      DevicePage page;
      if (migrated(i)) {
        if (!from(i, Residency::Device)) continue;
        page = migrate_pfn_to_device_page(a.src[i]);
      } else if (a.dst[i] & MIGRATE_PFN_VALID) {
        page = migrate_pfn_to_device_page(a.dst[i]);
      } else {
        continue;
      }
      if (page.owner != owner) continue;
      ctx.rmap(owner).clear(page.index);
      batch[count++] = page.index;
      if (count == batch.size()) {
        ctx.pagemap(owner)->page_free(batch);
        count = 0;
      }
    }
    if (count > 0) ctx.pagemap(owner)->page_free(std::span<const DevicePageIndex>(batch.data(), count));
  }
}

// Signal mode: a never-touched page is open, so the application or the kernel
// may have written it unseen. Setup holds (write-protects) the Empty pages it
// selected, then asks which hold data: those are host pages (copied, and
// recorded System), the rest are zero-filled on the device as usual.
void adopt_written_empty_pages(Mm& ctx, MigrateVma& a, MigrationSession& s) {
  auto& range = s.span.range();
  auto& table = range.table();
  const std::size_t first = s.span.first();
  const auto empty = [&](std::size_t i) {
    return s.selected[i] && s.source[i] == static_cast<std::uint8_t>(Residency::Empty);
  };
  // Asked a block's worth at a time, on the stack: the pages are locked, and
  // nothing allocates until they are recorded in the session.
  std::array<std::uint8_t, kPagesPerBlock> present;
  for_each_run(0, s.span.count(), empty, [&](std::size_t run, std::size_t run_count) {
    for (std::size_t i = run; i < run + run_count; i += present.size()) {
      const std::size_t count = std::min(present.size(), run + run_count - i);
      present.fill(1);
      if (const int err = ctx.mechanism->host_data(range, first + i, count, present.data()); err != 0) {
        log().warn("migrate_vma_setup: asking which never-touched pages hold data failed ({}): all are copied",
                   std::strerror(err));
        present.fill(1);
      }
      for (std::size_t k = 0; k < count; ++k) {
        if (!present[k]) continue;
        std::lock_guard lock(table.block_mutex(MirrorTable::block_of(first + i + k)));
        table.entry(first + i + k).move_to(MirrorEntry::system());  // keeps LOCKED
        s.source[i + k] = static_cast<std::uint8_t>(Residency::System);
        a.src[i + k] |= MIGRATE_PFN_VALID;
      }
    }
  });
}

}  // namespace

void migrate_vma_setup(Mm& ctx, MigrateVma& a, const SetupVisitor* visit, const PageFilter* leave,
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
  // Everything setup and finalize allocate, before the first page is locked
  // (an allocation that failed later would leave pages locked).
  session->selected.assign(n, 0);
  session->source.assign(n, 0);
  session->undropped.assign(n, 0);
  // Read-mostly pages keep their host copy (read_mostly.hpp): those advised
  // so now; the walk keeps the host pages among them.
  session->duplicate.assign(n, 0);
  for (const AdviceTable::Run& run : range.advice().runs(first, first + n))
    if (run.advice.read_mostly)
      std::fill(session->duplicate.begin() + static_cast<std::ptrdiff_t>(run.first - first),
                session->duplicate.begin() + static_cast<std::ptrdiff_t>(run.end - first), 1);
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

  // Read-mostly host pages keep their host copy (read_mostly.hpp); not one
  // the application freed, which the kernel may yet reclaim unseen.
  const auto freed = [&](std::size_t p) {
    std::lock_guard lock(table.block_mutex(MirrorTable::block_of(p)));
    return table.entry(p).has(MirrorEntry::kFreed);
  };
  for (std::size_t i = 0; i < n; ++i)
    session->duplicate[i] = session->duplicate[i] && session->selected[i] &&
                            session->source[i] == static_cast<std::uint8_t>(Residency::System) && !freed(first + i);

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

std::size_t migrate_vma_pages(Mm& ctx, MigrateVma& a) {
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
      // finalize's unlock finishes it (FREED).
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

Status migrate_vma_finalize(Mm& ctx, MigrateVma& a) {
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
  // followed: an Empty page can still be mapped (a freed page its holder
  // finished as Empty, or one in the moment before a MADV_DONTNEED zaps), and
  // must not shadow its new device home. In signal mode an Empty page is open: it is closed (its
  // hole punched) like a host page.
  const bool follows = ctx.mechanism->follows_mapping_changes();
  const bool open_empty = ctx.mechanism->opens_empty_pages();
  auto had_host_page = [&](std::size_t i) {
    return from(i, Residency::System) || ((follows || open_empty) && from(i, Residency::Empty));
  };
  // Duplicated pages keep theirs, write-protected. A run whose host copy
  // cannot go (mlock'ed memory on a kernel without MADV_DONTNEED_LOCKED, no
  // mapping left to split) goes back to the host below.
  // From here to the unlock nothing allocates (setup reserved what this
  // needs): pages zapped but still locked would stay so.
  bool undropped = false;
  int drop_error = 0;
  auto dropped = [&](std::size_t i) { return migrated(i) && had_host_page(i) && !s.duplicate[i]; };
  for_each_run(0, n, dropped, [&](std::size_t i, std::size_t count) {
    zapped = true;
    const int err = drop_host_copies(ctx, range, first + i, count);
    if (err == 0) return;
    drop_error = err;
    undropped = true;
    std::fill_n(s.undropped.begin() + static_cast<std::ptrdiff_t>(i), count, 1);
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
  Undropped kept;
  if (undropped) kept = back_to_host(ctx, a, s);
  if (kept.lost > 0)
    log().critical("{} migrated pages in [{}, +{} pages) kept a host copy that could not be dropped ({}) nor "
                   "replaced by their device copy: a CPU access may read stale data",
                   kept.lost, static_cast<void*>(range.page_address(first)), n, std::strerror(drop_error));
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

  std::uint64_t to_device = 0, zero_filled = 0, compound = 0, duplicated = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (!migrated(i)) continue;
    from(i, Residency::Empty) ? ++zero_filled : ++to_device;
    duplicated += s.duplicate[i];
    if ((a.src[i] & MIGRATE_PFN_COMPOUND) && (a.dst[i] & MIGRATE_PFN_COMPOUND)) ++compound;
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
  free_unused_device_pages(ctx, a, s, migrated, from);
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
  return kept.pages > 0 ? undropped_status(kept, drop_error) : Status{};
}

}  // namespace uhmm::detail
