// snapshot_range: one walk of the mirror table reporting each page to a
// device (hmm_range_fault), populating or bringing back pages on request, or
// riding on migrate_vma_setup's walk for SNAPSHOT_REQ_MIGRATE.
#include "uhmm/range_snapshot.hpp"

#include <algorithm>
#include <bitset>
#include <cerrno>
#include <cstring>
#include <new>
#include <optional>
#include <vector>

#include <fmt/format.h>

#include "context_core.hpp"
#include "migration.hpp"
#include "deferred_signals.hpp"
#include "locked_pages.hpp"
#include "written_pages.hpp"
#include "page_runs.hpp"
#include "uhmm/context.hpp"
#include "uhmm/detail/test_points.hpp"

namespace uhmm::detail {
namespace {

constexpr std::uint64_t kPageRequests = SNAPSHOT_REQ_POPULATE | SNAPSHOT_REQ_HOST;
constexpr std::uint64_t kRangeRequests = kPageRequests | SNAPSHOT_REQ_MIGRATE;

void check_args(const Mm& ctx, const SnapshotRange& r) {
  if (r.pfns == nullptr) throw Error(Errc::invalid_argument, "snapshot_range: the pfns array is required");
  if (r.end <= r.start)
    throw Error(r.end == r.start ? Errc::zero_length : Errc::invalid_argument,
                fmt::format("snapshot_range: end {} is not after start {}", r.end, r.start));
  if ((r.default_flags & ~kRangeRequests) != 0)
    throw Error(Errc::invalid_argument,
                fmt::format("snapshot_range: unknown request bits {:#x} in default_flags", r.default_flags & ~kRangeRequests));
  if ((r.pfn_flags_mask & ~kPageRequests) != 0)
    throw Error(Errc::invalid_argument,
                fmt::format("snapshot_range: pfn_flags_mask {:#x} has bits that are not per-page requests "
                            "(POPULATE, HOST; MIGRATE goes in default_flags)",
                            r.pfn_flags_mask));
  if (r.owner != kNoOwner && ctx.pagemap(r.owner) == nullptr)
    throw Error(Errc::invalid_argument, fmt::format("snapshot_range: owner {} is not a device of this context", r.owner));
  const bool requests = (r.default_flags | r.pfn_flags_mask) != 0;
  if (requests && NotifierRegistry::in_callback())
    throw Error(Errc::busy, "snapshot_range: request bits are not allowed inside a notifier callback (they may wait "
                            "for pages the invalidation holds)");
  if (r.default_flags & SNAPSHOT_REQ_MIGRATE) {
    if (r.owner == kNoOwner)
      throw Error(Errc::invalid_argument, "snapshot_range: SNAPSHOT_REQ_MIGRATE needs the owner to migrate to");
    if (r.migrate == nullptr)
      throw Error(Errc::invalid_argument, "snapshot_range: SNAPSHOT_REQ_MIGRATE needs a MigrateVma to set up");
    if ((r.default_flags & kPageRequests) != 0 || r.pfn_flags_mask != 0)
      throw Error(Errc::invalid_argument,
                  "snapshot_range: SNAPSHOT_REQ_MIGRATE goes alone (the migration populates never-touched pages itself)");
  }
}

// What a device sees of a page whose entry is e.
std::uint64_t word_of(MirrorEntry e, OwnerId requester) {
  if (e.has(MirrorEntry::kPoisoned)) return SNAPSHOT_PFN_ERROR;
  if (e.has(MirrorEntry::kDiscarded)) return 0;  // the application discarded it: not valid
  const DevicePage page = e.device_page();
  const std::uint64_t page_bits = (std::uint64_t{page.owner} << SNAPSHOT_PFN_OWNER_SHIFT) |
                                  (std::uint64_t{page.index} << SNAPSHOT_PFN_INDEX_SHIFT);
  const bool mine = requester != kNoOwner && page.owner == requester;
  const std::uint64_t write = e.has(MirrorEntry::kWrite) ? SNAPSHOT_PFN_WRITE : 0;
  switch (e.residency()) {
    case Residency::Empty:
      return 0;
    case Residency::System:
      return SNAPSHOT_PFN_VALID | write;
    case Residency::Device:
      return mine ? SNAPSHOT_PFN_VALID | SNAPSHOT_PFN_DEVICE_PRIVATE | write | page_bits
                  : SNAPSHOT_PFN_OTHER_DEVICE | page_bits;
    case Residency::Duplicated:  // read-only on both sides
      return SNAPSHOT_PFN_VALID | (mine ? SNAPSHOT_PFN_DEVICE_PRIVATE | page_bits : 0);
  }
  return 0;
}

Status snapshot_migrate(Mm& ctx, SnapshotRange& r) {
  MigrateVma& m = *r.migrate;
  m.start = r.start;
  m.end = r.end;
  m.flags |= MIGRATE_VMA_FAULT;
  if ((m.flags & (MIGRATE_VMA_SELECT_SYSTEM | MIGRATE_VMA_SELECT_DEVICE_PRIVATE)) == 0)
    m.flags |= MIGRATE_VMA_SELECT_SYSTEM;
  m.destination = r.owner;
  const SetupVisitor visit = [&](std::size_t i, MirrorEntry before, std::uint64_t src) {
    r.pfns[i] = word_of(before, r.owner) | ((src & MIGRATE_PFN_MIGRATE) ? SNAPSHOT_PFN_MIGRATE : 0);
    if (before.locked() && !(src & MIGRATE_PFN_MIGRATE)) r.pfns[i] = 0;  // held by someone else: not valid now
  };
  migrate_vma_setup(ctx, m, &visit);
  // Pages setup had to give up after the walk (write-protection failed) are
  // not collected after all.
  for (std::size_t i = 0; i < m.npages(); ++i)
    if (!(m.src[i] & MIGRATE_PFN_MIGRATE)) r.pfns[i] &= ~SNAPSHOT_PFN_MIGRATE;
  return {};
}

Status snapshot(Mm& ctx, SnapshotRange& r) {
  check_args(ctx, r);
  r.populated = 0;
  if (r.default_flags & SNAPSHOT_REQ_MIGRATE) return snapshot_migrate(ctx, r);

  const std::size_t bytes =
      static_cast<std::size_t>(static_cast<std::byte*>(r.end) - static_cast<std::byte*>(r.start));
  const RangeSpan span = ctx.ranges.resolve(r.start, bytes, "snapshot_range", !NotifierRegistry::in_callback());
  auto& range = span.range();
  auto& table = range.table();
  const std::size_t first = span.first();
  const std::size_t n = span.count();
  learn_written_pages(ctx, range, first, n);

  // The requests, read before the words are overwritten. Without any, one
  // pass under the block mutexes reports what is there.
  std::vector<std::uint8_t> request;
  const bool any_request = (r.default_flags | r.pfn_flags_mask) != 0;
  if (any_request) {
    request.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint64_t want = (r.pfns[i] & r.pfn_flags_mask) | r.default_flags;
      request[i] = (want & SNAPSHOT_REQ_HOST) ? 2 : (want & SNAPSHOT_REQ_POPULATE) ? 1 : 0;
    }
  }
  std::vector<std::uint8_t> pending(n, 1);
  std::size_t left = n;
  Status status;
  std::optional<StagingBuffer> staging;  // taken on the first page to bring back
  std::size_t populated = 0;

  while (left > 0) {
    const std::uint64_t generation = ctx.unlocks.generation();
    bool waiting = false;
    for (std::size_t block = table.block_of(first); block <= table.block_of(first + n - 1); ++block) {
      const std::size_t lo = std::max(first, table.block_begin(block));
      const std::size_t hi = std::min(first + n, table.block_end(block));
      // Pages this pass holds: never-touched ones to populate, device ones to
      // bring back. Nothing allocates from the first lock to the unlock.
      LockedPages zero(ctx, range), back(ctx, range);
      zero.reserve(hi - lo);
      back.reserve(hi - lo);
      {
        std::lock_guard lock(table.block_mutex(block));
        for (std::size_t p = lo; p < hi; ++p) {
          const std::size_t i = p - first;
          if (!pending[i]) continue;
          MirrorEntry& e = table.entry(p);
          const unsigned want = any_request ? request[i] : 0;
          if (want != 0 && e.locked() && !e.has(MirrorEntry::kPoisoned)) {
            waiting = true;  // a migration or kernel holds it: its outcome is what the request needs
            continue;
          }
          pending[i] = 0;
          --left;
          if (e.locked()) {
            r.pfns[i] = 0;  // in transition: not valid until its holder is done
          } else if (want != 0 && e.residency() == Residency::Empty && !e.has(MirrorEntry::kPoisoned)) {
            zero.take(e, p);
          } else if (want == 2 && e.residency() == Residency::Device && !e.has(MirrorEntry::kPoisoned)) {
            back.take(e, p);
          } else {
            r.pfns[i] = word_of(e, r.owner);
          }
        }
      }
      // Never-touched pages become host zero pages, one install per run. One
      // the application discards meanwhile is emptied again at the unlock.
      const std::span<const std::size_t> zeros = zero.pages(), backs = back.pages();
      std::bitset<kPagesPerBlock> zero_ok;  // by index in zeros
      std::size_t unpopulated = 0;          // the first page whose install failed, and why
      int populate_error = 0;
      if (!zeros.empty()) test_points::at(test_points::held_install, range.page_address(zeros.front()), false);
      for (std::size_t k = 0; k < zeros.size();) {
        std::size_t run = 1;
        while (k + run < zeros.size() && zeros[k + run] == zeros[k] + run) ++run;
        int err = ctx.mechanism->install_zeros(range, zeros[k], run);
        if (err == 0) {
          for (std::size_t q = k; q < k + run; ++q) zero_ok.set(q);
        } else {
          for (std::size_t q = k; q < k + run; ++q) {
            err = ctx.mechanism->install_zeros(range, zeros[q], 1);
            if (err == 0 || err == EEXIST) {
              zero_ok.set(q);  // EEXIST: mapped already (what the request wants)
            } else if (populate_error == 0) {
              unpopulated = zeros[q];
              populate_error = err;
            }
          }
        }
        k += run;
      }
      if (!zeros.empty()) test_points::at(test_points::held_install, range.page_address(zeros.front()), true);
      // Device pages asked to be host pages come back (notifiers hear of it).
      BackResult came_back;
      bool none_came_back = false;
      if (!backs.empty()) {
        if (!staging) staging.emplace(ctx.staging());
        none_came_back = staging->get() == nullptr;
        if (!none_came_back)
          came_back = bring_back(ctx, range, backs, staging->get(), InvalidateKind::migrate, kNoOwner);
      }
      {
        std::lock_guard lock(table.block_mutex(block));
        for (std::size_t k = 0; k < zeros.size(); ++k) {
          MirrorEntry& e = table.entry(zeros[k]);
          if (zero_ok[k]) {
            if (e.residency() == Residency::Empty) e.move_to(MirrorEntry::system());
            ++populated;
          }
          r.pfns[zeros[k] - first] = zero_ok[k] ? word_of(e, r.owner) : SNAPSHOT_PFN_ERROR;
        }
        for (std::size_t p : backs) {
          const bool failed = none_came_back || std::find(came_back.failed.begin(), came_back.failed.end(), p) !=
                                                    came_back.failed.end();
          r.pfns[p - first] = failed ? SNAPSHOT_PFN_ERROR | word_of(table.entry(p), r.owner) : word_of(table.entry(p), r.owner);
        }
      }
      // Unlocking reports the pages (words are written) and wakes their faults.
      zero.unlock();
      back.unlock();
      // What failed is told once nothing is held (telling it allocates).
      if (populate_error != 0 && status)
        status = {Errc::system_error, fmt::format("snapshot_range: populating the page at {} failed: {}",
                                                  static_cast<void*>(range.page_address(unpopulated)),
                                                  std::strerror(populate_error))};
      if (none_came_back && status) status = {Errc::out_of_memory, "snapshot_range: no host memory for a staging buffer"};
      if (!came_back.status && status) status = came_back.status;
    }
    if (left > 0 && waiting) ctx.unlocks.wait_after(generation);
  }
  r.populated = populated;
  AtomicCounters::add(ctx.counters.pages_populated, populated);
  if (any_request) ctx.check_invariants();
  // The words of pages just unlocked were written under their block mutex
  // before the unlock; a concurrent change after it is the notifiers' business.
  return status;
}

}  // namespace

}  // namespace uhmm::detail

namespace uhmm {

Status snapshot_range(Context& ctx, SnapshotRange& range) noexcept {
  detail::DeferSignals defer;
  try {
    return detail::snapshot(detail::core(ctx), range);
  } catch (const Error& e) {
    return {e.code(), e.what()};
  } catch (const std::bad_alloc&) {
    return {Errc::out_of_memory, "snapshot_range: out of host memory"};
  } catch (const std::exception& e) {
    return {Errc::system_error, fmt::format("snapshot_range: {}", e.what())};
  }
}

DevicePagemap& device_pagemap(Context& ctx, OwnerId owner) {
  if (detail::core(ctx).pagemap(owner) == nullptr)
    throw Error(Errc::invalid_argument, fmt::format("device_pagemap: owner {} is not a device of this context", owner));
  return *detail::core(ctx).public_pagemaps[owner - 1];
}

}  // namespace uhmm
