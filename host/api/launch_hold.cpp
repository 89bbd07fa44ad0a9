#include "launch_hold.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>

#include <fmt/format.h>

#include "eviction.hpp"
#include "locked_pages.hpp"
#include "page_runs.hpp"
#include "read_mostly.hpp"
#include "uhmm/detail/log.hpp"

namespace uhmm::detail {
namespace {

// Tries that fall short although nobody holds what is missing (copies that
// failed, room other threads took first) before the launch gives up.
// Both bounds where nothing failed: a page another operation held during the
// try but released before the check looks fruitless, and on a busy machine
// such holders take a while (a count alone gave up after 16 ms).
constexpr int kFruitlessTries = 8;
constexpr std::chrono::milliseconds kFruitlessTime{500};
constexpr std::chrono::milliseconds kFruitlessWait{2};
// A holder that goes without announcing an unlock (a range freed under it)
// costs a waiting launch this much, not a hang.
constexpr std::chrono::milliseconds kUnlockWaitLimit{100};

// Calls fn(block, lo, hi) for each block's part of [first, end).
template <class F>
void for_each_block(const MirrorTable& table, std::size_t first, std::size_t end, F&& fn) {
  for (std::size_t block = MirrorTable::block_of(first); block <= MirrorTable::block_of(end - 1); ++block)
    fn(block, std::max(first, table.block_begin(block)), std::min(end, table.block_end(block)));
}

}  // namespace

LaunchHold::LaunchHold(Mm& ctx, Device& dev, std::span<const Span> spans, Policy policy, const char* call)
    : ctx_(ctx), dev_(dev), policy_(policy),
      host_access_((dev.info().capabilities & kCapHostMemoryAccess) != 0), call_(call) {
  build_regions(spans);
}

void LaunchHold::build_regions(std::span<const Span> spans) {
  // Spans of one range by first page; overlapping ones share a region.
  std::vector<std::size_t> order(spans.size());
  for (std::size_t k = 0; k < order.size(); ++k) order[k] = k;
  const auto key = [&](std::size_t k) { return std::pair(spans[k].pages.range().id(), spans[k].pages.first()); };
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return key(a) < key(b); });
  struct Extent {
    const Span* first_span;
    std::size_t end;
    bool writable;
  };
  std::vector<Extent> extents;
  std::vector<std::size_t> region_of(spans.size());
  for (std::size_t k : order) {
    const RangeSpan& s = spans[k].pages;
    const bool joins = !extents.empty() && extents.back().first_span->pages.range().id() == s.range().id() &&
                       s.first() < extents.back().end;
    if (joins) {
      extents.back().end = std::max(extents.back().end, s.end());
      extents.back().writable = extents.back().writable || spans[k].writable;
    } else {
      extents.push_back({&spans[k], s.end(), spans[k].writable});
    }
    region_of[k] = extents.size() - 1;
  }
  for (const Extent& x : extents) {
    const RangeSpan& s = x.first_span->pages;
    Region r;
    r.pages = ctx_.ranges.resolve(s.range().page_address(s.first()), (x.end - s.first()) * kPageSize, call_);
    r.writable = x.writable;
    r.hold.held.assign(r.pages.count(), 0);
    r.on_host.assign(r.pages.count(), 0);
    r.address.assign(r.pages.count(), 0);
    regions_.push_back(std::move(r));
  }
  for (std::size_t k = 0; k < spans.size(); ++k) {
    where_.emplace_back(region_of[k], spans[k].pages.first() - regions_[region_of[k]].pages.first());
    span_pages_.push_back(spans[k].pages.count());
  }
}

bool LaunchHold::stays_on_host(MirrorEntry e, const Region& r, std::size_t page, std::uint32_t now_ms) const {
  if (e.has(MirrorEntry::kPoisoned)) return false;
  const bool usable = e.residency() == Residency::System && (e.has(MirrorEntry::kWrite) || !r.writable);
  // Context::pin: the kernel reaches the page in place (a never-touched one
  // gets its zeros on the host first).
  if (e.has(MirrorEntry::kPinned)) return host_access_ && (usable || e.residency() == Residency::Empty);
  return usable && policy_.pin_thrashing && r.pages.range().bounces().cooling(page, now_ms, policy_.thrashing);
}

std::size_t LaunchHold::count_in_place() const {
  const std::uint32_t now_ms = monotonic_ms();
  std::size_t n = 0;
  for (const Region& r : regions_) {
    auto& table = r.pages.range().table();
    for_each_block(table, r.pages.first(), r.pages.end(), [&](std::size_t block, std::size_t lo, std::size_t hi) {
      std::lock_guard lock(table.block_mutex(block));
      for (std::size_t q = lo; q < hi; ++q) n += stays_on_host(table.entry(q), r, q, now_ms);
    });
  }
  return n;
}

void LaunchHold::check_capacity() const {
  std::size_t need = 0;
  for (const Region& r : regions_) need += r.pages.count();
  const std::size_t limit = dev_.page_limit();
  if (need <= limit) return;
  need -= count_in_place();  // only where pages stay on the host (rare): a walk
  if (need <= limit) return;
  throw OutOfMemory(fmt::format("{}: the spans need {} device pages ({} bytes) at once and device {}'s pool holds {} "
                                "(device_pool_bytes, set_device_pool_limit); nothing was moved or run",
                                call_, need, need * kPageSize, dev_.owner(), limit));
}

void LaunchHold::take_from_other_devices(Region& r) {
  // Read-mostly pages duplicated on another device: their host copy is valid,
  // so they go back to it (the other device's copy is freed), and the
  // migration below duplicates them on this device.
  auto& range = r.pages.range();
  auto& table = range.table();
  for_each_block(table, r.pages.first(), r.pages.end(), [&](std::size_t block, std::size_t lo, std::size_t hi) {
    LockedPages taken(ctx_, range);
    taken.reserve(hi - lo);
    {
      std::lock_guard lock(table.block_mutex(block));
      for (std::size_t q = lo; q < hi; ++q) {
        MirrorEntry& e = table.entry(q);
        if (e.residency() != Residency::Duplicated || e.device_page().owner == dev_.owner() || e.locked()) continue;
        taken.take(e, q);
      }
    }
    collapse_to_host(ctx_, range, taken.pages(), InvalidateKind::migrate, dev_.owner());
  });
}

void LaunchHold::hold_in_place(Region& r, std::uint32_t now_ms) {
  auto& table = r.pages.range().table();
  for_each_block(table, r.pages.first(), r.pages.end(), [&](std::size_t block, std::size_t lo, std::size_t hi) {
    LockedPages empty(ctx_, r.pages.range());  // locked here, held once they have their zeros
    empty.reserve(hi - lo);
    {
      std::lock_guard lock(table.block_mutex(block));
      for (std::size_t q = lo; q < hi; ++q) {
        const std::size_t i = q - r.pages.first();
        MirrorEntry& e = table.entry(q);
        if (r.hold.held[i] || e.locked() || !stays_on_host(e, r, q, now_ms)) continue;
        if (e.residency() == Residency::Empty) {
          empty.take(e, q);
          continue;
        }
        e.set(MirrorEntry::kLocked);  // held: released by release()
        r.hold.held[i] = 1;
        r.on_host[i] = 1;
      }
    }
    zero_fill(r, empty.pages());
    // Those that got their zeros are held now (release() unlocks them); the
    // others are left for the next try.
    empty.hand_over_if([&](std::size_t q) { return r.hold.held[q - r.pages.first()] != 0; });
    empty.unlock();
  });
  open_in_place(r);
}

void LaunchHold::open_in_place(Region& r) {
  // The kernel reaches these pages through the application's view, where the
  // signal mechanism may have closed one while it was idle (near its mapping
  // budget): the kernel's fault would wait for this launch's own lock. A run
  // that cannot be opened is left for the next try.
  auto& range = r.pages.range();
  std::vector<std::size_t> failed;
  for_each_run(0, r.on_host.size(), [&](std::size_t i) { return r.on_host[i] != 0; }, [&](std::size_t i, std::size_t n) {
    const int err = ctx_.mechanism->open_held(range, r.pages.first() + i, n);
    if (err == 0) return;
    log().warn("{}: opening {} pages held on the host at {} failed: {}", call_, n,
               static_cast<void*>(range.page_address(r.pages.first() + i)), std::strerror(err));
    failed.reserve(r.on_host.size());  // first: a throw leaves the pages held, for release()
    for (std::size_t k = i; k < i + n; ++k) {
      r.hold.held[k] = r.on_host[k] = 0;
      failed.push_back(r.pages.first() + k);
    }
  });
  unlock_pages(ctx_, range, failed);
}

void LaunchHold::zero_fill(Region& r, std::span<const std::size_t> pages) noexcept {
  auto& range = r.pages.range();
  auto& table = range.table();
  for (std::size_t q : pages) {
    // Page by page: pinned never-touched pages are few. EEXIST: mapped already.
    // One that fails is left for the next try.
    if (const int err = ctx_.mechanism->install_zeros(range, q, 1); err != 0 && err != EEXIST) continue;
    std::lock_guard lock(table.block_mutex(MirrorTable::block_of(q)));
    table.entry(q).move_to(MirrorEntry::system());
    r.hold.held[q - r.pages.first()] = 1;
    r.on_host[q - r.pages.first()] = 1;
  }
}

void LaunchHold::classify(const Region& r, Shortfall& out) const {
  auto& table = r.pages.range().table();
  for_each_block(table, r.pages.first(), r.pages.end(), [&](std::size_t block, std::size_t lo, std::size_t hi) {
    std::lock_guard lock(table.block_mutex(block));
    for (std::size_t q = lo; q < hi; ++q) {
      if (r.hold.held[q - r.pages.first()]) continue;
      const MirrorEntry e = table.entry(q);
      const void* at = r.pages.range().page_address(q);
      if (out.complete)
        out.missing = fmt::format("the page at {} is {}{}{}", at, to_string(e.residency()),
                                  e.locked() ? ", locked" : "", e.has(MirrorEntry::kPinned) ? ", pinned" : "");
      out.complete = false;
      if (e.locked() || !out.unreachable) continue;
      if (e.has(MirrorEntry::kPoisoned))
        out.unreachable = {Errc::device_fault, fmt::format("{}: the page at {} is poisoned (its data could not be "
                                                           "brought back from its device); nothing was run",
                                                           call_, at)};
      else if (e.has(MirrorEntry::kPinned) && !host_access_)
        out.unreachable = {Errc::device_fault, fmt::format("{}: the page at {} is pinned to the host (Context::pin) "
                                                           "and device {}'s kernels reach only its own memory; "
                                                           "nothing was run",
                                                           call_, at, dev_.owner())};
    }
  });
}

LaunchHold::Shortfall LaunchHold::try_hold() {
  Shortfall out;
  for (Region& r : regions_) {
    if (ctx_.device_count() > 1) take_from_other_devices(r);
    auto& range = r.pages.range();
    const std::uint32_t now_ms = monotonic_ms();
    const PageFilter cooling = [&range, now_ms, this](std::size_t q) {
      return range.bounces().cooling(q, now_ms, policy_.thrashing);
    };
    const MigrationResult m = migrate_to_device(ctx_, range.page_address(r.pages.first()), r.pages.count() * kPageSize,
                                                     dev_.owner(), policy_.pin_thrashing ? &cooling : nullptr, &r.hold);
    if (!m.status && out.failure) out.failure = m.status;
    hold_in_place(r, now_ms);
    classify(r, out);
  }
  return out;
}

bool LaunchHold::others_hold_pages() const {
  for (const Region& r : regions_) {
    auto& table = r.pages.range().table();
    bool locked = false;
    for_each_block(table, r.pages.first(), r.pages.end(), [&](std::size_t block, std::size_t lo, std::size_t hi) {
      std::lock_guard lock(table.block_mutex(block));
      for (std::size_t q = lo; q < hi && !locked; ++q) locked = table.entry(q).locked();
    });
    if (locked) return true;
  }
  return false;
}

void LaunchHold::acquire() {
  check_capacity();
  std::chrono::steady_clock::time_point first_fruitless;
  for (int fruitless = 0;;) {
    const Shortfall s = try_hold();
    if (s.complete) {
      finish();
      return;
    }
    release();
    if (!s.unreachable) throw Error(s.unreachable.code, s.unreachable.message);
    const bool no_room = s.failure.code == Errc::out_of_memory;
    if (no_room && !ctx_.options.evict)
      throw OutOfMemory(fmt::format("{}: device {}'s pool has no room for the spans and eviction is off "
                                    "(UHMM_EVICT=0): {}; nothing was run", call_, dev_.owner(), s.failure.message));
    // Whoever holds pages of the spans, or room in the pool, unlocks them:
    // this launch waits for that (reading the generation before it looks).
    const std::uint64_t generation = ctx_.unlocks.generation();
    if (others_hold_pages() || (no_room && dev_.pages_in_use() > evictable_pages(ctx_, dev_.owner()))) {
      ctx_.unlocks.wait_after_for(generation, kUnlockWaitLimit);
      continue;
    }
    const auto now = std::chrono::steady_clock::now();
    if (fruitless++ == 0) first_fruitless = now;
    // Without a failure, what is missing was taken by others meanwhile: worth
    // more patience than a failing copy or allocation.
    if (fruitless < kFruitlessTries || (s.failure && now - first_fruitless < kFruitlessTime)) {
      ctx_.unlocks.wait_after_for(generation, kFruitlessWait);  // others move on meanwhile
      continue;
    }
    if (no_room)
      throw OutOfMemory(fmt::format("{}: device {}'s pool has no room for the spans: {}; nothing was run", call_,
                                    dev_.owner(), s.failure.message));
    throw Error(Errc::device_error,
                fmt::format("{}: the spans could not be migrated to device {}: {}; nothing was run", call_,
                            dev_.owner(), s.failure ? s.missing : s.failure.message));
  }
}

void LaunchHold::finish() {
  const std::uint64_t now = ctx_.recency->tick();  // a kernel's spans are its working set: recently used
  for (Region& r : regions_) {
    auto& range = r.pages.range();
    auto& table = range.table();
    std::vector<std::size_t> collapse;  // read-mostly pages this kernel may write
    for_each_block(table, r.pages.first(), r.pages.end(), [&](std::size_t block, std::size_t lo, std::size_t hi) {
      std::lock_guard lock(table.block_mutex(block));
      for (std::size_t q = lo; q < hi; ++q) {
        const std::size_t i = q - r.pages.first();
        MirrorEntry& e = table.entry(q);
        if (r.on_host[i]) {
          r.address[i] = reinterpret_cast<std::uintptr_t>(range.page_address(q));
          pinned_ += !e.has(MirrorEntry::kPinned);
          continue;
        }
        const bool dup = e.residency() == Residency::Duplicated;
        if (!dup || r.writable) e.set(MirrorEntry::kDirty);
        if (dup && r.writable) collapse.push_back(q);
        ctx_.recency->touch(e.device_page(), now);
        r.address[i] = dev_.address_of(e.device_page().index);
      }
    });
    // A page whose host copy could not go (mlock) stays on the host: the
    // kernel faults on it (device_fault) rather than write a copy the CPU never reads.
    for (std::size_t q : collapse_to_device(ctx_, range, collapse)) r.address[q - r.pages.first()] = 0;
  }
}

void LaunchHold::release() noexcept {
  for (Region& r : regions_) {
    std::vector<std::size_t> held;
    try {
      for (std::size_t i = 0; i < r.hold.held.size(); ++i)
        if (r.hold.held[i]) held.push_back(r.pages.first() + i);
    } catch (const std::bad_alloc&) {
      // Page by page: never leave a page locked for want of a list.
      for (std::size_t i = 0; i < r.hold.held.size(); ++i) {
        const std::size_t q = r.pages.first() + i;
        if (r.hold.held[i]) unlock_pages(ctx_, r.pages.range(), std::span(&q, 1));
      }
      held.clear();
    }
    unlock_pages(ctx_, r.pages.range(), held);
    std::fill(r.hold.held.begin(), r.hold.held.end(), 0);
    std::fill(r.on_host.begin(), r.on_host.end(), 0);
  }
}

void LaunchHold::table(std::size_t k, std::uint64_t* entries) const {
  const Region& r = regions_[where_[k].first];
  std::copy_n(r.address.begin() + static_cast<std::ptrdiff_t>(where_[k].second), span_pages_[k], entries);
}

}  // namespace uhmm::detail
