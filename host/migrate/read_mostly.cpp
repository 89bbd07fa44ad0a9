#include "read_mostly.hpp"

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <vector>

#include "migration.hpp"
#include "uhmm/detail/log.hpp"

namespace uhmm::detail {
namespace {

// Calls fn(first, count) for each run of consecutive pages.
template <class F>
void for_each_page_run(std::span<const std::size_t> pages, F&& fn) {
  for (std::size_t i = 0; i < pages.size();) {
    std::size_t n = 1;
    while (i + n < pages.size() && pages[i + n] == pages[i] + n) ++n;
    fn(pages[i], n);
    i += n;
  }
}

}  // namespace

void collapse_to_host(Mm& ctx, ManagedRange& range, std::span<const std::size_t> pages, InvalidateKind kind,
                      OwnerId cause) noexcept {
  if (pages.empty()) return;
  // The device copies go: devices drop their view first (the pages are
  // locked, so a snapshot taken meanwhile sees them as not valid).
  ctx.notifiers.invalidate(range, pages.front(), pages.back() + 1, kind, cause).end();
  auto& table = range.table();
  for (std::size_t p : pages) {
    DevicePage page;
    {
      std::lock_guard lock(table.block_mutex(MirrorTable::block_of(p)));
      MirrorEntry& e = table.entry(p);
      page = e.device_page();
      e.move_to(MirrorEntry::system());
    }
    ctx.rmap(page.owner).clear(page.index);
    ctx.pagemap(page.owner)->page_free(std::span(&page.index, 1));
  }
  for_each_page_run(pages, [&](std::size_t first, std::size_t n) {
    if (const int err = ctx.mechanism->write_protect(range, first, n, false); err != 0)
      log().error("read-mostly: lifting the write-protection of {} pages at {} failed: {}", n,
                  static_cast<void*>(range.page_address(first)), std::strerror(err));
  });
  AtomicCounters::add(ctx.counters.duplicates_collapsed, pages.size());
}

std::vector<std::size_t> collapse_to_device(Mm& ctx, ManagedRange& range, std::span<const std::size_t> pages) {
  std::vector<std::size_t> stayed;
  if (pages.empty()) return stayed;
  // The one allocation, before any host copy goes: a page dropped while its
  // entry still says Duplicated would fault forever.
  stayed.reserve(pages.size());
  // The device copies become the only, writable ones: a protection change
  // for the devices that mirror the range.
  auto& table = range.table();
  OwnerId owner;
  {
    // Under the mutex although LOCKED: a REMOVE may mark the entry meanwhile.
    std::lock_guard lock(table.block_mutex(MirrorTable::block_of(pages.front())));
    owner = table.entry(pages.front()).device_page().owner;
  }
  ctx.notifiers.invalidate(range, pages.front(), pages.back() + 1, InvalidateKind::protection_change, owner).end();
  // The host copies go first, while the pages are locked: a CPU access waits
  // for the unlock, then faults the device copy back. A run whose host copies
  // cannot go keeps them instead (its device copies go).
  for_each_page_run(pages, [&](std::size_t first, std::size_t n) {
    const int err = ctx.mechanism->drop(range, first, n);
    if (err == 0) return;
    log().error("read-mostly: dropping {} host copies at {} failed ({}): they stay on the host", n,
                static_cast<void*>(range.page_address(first)), std::strerror(err));
    for (std::size_t p = first; p < first + n; ++p) stayed.push_back(p);
  });
  // The zap raised REMOVE events: applied while the pages are still locked.
  if (ctx.mechanism->follows_mapping_changes()) ctx.ranges.gate().wait_applied();
  for (std::size_t p : pages) {
    if (std::binary_search(stayed.begin(), stayed.end(), p)) continue;
    std::lock_guard lock(table.block_mutex(MirrorTable::block_of(p)));
    MirrorEntry& e = table.entry(p);
    e.clear(MirrorEntry::kDiscarded);  // left by the zap above
    e.move_to(MirrorEntry::device(e.device_page()));
  }
  AtomicCounters::add(ctx.counters.duplicates_collapsed, pages.size() - stayed.size());
  // A failed drop may have zapped part of its run: those pages read zeros
  // now, as after the application's own MADV_DONTNEED; collapsing keeps
  // the host copies the data has left.
  collapse_to_host(ctx, range, stayed);
  return stayed;
}

}  // namespace uhmm::detail
