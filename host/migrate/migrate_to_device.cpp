// Migrations to a device over the mm core (the rounds of migrate_vma passes
// and pressure eviction around them), pool limits, pinning and residency.
#include <algorithm>
#include <vector>

#include <fmt/format.h>

#include "uhmm/migrate.hpp"

#include "eviction.hpp"
#include "migration.hpp"
#include "owner_ids.hpp"
#include "written_pages.hpp"

namespace uhmm::detail {

MigrationResult migrate_to_device(Mm& mm, void* p, std::size_t bytes, OwnerId owner, const PageFilter* leave,
                                  PageHold* hold) {
  const std::uint64_t start_ns = now_ns();
  Device& dev = mm.device(owner, "migrate_to_device");
  const RangeSpan span =
      mm.ranges.resolve(p, bytes, "migrate_to_device");  // validates before anything changes
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
    migrate_vma_setup(mm, args, nullptr, leave, hold);
    const std::uint64_t copy_start = now_ns();
    const Status copied = args.cpages > 0 ? dev.alloc_and_copy(args) : Status{};
    AtomicCounters::add(mm.counters.copy_ns_to_device, args.cpages > 0 ? now_ns() - copy_start : 0);
    migrate_vma_pages(mm, args);
    const Status kept = migrate_vma_finalize(mm, args);  // pages whose host copies could not go
    // src[i] now: MIGRATE for pages that moved; other bits without MIGRATE for
    // pages selected that could not move; 0 for pages not selected.
    std::size_t failed = 0;
    for (std::size_t i = 0; i < span.count(); ++i) {
      if (src[i] & MIGRATE_PFN_MIGRATE)
        outcome[i] = kMoved;
      else if (src[i] != 0)
        outcome[i] = kFailed, ++failed;
    }
    if (failed > 0) {
      round_failure = !kept ? kept : copied ? Status{Errc::device_error, "pages were not migrated"} : copied;
      if (round_failure.code != Errc::out_of_memory) AtomicCounters::add(mm.counters.copy_failures, 1);
      failure = round_failure;
    }
  };
  auto all_passes = [&] {
    pass(MIGRATE_VMA_SELECT_SYSTEM | MIGRATE_VMA_FAULT | MIGRATE_VMA_SELECT_COMPOUND, kNoOwner);
    for (const OwnerId other : owner_ids(mm.device_count())) {
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
    if (left == 0 || round_failure.code != Errc::out_of_memory || !mm.options.evict ||
        round + 1 == kEvictionRounds)
      break;
    // Ranges the application unmapped hold device pages no registered range
    // names (eviction cannot find them by id): releasing those makes room first.
    if (mm.reap_retired(/*wait=*/false) == 0 && make_room(mm, dev.owner(), left, own).pages == 0) break;
  }

  // Per page, the last pass that selected it decides (a page another thread
  // moved between passes may be taken twice, and counts once). Pages already
  // here are used by this request too: their chunks count as recently used.
  MigrationResult result;
  result.pages = span.count();
  const std::uint64_t now = mm.recency->tick();
  for (std::size_t i = 0; i < span.count(); ++i) {
    if (outcome[i] == kMoved) ++result.migrated;
    if (outcome[i] == kFailed) ++result.failed;
    if (outcome[i] != kUntouched) continue;
    const std::size_t page = span.first() + i;
    std::lock_guard lock(table.block_mutex(MirrorTable::block_of(page)));
    const MirrorEntry e = table.entry(page);
    const bool there = (e.residency() == Residency::Device || e.residency() == Residency::Duplicated) &&
                       e.device_page().owner == dev.owner() &&
                       (!e.locked() || (hold != nullptr && hold->held[i]));
    there ? ++result.already : ++result.skipped;
    if (there) mm.recency->touch(e.device_page(), now);
  }
  // A page that failed in an earlier round and was locked by someone else in
  // the later ones failed for that round's reason.
  if (result.failed > 0) {
    result.status = failure ? Status{Errc::device_error, "pages were not migrated"} : failure;
    if (result.status.code == Errc::out_of_memory)
      AtomicCounters::add(mm.counters.alloc_failures, result.failed);
  }
  mm.observer.migrated_to_device(start_ns, dev.owner(), result);
  return result;
}

std::size_t set_device_pool_limit(Mm& mm, OwnerId owner, std::size_t bytes) {
  Device& dev = mm.device(owner, "set_device_pool_limit");
  const std::size_t capacity = dev.capacity_pages() * kPageSize;
  if (bytes > capacity)
    throw Error(Errc::invalid_argument,
                fmt::format("set_device_pool_limit: {} bytes is more than device {}'s pool of {} bytes "
                            "(device_pool_bytes); a pool cannot grow past it",
                            bytes, dev.owner(), capacity));
  // Cap first, so that no migration fills what the eviction empties.
  dev.set_page_limit(bytes / kPageSize);
  const std::size_t evicted = evict_down_to(mm, dev.owner(), bytes / kPageSize).pages;
  // The device's memory shrinks too, not only the pool's count (issue 16, defect 8).
  (void)dev.release_free_chunks();
  return evicted;
}

std::vector<PageState> residency(Mm& mm, const void* p, std::size_t bytes) {
  const RangeSpan span = mm.ranges.resolve(p, bytes, "residency");
  learn_written_pages(mm, span.range(), span.first(), span.count());
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
      if (e.residency() == Residency::Device || e.residency() == Residency::Duplicated)
        s.device = e.device_page();
      s.locked = e.locked();
      s.pinned = e.has(MirrorEntry::kPinned);
      s.dirty = e.has(MirrorEntry::kDirty);
      s.writable = e.has(MirrorEntry::kWrite);
    }
  }
  return out;
}

MigrationResult set_pinned(Mm& mm, void* p, std::size_t bytes, bool pinned) {
  const char* call = pinned ? "pin" : "unpin";
  const RangeSpan span = mm.ranges.resolve(p, bytes, call);
  auto& table = span.range().table();
  if (pinned)
    mm.notifiers
        .invalidate(span.range(), span.first(), span.end(), InvalidateKind::protection_change, kNoOwner)
        .end();
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
    const std::uint64_t generation = mm.unlocks.generation();
    const MigrationResult r = migrate_to_host(mm, p, bytes);
    total.migrated += r.migrated;
    if (!r.status && total.status) total.status = r.status;
    std::size_t locked = 0, on_device = 0;
    for (const PageState& state : residency(mm, p, bytes)) {
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
    mm.unlocks.wait_after(generation);
  }
}

}  // namespace uhmm::detail
