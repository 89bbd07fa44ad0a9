#include "written_pages.hpp"

#include <algorithm>
#include <cstdint>
#include <mutex>

#include "context_impl.hpp"

namespace uhmm::detail {

void learn_written_pages(ContextImpl& ctx, ManagedRange& range, std::size_t first, std::size_t count) noexcept {
  FaultMechanism& mechanism = *ctx.mechanism;
  if (!mechanism.opens_empty_pages() || count == 0) return;
  auto& table = range.table();
  std::uint8_t present[kPagesPerBlock];
  for (std::size_t block = table.block_of(first); block <= table.block_of(first + count - 1); ++block) {
    const std::size_t lo = std::max(first, table.block_begin(block));
    const std::size_t hi = std::min(first + count, table.block_end(block));
    bool any_empty = false;
    {
      std::lock_guard lock(table.block_mutex(block));
      for (std::size_t p = lo; p < hi && !any_empty; ++p) any_empty = table.entry(p).residency() == Residency::Empty;
    }
    // One mincore per block, outside the mutex (a system call).
    if (!any_empty || mechanism.host_data(range, lo, hi - lo, present) != 0) continue;
    std::lock_guard lock(table.block_mutex(block));
    for (std::size_t p = lo; p < hi; ++p) {
      MirrorEntry& e = table.entry(p);
      // Locked pages are their holder's (a migration asks after holding them).
      if (present[p - lo] && e.residency() == Residency::Empty && !e.locked() && !e.has(MirrorEntry::kPoisoned))
        e.move_to(MirrorEntry::system());
    }
  }
}

}  // namespace uhmm::detail
