#include "mirror_table.hpp"

#include <sys/mman.h>

#include <fmt/format.h>

namespace uhmm::detail {

MirrorTable::MirrorTable(std::size_t npages) : npages_(npages) {
  void* p = ::mmap(nullptr, npages * sizeof(MirrorEntry), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw OutOfMemory(fmt::format("no memory for the mirror table of {} pages", npages));
  entries_ = static_cast<MirrorEntry*>(p);  // zero pages: every entry Empty
  try {
    locks_ = std::make_unique<std::mutex[]>(blocks_for(npages));
  } catch (const std::bad_alloc&) {
    ::munmap(p, npages * sizeof(MirrorEntry));
    throw OutOfMemory(fmt::format("no memory for the block locks of {} pages", npages));
  }
}

MirrorTable::~MirrorTable() { ::munmap(entries_, npages_ * sizeof(MirrorEntry)); }

Status MirrorTable::validate() const {
  for (std::size_t block = 0; block < nblocks(); ++block) {
    std::lock_guard lock(block_mutex(block));
    for (std::size_t i = block_begin(block); i < block_end(block); ++i) {
      const MirrorEntry e = entries_[i];
      const bool on_device = e.residency() == Residency::Device || e.residency() == Residency::Duplicated;
      const bool has_owner = e.device_page().owner != kNoOwner;
      const bool unknown_bits = (e.bits() & 0x0000'0000'ffff'0000ull) != 0;  // bits 16-31
      const bool stray_discard = e.has(MirrorEntry::kDiscarded) && e.residency() != Residency::System;
      if (on_device != has_owner || unknown_bits || stray_discard || (!on_device && e.device_page().index != 0))
        return {Errc::system_error, fmt::format("mirror entry {} is corrupt: {:#x}", i, e.bits())};
    }
  }
  return {};
}

}  // namespace uhmm::detail
