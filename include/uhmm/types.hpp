// The vocabulary of uhmm, written down once. Every other file uses these words.
//
//   OS page      4 KiB of virtual memory in a managed range (the unit of residency).
//   block        2 MiB, 512 OS pages, aligned: the unit of locking, fault-ahead,
//                eviction and compound migration in the mirror page table.
//   managed range  an anonymous mapping the application allocated through a Context;
//                its pages live on the host or on a device.
//   device page  a 4 KiB slot of device memory; `DevicePage` names one by owner and index.
//   chunk        2 MiB of device memory (512 device pages), the pool's unit of allocation.
//   owner        the device that owns a device page (the kernel's pgmap_owner).
//   residency    where a page's authoritative copy is (Residency below).
#pragma once

#include <cstddef>
#include <cstdint>

#include "uhmm/export.hpp"

namespace uhmm {

inline constexpr std::size_t kPageShift = 12;
inline constexpr std::size_t kPageSize = std::size_t{1} << kPageShift;
inline constexpr std::size_t kBlockShift = 21;
inline constexpr std::size_t kBlockSize = std::size_t{1} << kBlockShift;
inline constexpr std::size_t kPagesPerBlock = kBlockSize / kPageSize;
inline constexpr std::size_t kChunkSize = kBlockSize;
inline constexpr std::size_t kPagesPerChunk = kChunkSize / kPageSize;

// Identifies a device (the kernel's pgmap_owner). Owner 0 is never a device.
using OwnerId = std::uint8_t;
inline constexpr OwnerId kNoOwner = 0;

// Index of a device page within its owner's pool: chunk * kPagesPerChunk + slot.
using DevicePageIndex = std::uint32_t;

struct DevicePage {
  OwnerId owner = kNoOwner;
  DevicePageIndex index = 0;
  friend bool operator==(const DevicePage&, const DevicePage&) = default;
};

// An address in a device's memory, opaque to host code (a pointer on the cpu backend).
using DeviceAddress = std::uint64_t;

// Where a page's authoritative copy lives.
enum class Residency : std::uint8_t {
  Empty = 0,       // never populated: reads as zeros, no memory anywhere
  System = 1,      // host RAM, mapped in the managed range
  Device = 2,      // a device page; the host mapping is absent
  Duplicated = 3,  // valid and read-only on host and device (read-mostly advice)
};

UHMM_EXPORT const char* to_string(Residency r) noexcept;

}  // namespace uhmm
