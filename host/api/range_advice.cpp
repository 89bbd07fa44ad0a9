#include "range_advice.hpp"

#include <algorithm>
#include <bitset>
#include <cerrno>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "context_core.hpp"
#include "migration.hpp"
#include "deferred_signals.hpp"
#include "locked_pages.hpp"
#include "out_of_memory.hpp"
#include "read_mostly.hpp"
#include "written_pages.hpp"
#include "uhmm/detail/log.hpp"

namespace uhmm::detail {
namespace {

const char* name_of(Advice a) {
  switch (a) {
    case Advice::set_preferred_location: return "set_preferred_location";
    case Advice::unset_preferred_location: return "unset_preferred_location";
    case Advice::set_read_mostly: return "set_read_mostly";
    case Advice::unset_read_mostly: return "unset_read_mostly";
    case Advice::set_accessed_by: return "set_accessed_by";
    case Advice::unset_accessed_by: return "unset_accessed_by";
  }
  return nullptr;
}

// A device location naming a device of this context.
void check_device(const Mm& ctx, Location where, const char* call) {
  if (where.owner == kNoOwner || ctx.pagemap(where.owner) == nullptr)
    throw Error(Errc::invalid_argument, fmt::format("{}: device {} does not exist (this context has devices 1..{})",
                                                    call, where.owner, ctx.device_count()));
}

// For each block of the span, sets LOCKED on the pages `want` selects, hands
// them (ascending) to `use`, then unlocks them (also when `use` throws: it
// allocates before it changes anything). Pages that a migration,
// fault or kernel holds are waited for: their holder may be about to give
// them a new home, which the caller must see. Each page is taken at most
// once: one another thread repopulates after `use` released it holds data
// newer than the call, and is left alone.
template <class Want, class Use>
void take_pages(Mm& ctx, const RangeSpan& span, Want want, Use use) {
  auto& table = span.range().table();
  for (std::size_t block = table.block_of(span.first()); block <= table.block_of(span.end() - 1); ++block) {
    const std::size_t lo = std::max(span.first(), table.block_begin(block));
    const std::size_t hi = std::min(span.end(), table.block_end(block));
    std::bitset<kPagesPerBlock> done;  // by page - lo
    for (;;) {
      const std::uint64_t generation = ctx.unlocks.generation();
      bool waiting = false;
      LockedPages taken(ctx, span.range());
      taken.reserve(hi - lo);
      {
        std::lock_guard lock(table.block_mutex(block));
        for (std::size_t q = lo; q < hi; ++q) {
          MirrorEntry& e = table.entry(q);
          if (done[q - lo] || !want(e)) continue;
          if (e.locked()) {
            waiting = true;
            continue;
          }
          taken.take(e, q);
          done[q - lo] = true;
        }
      }
      if (!taken.empty()) use(taken.pages());
      taken.unlock();
      if (!waiting) break;
      ctx.unlocks.wait_after(generation);
    }
  }
}

}  // namespace

void advise(Mm& ctx, void* p, std::size_t bytes, Advice advice, Location where) {
  const char* what = name_of(advice);
  if (what == nullptr)
    throw Error(Errc::invalid_argument, fmt::format("advise: unknown advice {}", static_cast<int>(advice)));
  // Arguments first, all of them: nothing is recorded for a call that fails.
  switch (advice) {
    case Advice::set_preferred_location:
      if (where.is_host()) break;
      if (!where.is_device())
        throw Error(Errc::invalid_argument, "advise(set_preferred_location): the location must be the host or a device");
      check_device(ctx, where, "advise(set_preferred_location)");
      break;
    case Advice::set_accessed_by:
    case Advice::unset_accessed_by:
      if (!where.is_device())
        throw Error(Errc::invalid_argument,
                    fmt::format("advise({}): the location must be a device (the host always accesses managed memory)",
                                what));
      check_device(ctx, where, what);
      if (where.owner > 64)
        throw Error(Errc::invalid_argument,
                    fmt::format("advise({}): device {}: accessed-by is kept for devices 1..64 only", what, where.owner));
      break;
    default:
      break;  // the location is ignored
  }
  const RangeSpan span = ctx.ranges.resolve(p, bytes, "advise");
  const std::uint64_t bit = where.is_device() && where.owner <= 64 ? std::uint64_t{1} << (where.owner - 1) : 0;
  try {
    span.range().advice().update(span.first(), span.end(), [&](RangeAdvice& a) {
      switch (advice) {
        case Advice::set_preferred_location: a.preferred = where; break;
        case Advice::unset_preferred_location: a.preferred = {}; break;
        case Advice::set_read_mostly: a.read_mostly = true; break;
        case Advice::unset_read_mostly: a.read_mostly = false; break;
        case Advice::set_accessed_by: a.accessed_by |= bit; break;
        case Advice::unset_accessed_by: a.accessed_by &= ~bit; break;
      }
    });
  } catch (const std::bad_alloc&) {
    throw OutOfMemory(fmt::format("advise: no host memory to record advice for [{}, +{:#x})", p, bytes));
  }
  ctx.advised.store(true, std::memory_order_relaxed);
  AtomicCounters::add(ctx.counters.advice_calls, 1);
  if (advice == Advice::unset_read_mostly) {
    // No longer read-mostly: duplicates keep their host copy, and are writable.
    auto& range = span.range();
    take_pages(
        ctx, span, [](MirrorEntry e) { return e.residency() == Residency::Duplicated; },
        [&](std::span<const std::size_t> taken) { collapse_to_host(ctx, range, taken); });
  }
}

RangeAdvice advice_of(const Mm& ctx, const void* p) {
  const auto page = reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(p) & ~(kPageSize - 1));
  const RangeSpan span = ctx.ranges.resolve(page, kPageSize, "advice");
  return span.range().advice().get(span.first());
}

void check_prefetch_location(const Mm& ctx, Location to, const char* call) {
  if (to.is_host()) return;
  if (!to.is_device())
    throw Error(Errc::invalid_argument, fmt::format("{}: the destination must be the host or a device", call));
  check_device(ctx, to, call);
}

MigrationResult prefetch(Mm& ctx, void* p, std::size_t bytes, Location to) {
  check_prefetch_location(ctx, to, "prefetch");
  return to.is_host() ? migrate_to_host(ctx, p, bytes) : migrate_to_device(ctx, p, bytes, to.owner);
}

std::size_t discard(Mm& ctx, void* p, std::size_t bytes) {
  const RangeSpan span = ctx.ranges.resolve(p, bytes, "discard");
  auto& range = span.range();
  learn_written_pages(ctx, range, span.first(), span.count());
  auto& table = range.table();
  const bool follows = ctx.mechanism->follows_mapping_changes();
  std::size_t discarded = 0;
  take_pages(
      ctx, span,
      [](MirrorEntry e) { return e.residency() != Residency::Empty && !e.has(MirrorEntry::kPoisoned); },
      [&](std::span<const std::size_t> taken) {
        // Everything this allocates, before anything changes.
        std::vector<std::uint8_t> kept(taken.size(), 0);
        std::vector<DevicePage> device;
        device.reserve(taken.size());
        std::vector<DevicePageIndex> indices;
        indices.reserve(taken.size());
        // Devices drop their view first (locked pages read as not valid in
        // snapshots meanwhile).
        ctx.notifiers.invalidate(range, taken.front(), taken.back() + 1, InvalidateKind::discard, kNoOwner).end();
        // Host copies go while the pages are locked: an access waits, then
        // finds them Empty and gets zeros.
        // A run whose host copies cannot go is not discarded: it keeps its
        // data (or reads zeros where a failed drop zapped it in part, as a
        // discarded page would), and is not counted.
        for (std::size_t i = 0; i < taken.size();) {
          std::size_t n = 1;
          while (i + n < taken.size() && taken[i + n] == taken[i] + n) ++n;
          if (const int err = ctx.mechanism->drop(range, taken[i], n); err != 0) {
            log().error("discard: dropping {} host pages at {} failed ({}): they are not discarded", n,
                        static_cast<void*>(range.page_address(taken[i])), std::strerror(err));
            std::fill(kept.begin() + static_cast<std::ptrdiff_t>(i), kept.begin() + static_cast<std::ptrdiff_t>(i + n), 1);
          }
          i += n;
        }
        // uhmm's own zap raised REMOVE events: the fault service must apply
        // them while the pages are still locked (as migrate_vma_finalize does).
        if (follows) ctx.ranges.gate().wait_applied();
        for (std::size_t k = 0; k < taken.size(); ++k) {
          if (kept[k]) continue;
          const std::size_t q = taken[k];
          std::lock_guard lock(table.block_mutex(MirrorTable::block_of(q)));
          MirrorEntry& e = table.entry(q);
          if (e.residency() == Residency::Device || e.residency() == Residency::Duplicated)
            device.push_back(e.device_page());
          e.move_to(MirrorEntry{});  // Empty; keeps PINNED and LOCKED
          e.clear(MirrorEntry::kDiscarded);  // left by the zap above
        }
        // Signal mode: Empty pages are open (their holes read zeros), so that
        // system calls on them work.
        if (ctx.mechanism->opens_empty_pages())
          for (std::size_t i = 0; i < taken.size();) {
            std::size_t n = 1;
            while (i + n < taken.size() && taken[i + n] == taken[i] + n) ++n;
            ctx.mechanism->install_zeros(range, taken[i], n);
            i += n;
          }
        std::sort(device.begin(), device.end(), [](DevicePage a, DevicePage b) {
          return a.owner != b.owner ? a.owner < b.owner : a.index < b.index;
        });
        for (std::size_t i = 0; i < device.size();) {
          const OwnerId owner = device[i].owner;
          indices.clear();
          for (; i < device.size() && device[i].owner == owner; ++i) {
            ctx.rmap(owner).clear(device[i].index);
            indices.push_back(device[i].index);
          }
          ctx.pagemap(owner)->page_free(indices);
        }
        discarded += static_cast<std::size_t>(std::count(kept.begin(), kept.end(), 0));
      });
  AtomicCounters::add(ctx.counters.pages_discarded_by_call, discarded);
  ctx.check_invariants();
  return discarded;
}

}  // namespace uhmm::detail

namespace uhmm {

void Context::advise(void* p, std::size_t bytes, Advice advice, Location location) {
  detail::DeferSignals defer;
  detail::out_of_memory_as_error("advise", [&] { detail::advise(detail::core(*this), p, bytes, advice, location); });
}
RangeAdvice Context::advice(const void* p) const {
  detail::DeferSignals defer;
  return detail::advice_of(detail::core(*this), p);
}
MigrationResult Context::prefetch(void* p, std::size_t bytes, Location to) {
  detail::DeferSignals defer;
  return detail::out_of_memory_as_error("prefetch", [&] { return detail::prefetch(detail::core(*this), p, bytes, to); });
}
std::size_t Context::discard(void* p, std::size_t bytes) {
  detail::DeferSignals defer;
  return detail::out_of_memory_as_error("discard", [&] { return detail::discard(detail::core(*this), p, bytes); });
}

}  // namespace uhmm
