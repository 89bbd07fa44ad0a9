#include "mirror_table.hpp"

#include <fmt/format.h>

namespace uhmm::detail {

Status MirrorTable::validate() const {
  for (std::size_t i = 0; i < entries_.size(); ++i) {
    const MirrorEntry e = entries_[i];
    const bool on_device = e.residency() == Residency::Device || e.residency() == Residency::Duplicated;
    const bool has_owner = e.device_page().owner != kNoOwner;
    const bool unknown_bits = (e.bits() & 0x0000'0000'ffff'0080ull) != 0;  // bit 7, bits 16-31
    if (on_device != has_owner || unknown_bits || (!on_device && e.device_page().index != 0))
      return {Errc::system_error, fmt::format("mirror entry {} is corrupt: {:#x}", i, e.bits())};
  }
  return {};
}

}  // namespace uhmm::detail
