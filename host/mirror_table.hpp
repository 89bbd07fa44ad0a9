// The mirror page table of one managed range: one MirrorEntry per page, grouped
// in 2 MiB blocks. A block's mutex guards its entries and is held only for
// short, non-blocking work; a page stays locked for a whole migration through
// the entry's LOCKED bit instead (the kernel's page lock).
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>

#include "mirror_entry.hpp"
#include "uhmm/error.hpp"
#include "uhmm/types.hpp"

namespace uhmm::detail {

class MirrorTable {
 public:
  // Entries live in an anonymous mapping, so a sparse range costs memory only
  // for the parts of its table that were written. Throws OutOfMemory.
  explicit MirrorTable(std::size_t npages);
  ~MirrorTable();
  MirrorTable(const MirrorTable&) = delete;
  MirrorTable& operator=(const MirrorTable&) = delete;

  std::size_t npages() const noexcept { return npages_; }
  std::size_t nblocks() const noexcept { return blocks_for(npages()); }
  static std::size_t block_of(std::size_t page) noexcept { return page / kPagesPerBlock; }
  std::size_t block_begin(std::size_t block) const noexcept { return block * kPagesPerBlock; }
  std::size_t block_end(std::size_t block) const noexcept {
    return std::min(npages(), (block + 1) * kPagesPerBlock);
  }

  std::mutex& block_mutex(std::size_t block) const noexcept { return locks_[block]; }
  // Pre: the caller holds block_mutex(block_of(page)).
  MirrorEntry& entry(std::size_t page) noexcept { return entries_[page]; }
  const MirrorEntry& entry(std::size_t page) const noexcept { return entries_[page]; }

  // Checks every entry's encoding, block by block under the block locks
  // (expensive; tests and checked builds).
  Status validate() const;

 private:
  static std::size_t blocks_for(std::size_t npages) noexcept {
    return (npages + kPagesPerBlock - 1) / kPagesPerBlock;
  }

  std::size_t npages_;
  MirrorEntry* entries_;
  std::unique_ptr<std::mutex[]> locks_;
};

}  // namespace uhmm::detail
