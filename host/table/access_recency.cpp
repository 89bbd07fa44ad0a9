#include "access_recency.hpp"

#include <mutex>

namespace uhmm::detail {

AccessRecency::AccessRecency(const std::vector<std::size_t>& capacity_pages) {
  devices_.resize(capacity_pages.size());
  for (std::size_t d = 0; d < capacity_pages.size(); ++d) {
    devices_[d].nchunks = (capacity_pages[d] + kPagesPerChunk - 1) / kPagesPerChunk;
    devices_[d].stamps = std::make_unique<std::atomic<std::uint64_t>[]>(devices_[d].nchunks);
  }
}

void AccessRecency::touch(DevicePage page, std::uint64_t now) noexcept {
  if (page.owner == kNoOwner || page.owner > devices_.size()) return;
  Device& d = devices_[page.owner - 1];
  const std::size_t chunk = page.index / kPagesPerChunk;
  if (chunk >= d.nchunks) return;
  // Relaxed: a stamp is a hint for choosing victims, never a condition for safety.
  d.stamps[chunk].store(now, std::memory_order_relaxed);
}

void AccessRecency::touch_block(const MirrorTable& table, std::size_t block) noexcept {
  const std::uint64_t now = tick();
  std::lock_guard lock(table.block_mutex(block));
  for (std::size_t p = table.block_begin(block); p < table.block_end(block); ++p) {
    const MirrorEntry e = table.entry(p);
    if (e.residency() == Residency::Device || e.residency() == Residency::Duplicated) touch(e.device_page(), now);
  }
}

std::size_t AccessRecency::chunks(OwnerId owner) const noexcept {
  return owner == kNoOwner || owner > devices_.size() ? 0 : devices_[owner - 1].nchunks;
}

std::uint64_t AccessRecency::stamp(OwnerId owner, std::size_t chunk) const noexcept {
  if (chunk >= chunks(owner)) return 0;
  return devices_[owner - 1].stamps[chunk].load(std::memory_order_relaxed);
}

}  // namespace uhmm::detail
