#include "written_pages.hpp"

#include <algorithm>
#include <cstdint>
#include <mutex>

#include "mm.hpp"

namespace uhmm::detail {

namespace {

// For each block of the span with a page `asks` about: which pages hold host
// data (one system call, outside the block mutex), then `learn` on each page
// under it.
template <class Asks, class Learn>
void ask_host_data(Mm& ctx, ManagedRange& range, std::size_t first, std::size_t count, Asks asks,
                   Learn learn) noexcept {
  auto& table = range.table();
  std::uint8_t present[kPagesPerBlock];
  std::uint64_t before[kPagesPerBlock];  // each entry when the page tables were asked
  for (std::size_t block = table.block_of(first); block <= table.block_of(first + count - 1); ++block) {
    const std::size_t lo = std::max(first, table.block_begin(block));
    const std::size_t hi = std::min(first + count, table.block_end(block));
    bool any = false;
    {
      std::lock_guard lock(table.block_mutex(block));
      for (std::size_t p = lo; p < hi; ++p) {
        before[p - lo] = table.entry(p).bits();
        any = any || asks(table.entry(p));
      }
    }
    if (!any || ctx.mechanism->host_data(range, lo, hi - lo, present) != 0) continue;
    std::lock_guard lock(table.block_mutex(block));
    for (std::size_t p = lo; p < hi; ++p) {
      MirrorEntry& e = table.entry(p);
      // Locked pages are their holder's (a migration asks after holding them).
      // An entry that changed since is not learnt: the answer is older than
      // it (a holder's unlock may have made it a FREED host page after
      // mapping it, which the page tables did not have yet).
      if (!e.locked() && e.bits() == before[p - lo] && asks(e)) learn(e, present[p - lo] != 0);
    }
  }
}

}  // namespace

void learn_written_pages(Mm& ctx, ManagedRange& range, std::size_t first, std::size_t count) noexcept {
  FaultMechanism& mechanism = *ctx.mechanism;
  if (count == 0) return;
  if (mechanism.opens_empty_pages())
    ask_host_data(
        ctx, range, first, count,
        [](MirrorEntry e) { return e.residency() == Residency::Empty && !e.has(MirrorEntry::kPoisoned); },
        [](MirrorEntry& e, bool present) {
          if (present) e.move_to(MirrorEntry::system());
        });
  if (mechanism.follows_mapping_changes())
    // A page that is gone reads zeros when touched: Empty. Only the fault
    // service maps one again, and it clears FREED when it does (under the
    // block mutex, holding the page): no page found gone here is mapped since.
    ask_host_data(
        ctx, range, first, count,
        [](MirrorEntry e) { return e.residency() == Residency::System && e.has(MirrorEntry::kFreed); },
        [](MirrorEntry& e, bool present) {
          if (!present) e = MirrorEntry(e.bits() & MirrorEntry::kPinned);
        });
}

}  // namespace uhmm::detail
