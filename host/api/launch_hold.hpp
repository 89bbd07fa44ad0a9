// A launch's hold on its spans' pages (docs/DESIGN.md, "Device access"):
// every page of every span resident on the launch's device and LOCKED from
// the moment it is there until release(), so that nothing (fault-ahead,
// eviction, another migration) takes it before or while the kernel runs.
// Pages the device's kernels reach on the host (pinned: thrashing, or
// Context::pin) are held there, in place, and open (the signal mechanism may
// have closed them while idle: FaultMechanism::open_held).
//
// Holding is all-or-nothing: a try that cannot hold every page (another
// operation holds some, or the room for them) releases what it took and waits
// for an unlock before the next, so two launches never wait on each other's
// pages. Overlapping spans are held once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "migration.hpp"
#include "page_bounces.hpp"

namespace uhmm::detail {

class LaunchHold {
 public:
  // One span of the launch, resolved to whole pages.
  struct Span {
    RangeSpan pages;
    bool writable;  // the kernel may write it: read-mostly pages collapse to the device copy
  };
  struct Policy {
    bool pin_thrashing;  // cooling host pages stay on the host, in place
    ThrashingSettings thrashing;
  };

  // The spans outlive the hold (they keep their ranges open).
  LaunchHold(Mm& ctx, Device& dev, std::span<const Span> spans, Policy policy, const char* call);
  ~LaunchHold() { release(); }
  LaunchHold(const LaunchHold&) = delete;
  LaunchHold& operator=(const LaunchHold&) = delete;

  // Holds every page of every span. Throws, holding nothing: out_of_memory
  // when the spans need more device pages than the pool may hand out (before
  // anything moves) or when the migration ends short of room that nobody
  // holds; device_error when copies kept failing; device_fault for pages the
  // device can never reach (pinned to a host its kernels cannot reach, poisoned).
  void acquire();
  void release() noexcept;

  // Span k's device page table: where the kernel reaches each of its pages.
  void table(std::size_t k, std::uint64_t* entries) const;
  // Pages held on the host because they thrash.
  std::size_t pinned() const noexcept { return pinned_; }

 private:
  // The union of overlapping spans of one range: held once.
  struct Region {
    RangeSpan pages;
    bool writable = false;
    PageHold hold;                       // per page: held (LOCKED by this launch)
    std::vector<std::uint8_t> on_host;   // per page: held in place on the host
    std::vector<std::uint64_t> address;  // per page: the table entry (once held)
  };
  // Why a try fell short.
  struct Shortfall {
    bool complete = true;
    Status failure;      // of the migration (out_of_memory, device_error)
    Status unreachable;  // pages the device can never reach
    std::string missing;  // the first page not held, for the error message
  };

  void build_regions(std::span<const Span> spans);
  std::size_t count_in_place() const;
  void check_capacity() const;
  Shortfall try_hold();
  void take_from_other_devices(Region& r);
  void hold_in_place(Region& r, std::uint32_t now_ms);
  void zero_fill(Region& r, std::span<const std::size_t> pages) noexcept;
  void open_in_place(Region& r);
  void classify(const Region& r, Shortfall& out) const;
  bool others_hold_pages() const;
  void finish();
  bool stays_on_host(MirrorEntry e, const Region& r, std::size_t page, std::uint32_t now_ms) const;

  Mm& ctx_;
  Device& dev_;
  const Policy policy_;
  const bool host_access_;  // the device's kernels reach host memory in place
  const char* const call_;
  std::vector<Region> regions_;
  std::vector<std::pair<std::size_t, std::size_t>> where_;  // span k: its region, its first page there
  std::vector<std::size_t> span_pages_;                     // span k: its page count
  std::size_t pinned_ = 0;
};

}  // namespace uhmm::detail
