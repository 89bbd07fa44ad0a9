#include "mirror_table.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace uhmm::detail {

namespace {

std::string no_memory(std::size_t npages) { return fmt::format("mapping the mirror table of {} pages", npages); }

}  // namespace

MirrorTable::MirrorTable(std::size_t npages)
    : npages_(npages),
      entries_(npages, no_memory(npages).c_str()),
      locks_(blocks_for(npages), no_memory(npages).c_str()),
      touched_((blocks_for(npages) + 63) / 64, no_memory(npages).c_str()),
      summary_((blocks_for(npages) + 64 * 64 - 1) / (64 * 64), no_memory(npages).c_str()) {}

std::size_t MirrorTable::touched_blocks() const noexcept {
  std::size_t n = 0;
  for_each_touched_block([&](std::size_t) { ++n; });
  return n;
}

std::size_t MirrorTable::resident_entry_pages() const {
  const std::size_t pages = (entries_.bytes() + kPageSize - 1) / kPageSize;
  std::vector<unsigned char> resident(pages);
  if (pages == 0 || ::mincore(entries_.data(), entries_.bytes(), resident.data()) != 0) return 0;
  return static_cast<std::size_t>(std::count_if(resident.begin(), resident.end(), [](unsigned char c) { return c & 1; }));
}

Status MirrorTable::validate() const {
  Status out;
  for_each_touched_block([&](std::size_t block) {
    std::lock_guard lock(block_mutex(block));
    for (std::size_t i = block_begin(block); i < block_end(block) && out; ++i) {
      const MirrorEntry e = entries_[i];
      const bool on_device = e.residency() == Residency::Device || e.residency() == Residency::Duplicated;
      const bool has_owner = e.device_page().owner != kNoOwner;
      const bool unknown_bits = (e.bits() & 0x0000'0000'fffe'0000ull) != 0;  // bits 17-31
      // DISCARDED: the holder's unlock finishes it; FREED names a host page.
      const bool stray_discard = (e.has(MirrorEntry::kDiscarded) && !e.locked()) ||
                                 (e.has(MirrorEntry::kFreed) && e.residency() != Residency::System);
      if (on_device != has_owner || unknown_bits || stray_discard || (!on_device && e.device_page().index != 0))
        out = {Errc::system_error, fmt::format("mirror entry {} is corrupt: {:#x}", i, e.bits())};
    }
  });
  return out;
}

}  // namespace uhmm::detail
