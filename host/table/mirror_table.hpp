// The mirror page table of one managed range: one MirrorEntry per page, grouped
// in 2 MiB blocks. A block's mutex guards its entries and is held only for
// short, non-blocking work; a page stays locked for a whole migration through
// the entry's LOCKED bit instead (the kernel's page lock).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>

#include "block_mutex.hpp"
#include "lazy_array.hpp"
#include "lock_order.hpp"
#include "mirror_entry.hpp"
#include "uhmm/error.hpp"
#include "uhmm/types.hpp"

namespace uhmm::detail {

class MirrorTable {
 public:
  // Entries, block locks and the record of touched blocks live in lazily
  // mapped arrays, so a sparse range costs memory (and time, in a walk of its
  // blocks) only for the blocks used. Throws OutOfMemory.
  explicit MirrorTable(std::size_t npages);
  MirrorTable(const MirrorTable&) = delete;
  MirrorTable& operator=(const MirrorTable&) = delete;

  std::size_t npages() const noexcept { return npages_; }
  std::size_t nblocks() const noexcept { return blocks_for(npages()); }
  static std::size_t block_of(std::size_t page) noexcept { return page / kPagesPerBlock; }
  std::size_t block_begin(std::size_t block) const noexcept { return block * kPagesPerBlock; }
  std::size_t block_end(std::size_t block) const noexcept {
    return std::min(npages(), (block + 1) * kPagesPerBlock);
  }

  // Every access to entries goes through here, so the block is recorded as
  // touched: a block never locked has only Empty entries.
  RankedBlockMutex& block_mutex(std::size_t block) const noexcept {
    mark_touched(block);
    return locks_[block];
  }
  // Pre: the caller holds block_mutex(block_of(page)).
  MirrorEntry& entry(std::size_t page) noexcept { return entries_[page]; }
  const MirrorEntry& entry(std::size_t page) const noexcept { return entries_[page]; }
  // uhmm zapped this page it holds (a migration's or a collapse's own
  // MADV_DONTNEED): the DISCARDED mark its REMOVE event left is no discard by
  // the application. Takes the block mutex; call it once the event is applied.
  void forget_own_discard(std::size_t page) noexcept {
    std::lock_guard lock(block_mutex(block_of(page)));
    entries_[page].clear(MirrorEntry::kDiscarded);
  }

  // Calls fn(block) for each block ever locked, ascending; the cost is the
  // number of such blocks (plus one summary word per 8 GiB of range).
  template <class Fn>
  void for_each_touched_block(Fn&& fn) const {
    for (std::size_t i = 0; i < summary_.size(); ++i)
      for (std::uint64_t s = load(summary_[i]); s != 0; s &= s - 1) {
        const std::size_t word = i * 64 + static_cast<std::size_t>(__builtin_ctzll(s));
        for (std::uint64_t t = load(touched_[word]); t != 0; t &= t - 1)
          fn(word * 64 + static_cast<std::size_t>(__builtin_ctzll(t)));
      }
  }
  std::size_t touched_blocks() const noexcept;
  // Pages of the entries' mapping the kernel has mapped (tests: what a walk
  // of the table has touched).
  std::size_t resident_entry_pages() const;

  // Checks every entry's encoding, block by block under the block locks
  // (expensive; tests and checked builds).
  Status validate() const;

 private:
  static std::size_t blocks_for(std::size_t npages) noexcept {
    return (npages + kPagesPerBlock - 1) / kPagesPerBlock;
  }
  static std::uint64_t load(std::uint64_t& w) noexcept {
    return std::atomic_ref<std::uint64_t>(w).load(std::memory_order_relaxed);
  }
  void mark_touched(std::size_t block) const noexcept {
    const std::uint64_t bit = std::uint64_t{1} << (block % 64);
    if ((load(touched_[block / 64]) & bit) != 0) return;
    std::atomic_ref<std::uint64_t>(touched_[block / 64]).fetch_or(bit, std::memory_order_relaxed);
    std::atomic_ref<std::uint64_t>(summary_[block / 64 / 64])
        .fetch_or(std::uint64_t{1} << (block / 64 % 64), std::memory_order_relaxed);
  }

  std::size_t npages_;
  LazyArray<MirrorEntry> entries_;     // zero pages: every entry Empty
  LazyArray<RankedBlockMutex> locks_;        // zero: unlocked
  LazyArray<std::uint64_t> touched_;   // a bit per block: ever locked
  LazyArray<std::uint64_t> summary_;   // a bit per word of touched_: not zero
};

}  // namespace uhmm::detail
