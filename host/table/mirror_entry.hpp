// One mirror page table entry: the CPU-side record of where one 4 KiB page of a
// managed range lives, packed in 64 bits.
//
//   bits 0-1   residency (Empty, System, Device, Duplicated)
//   bit  2     LOCKED   a migration, fault resolution or kernel holds the page
//   bit  3     PINNED   never selected for migration
//   bit  4     DIRTY    written on the device since it got there
//   bit  5     WRITE    writable where it lives
//   bit  6     POISONED could not be brought back; accesses get SIGBUS
//   bit  7     DISCARDED the application dropped this page while it was
//                        locked (its MADV_DONTNEED raced the holder); set on
//                        LOCKED pages only, the holder's unlock finishes it
//                        as a FREED host page (Empty where unmapped)
//   bits 8-15  owner of the device page
//   bit  16    FREED    the application discarded or freed this host page
//                       (MADV_DONTNEED or MADV_FREE: one REMOVE event for
//                       both); it may be gone, or go any time until written
//   bits 32-63 device page index
#pragma once

#include <cstdint>

#include "uhmm/types.hpp"

namespace uhmm::detail {

class MirrorEntry {
 public:
  static constexpr std::uint64_t kLocked = 1u << 2;
  static constexpr std::uint64_t kPinned = 1u << 3;
  static constexpr std::uint64_t kDirty = 1u << 4;
  static constexpr std::uint64_t kWrite = 1u << 5;
  static constexpr std::uint64_t kPoisoned = 1u << 6;
  static constexpr std::uint64_t kDiscarded = 1u << 7;
  static constexpr std::uint64_t kFreed = 1u << 16;

  constexpr MirrorEntry() = default;
  constexpr explicit MirrorEntry(std::uint64_t bits) : bits_(bits) {}

  static constexpr MirrorEntry system() { return MirrorEntry(static_cast<std::uint64_t>(Residency::System) | kWrite); }
  static constexpr MirrorEntry device(DevicePage page) {
    return MirrorEntry(static_cast<std::uint64_t>(Residency::Device) | kWrite |
                       (std::uint64_t{page.owner} << 8) | (std::uint64_t{page.index} << 32));
  }

  // Read-mostly: valid on the host and on `page`, read-only on both.
  static constexpr MirrorEntry duplicated(DevicePage page) {
    return MirrorEntry(static_cast<std::uint64_t>(Residency::Duplicated) | (std::uint64_t{page.owner} << 8) |
                       (std::uint64_t{page.index} << 32));
  }

  constexpr Residency residency() const { return static_cast<Residency>(bits_ & 3); }
  constexpr DevicePage device_page() const {
    return {static_cast<OwnerId>((bits_ >> 8) & 0xff), static_cast<DevicePageIndex>(bits_ >> 32)};
  }
  constexpr bool has(std::uint64_t flag) const { return (bits_ & flag) != 0; }
  constexpr bool locked() const { return has(kLocked); }
  constexpr void set(std::uint64_t flag) { bits_ |= flag; }
  constexpr void clear(std::uint64_t flag) { bits_ &= ~flag; }
  // A new home; keeps PINNED, LOCKED and DISCARDED (a discard that raced the
  // holder finishes the new home too, at the unlock); FREED named the old one.
  constexpr void move_to(MirrorEntry home) { bits_ = home.bits_ | (bits_ & (kPinned | kLocked | kDiscarded)); }
  constexpr std::uint64_t bits() const { return bits_; }

 private:
  std::uint64_t bits_ = 0;  // Empty, unlocked
};

static_assert(sizeof(MirrorEntry) == 8);

}  // namespace uhmm::detail
