// Per-range advice (modelled on cudaMemAdvise / hipMemAdvise): hints an
// application gives about where pages of a managed range should live and who
// uses them, and the explicit controls that go with them (prefetch, discard)
// on uhmm::Context. docs/DESIGN.md, "Advice", says what each one does.
#pragma once

#include <cstdint>

#include "uhmm/types.hpp"

namespace uhmm {

enum class Advice : std::uint8_t {
  set_preferred_location,    // pages should live at the location: eviction and fault-ahead leave them there
  unset_preferred_location,  // (location ignored)
  set_read_mostly,           // a migration to a device keeps the host copy (Duplicated); a write collapses them
  unset_read_mostly,         // (location ignored)
  set_accessed_by,           // the device (never the host) uses the pages: its copies are kept there
  unset_accessed_by,         // the device no longer does
};

// Host RAM or one device of a context (by owner id).
struct Location {
  enum class Kind : std::uint8_t { none, host, device };
  Kind kind = Kind::none;
  OwnerId owner = kNoOwner;  // the device, when kind is device

  static constexpr Location host() noexcept { return {Kind::host, kNoOwner}; }
  static constexpr Location device(OwnerId owner) noexcept { return {Kind::device, owner}; }
  constexpr bool is_host() const noexcept { return kind == Kind::host; }
  constexpr bool is_device() const noexcept { return kind == Kind::device; }
  friend constexpr bool operator==(Location, Location) noexcept = default;
};

// The advice one page has: what Context::advice(p) reports.
struct RangeAdvice {
  Location preferred;                 // kind none: no preferred location
  bool read_mostly = false;
  std::uint64_t accessed_by = 0;      // bit (owner - 1) set: that device accesses the page
  bool accessed_by_device(OwnerId owner) const noexcept {
    return owner != kNoOwner && owner <= 64 && ((accessed_by >> (owner - 1)) & 1) != 0;
  }
  friend constexpr bool operator==(const RangeAdvice&, const RangeAdvice&) noexcept = default;
};

}  // namespace uhmm
