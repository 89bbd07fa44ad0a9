// The driver-facing migration API, with the Linux kernel's names and semantics
// (mm/migrate_device.c): migrate_vma_setup / _pages / _finalize over per-page
// src[]/dst[] words, and migrate_device_range to evict device pages.
//
// A migration to a device runs in phases so that one page can fail while the
// rest move:
//   setup     walks the mirror page table once, selects pages (flags below),
//             locks them and write-protects their host copies;
//   (driver)  allocates device pages and copies or zero-fills them, filling dst[];
//   pages     records the new homes of pages whose dst[] is VALID;
//   finalize  drops the host copies of migrated pages, restores the others,
//             unlocks everything and re-runs CPU faults parked on these pages.
//
// Migration back to host RAM is not a migrate_vma direction here: it is the CPU
// fault service (migrate_to_ram), Context::migrate_to_host and
// migrate_device_range, which all copy through staging into the managed mapping.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "uhmm/backend.hpp"
#include "uhmm/export.hpp"
#include "uhmm/types.hpp"

namespace uhmm {

class Context;
namespace detail {
struct MigrationSession;
}

// Per-page words of src[] and dst[]: flags in the low byte, the device page
// (owner, index) above it for device pages.
inline constexpr std::uint64_t MIGRATE_PFN_VALID = 1u << 0;     // the word names a page
inline constexpr std::uint64_t MIGRATE_PFN_MIGRATE = 1u << 1;   // selected / migrated
inline constexpr std::uint64_t MIGRATE_PFN_WRITE = 1u << 3;     // the page is writable
inline constexpr std::uint64_t MIGRATE_PFN_COMPOUND = 1u << 4;  // first page of a 2 MiB run
inline constexpr std::uint64_t MIGRATE_PFN_DEVICE = 1u << 5;    // the word names a device page
inline constexpr unsigned MIGRATE_PFN_OWNER_SHIFT = 8;
inline constexpr unsigned MIGRATE_PFN_INDEX_SHIFT = 16;

constexpr std::uint64_t migrate_pfn_device(DevicePage p) noexcept {
  return MIGRATE_PFN_VALID | MIGRATE_PFN_DEVICE |
         (std::uint64_t{p.owner} << MIGRATE_PFN_OWNER_SHIFT) |
         (std::uint64_t{p.index} << MIGRATE_PFN_INDEX_SHIFT);
}
constexpr DevicePage migrate_pfn_to_device_page(std::uint64_t word) noexcept {
  return {static_cast<OwnerId>((word >> MIGRATE_PFN_OWNER_SHIFT) & 0xff),
          static_cast<DevicePageIndex>(word >> MIGRATE_PFN_INDEX_SHIFT)};
}

// Selection flags of MigrateVma::flags.
inline constexpr std::uint64_t MIGRATE_VMA_SELECT_SYSTEM = 1u << 0;          // host pages
inline constexpr std::uint64_t MIGRATE_VMA_SELECT_DEVICE_PRIVATE = 1u << 1;  // pages of pgmap_owner
inline constexpr std::uint64_t MIGRATE_VMA_SELECT_COMPOUND = 1u << 3;        // whole 2 MiB runs
// One walk: never-populated pages are selected too and become zero-filled device
// pages (src without VALID: no copy), as MIGRATE_VMA_FAULT does in the kernel.
inline constexpr std::uint64_t MIGRATE_VMA_FAULT = 1u << 4;

struct MigrateVma {
  void* start = nullptr;  // page aligned, inside one managed range
  void* end = nullptr;    // page aligned, > start, in the same range
  // Caller-owned arrays of (end - start) / kPageSize words each.
  std::uint64_t* src = nullptr;
  std::uint64_t* dst = nullptr;
  std::uint64_t flags = 0;
  // With SELECT_DEVICE_PRIVATE: only device pages of this owner are selected.
  OwnerId pgmap_owner = kNoOwner;
  // Out: pages selected by setup.
  std::size_t cpages = 0;
  std::size_t npages() const noexcept {
    return static_cast<std::size_t>(static_cast<const std::byte*>(end) - static_cast<const std::byte*>(start)) /
           kPageSize;
  }
  // Set by setup, released by finalize: the migration in flight.
  std::shared_ptr<detail::MigrationSession> session;
  // The device the pages go to, named as the owner of the interval
  // notifiers' migrate event (kNoOwner: not said; every driver invalidates).
  OwnerId destination = kNoOwner;
};

// Throws uhmm::Error on bad input, in which case nothing changed. Pages that
// are locked by another migration or pinned are not selected (src[i] has no
// MIGRATE), as in the kernel.
UHMM_EXPORT void migrate_vma_setup(Context& ctx, MigrateVma& args);
// Pages whose src has MIGRATE and dst has VALID get their new home; for the
// others, MIGRATE is cleared from src[i]. Returns the number migrated.
UHMM_EXPORT std::size_t migrate_vma_pages(Context& ctx, MigrateVma& args);
// Ends the migration begun by setup (always call it, even after a failure).
UHMM_EXPORT void migrate_vma_finalize(Context& ctx, MigrateVma& args);

// Evicts every live device page of owner in [first, first + npages) back to
// host RAM, waiting for pages locked by migrations in flight. Returns the number
// of pages moved. Pages whose copy fails stay on the device and are counted as
// failures (the call then throws, after moving everything it could).
UHMM_EXPORT std::size_t migrate_device_range(Context& ctx, OwnerId owner, DevicePageIndex first,
                                             std::size_t npages);

// What host/ needs from a device to move its pages: the kernel's
// dev_pagemap_ops plus the driver's alloc-and-copy. driver/ implements it; host/
// calls nothing else of a device. No call throws.
class DevicePagemap {
 public:
  virtual ~DevicePagemap() = default;
  virtual OwnerId owner() const noexcept = 0;
  virtual std::size_t capacity_pages() const noexcept = 0;
  // Allocates a device page for every src[i] with MIGRATE and copies the host
  // page into it (src VALID) or zero-fills it (no VALID, or a device source is
  // copied device to device); sets dst[i] = migrate_pfn_device(page) for pages
  // done, leaves dst[i] = 0 for the rest. Returns the first failure:
  // Errc::out_of_memory when the pool ran out, Errc::device_error when a copy
  // failed; ok when every selected page got its dst.
  virtual Status alloc_and_copy(MigrateVma& args) noexcept = 0;
  // Copies device pages into host memory, one 4 KiB page to each dst pointer,
  // in order. Pages [0, pages_done) are done when it returns.
  virtual BatchResult copy_to_ram(std::span<const DevicePageIndex> pages,
                                  std::span<std::byte* const> dst) noexcept = 0;
  // dev_pagemap_ops.page_free: the pages no longer back anything.
  virtual void page_free(std::span<const DevicePageIndex> pages) noexcept = 0;
  virtual DeviceAddress address_of(DevicePageIndex page) const noexcept = 0;
  virtual std::size_t pages_in_use() const noexcept = 0;
};

}  // namespace uhmm
