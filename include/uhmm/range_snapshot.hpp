// Range snapshots: the kernel's hmm_range_fault over uhmm's mirror page table.
// One call fills one 64-bit word per page of [start, end) of a managed range
// with where the page is and what the requesting device may do with it;
// request bits make it populate never-touched pages, bring device pages back
// to the host, or (SNAPSHOT_REQ_MIGRATE, the 2026 seed's HMM_PFN_REQ_MIGRATE)
// collect, populate and lock the range for migration to the requester in the
// same single walk, so that the caller goes straight to alloc_and_copy,
// migrate_vma_pages and migrate_vma_finalize.
//
// A snapshot is only as fresh as its interval notifier says: take it between
// read_begin() and read_retry() (interval_notifier.hpp has the loop).
#pragma once

#include <cstddef>
#include <cstdint>

#include "uhmm/error.hpp"
#include "uhmm/export.hpp"
#include "uhmm/migrate.hpp"
#include "uhmm/types.hpp"

namespace uhmm {

class Context;

// Output words: flags in the low byte, a device page (owner, index) above it
// where a flag names one (the same layout as migrate_pfn_device).
inline constexpr std::uint64_t SNAPSHOT_PFN_VALID = 1u << 0;  // usable by the requester: a host page, or its own device page
inline constexpr std::uint64_t SNAPSHOT_PFN_WRITE = 1u << 1;  // and writable
inline constexpr std::uint64_t SNAPSHOT_PFN_ERROR = 1u << 2;  // the page is lost (poisoned) or could not be populated
inline constexpr std::uint64_t SNAPSHOT_PFN_DEVICE_PRIVATE = 1u << 3;  // a device page of the requesting owner
inline constexpr std::uint64_t SNAPSHOT_PFN_OTHER_DEVICE = 1u << 4;    // another owner's device page (not VALID)
inline constexpr std::uint64_t SNAPSHOT_PFN_MIGRATE = 1u << 5;  // collected and locked by SNAPSHOT_REQ_MIGRATE
inline constexpr unsigned SNAPSHOT_PFN_OWNER_SHIFT = MIGRATE_PFN_OWNER_SHIFT;
inline constexpr unsigned SNAPSHOT_PFN_INDEX_SHIFT = MIGRATE_PFN_INDEX_SHIFT;

constexpr DevicePage snapshot_pfn_to_device_page(std::uint64_t word) noexcept {
  return {static_cast<OwnerId>((word >> SNAPSHOT_PFN_OWNER_SHIFT) & 0xff),
          static_cast<DevicePageIndex>(word >> SNAPSHOT_PFN_INDEX_SHIFT)};
}

// Request bits (HMM_PFN_REQ_*): what each page must become before it is
// reported. A page's request is (pfns[i] & pfn_flags_mask) | default_flags.
// Never-touched pages become zero-filled host pages (HMM_PFN_REQ_FAULT);
// pages locked by a migration or kernel are waited for instead of reported
// as not valid. Device pages stay where they are.
inline constexpr std::uint64_t SNAPSHOT_REQ_POPULATE = std::uint64_t{1} << 61;
// POPULATE, and pages on any device are brought back to the host.
inline constexpr std::uint64_t SNAPSHOT_REQ_HOST = std::uint64_t{1} << 62;
// default_flags only: the walk also collects and locks the range for
// migration to `owner` as migrate_vma_setup(FAULT) does (never-touched pages
// are selected, to be zero-filled on the device), into *migrate.
inline constexpr std::uint64_t SNAPSHOT_REQ_MIGRATE = std::uint64_t{1} << 63;

struct SnapshotRange {
  void* start = nullptr;  // page aligned, inside one managed range
  void* end = nullptr;    // page aligned, > start, in the same range
  // Caller-owned, (end - start) / kPageSize words: in, per-page request bits
  // (masked by pfn_flags_mask); out, the page's state (SNAPSHOT_PFN_*).
  std::uint64_t* pfns = nullptr;
  std::uint64_t default_flags = 0;   // request bits for every page
  std::uint64_t pfn_flags_mask = 0;  // request bits taken from pfns[i] (POPULATE, HOST)
  // The requesting device (the kernel's dev_private_owner): its device pages
  // are VALID and DEVICE_PRIVATE; every other device's page is OTHER_DEVICE.
  // kNoOwner: no device's pages are the requester's.
  OwnerId owner = kNoOwner;
  // With SNAPSHOT_REQ_MIGRATE: src/dst arrays and selection flags from the
  // caller; start, end, destination and MIGRATE_VMA_FAULT are set here. On
  // success it is set up exactly as by migrate_vma_setup; finish it with
  // device_pagemap(ctx, owner).alloc_and_copy, migrate_vma_pages and
  // migrate_vma_finalize.
  MigrateVma* migrate = nullptr;
  // Out: never-touched pages this call populated on the host.
  std::size_t populated = 0;

  std::size_t npages() const noexcept {
    return static_cast<std::size_t>(static_cast<const std::byte*>(end) - static_cast<const std::byte*>(start)) /
           kPageSize;
  }
};

// Never throws. Bad input (null pfns, unaligned, empty, outside or across
// ranges, unknown owner, unknown request bits, REQ_MIGRATE in the mask or
// without an owner or MigrateVma) returns its Errc with a message, and nothing
// changed. Request bits inside a notifier callback are Errc::busy (they may
// wait for pages the caller holds). Pages that could not be populated or
// brought back get SNAPSHOT_PFN_ERROR and the status says why; the rest are
// reported.
UHMM_EXPORT Status snapshot_range(Context& ctx, SnapshotRange& range) noexcept;

// A device's pagemap, for a driver to interpret device pages (address_of) and
// to run the copy of a migration it set up. Throws Errc::invalid_argument for
// an owner that is not a device of ctx.
UHMM_EXPORT DevicePagemap& device_pagemap(Context& ctx, OwnerId owner);

}  // namespace uhmm
