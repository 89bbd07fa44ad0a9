// The mm core: the state every path shares (the range registry, the fault
// mechanism, the devices with their pagemaps and reverse maps, notifiers,
// unlock events, access recency, counters, the observer, the policy, the
// options, staging) and the few operations on that state alone. Migrations,
// eviction, the fault service, mapping events and launches are free functions
// over an `Mm&` (migrate/, fault/, api/); `ContextImpl` (api/) is the façade
// that owns one Mm and its fault service.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string_view>
#include <vector>

#include "uhmm/detail/device.hpp"
#include "uhmm/options.hpp"

#include "access_recency.hpp"
#include "atomic_counters.hpp"
#include "fault_mechanism.hpp"
#include "fault_policy.hpp"
#include "launch_stream_pool.hpp"
#include "lock_order.hpp"
#include "notifier_registry.hpp"
#include "observer.hpp"
#include "range_registry.hpp"
#include "reverse_map.hpp"
#include "staging_pool.hpp"
#include "unlock_events.hpp"

namespace uhmm::detail {

class Mm {
 public:
  explicit Mm(const ContextOptions& options);
  ~Mm();
  Mm(const Mm&) = delete;
  Mm& operator=(const Mm&) = delete;

  void* allocate(std::size_t bytes);
  void free(void* base);
  // Frees every range still allocated (teardown; failures are logged).
  void free_all() noexcept;

  // The device of `owner` (kNoOwner: the first); throws Errc::invalid_argument.
  Device& device(OwnerId owner, std::string_view call) const;
  // The device of a valid owner (1..device_count()), for paths that must not throw.
  Device& device_at(OwnerId owner) const noexcept { return *devices_[owner - 1]; }
  DevicePagemap* pagemap(OwnerId owner) const noexcept;
  ReverseMap& rmap(OwnerId owner) noexcept { return *rmaps_[owner - 1]; }
  StagingPool& staging() noexcept { return *staging_; }
  std::size_t device_count() const noexcept { return devices_.size(); }
  // Gives one device page back to its pool and forgets its reverse-map entry.
  // Pre: no mirror entry names it any more.
  void release_device_page(DevicePage page) noexcept;

  // A range the application unmapped entirely (mapping_events.cpp): dropped
  // from the registry at once, so its address can be reused; what it still
  // holds on a device is released once no operation uses it (reap_retired).
  void retire(const std::shared_ptr<ManagedRange>& range) noexcept;
  // Releases retired ranges no operation uses any more; with `wait`, all of
  // them. Returns how many device pages went back to their pools.
  std::size_t reap_retired(bool wait) noexcept;
  // Gives every device page a range still names back to its pool (returns how
  // many); the entries become Empty. Visits the touched blocks alone. Pre: no
  // operation uses the range (tests call it on a quiet one).
  std::size_t release_device_pages(ManagedRange& range) noexcept;

  // Validates the mirror tables and the pools (expensive; checked builds call
  // it after every operation through check_invariants()). With `quiescent`
  // (no operation in flight) it also checks what only holds at rest: no page
  // locked, no device page backing two pages.
  Status validate(bool quiescent) const;
  void check_invariants() const;

  const ContextOptions options;
  FaultPolicy policy{options};
  // How faults reach the fault service and pages reach the range (declared
  // before the ranges: it outlives them).
  const std::unique_ptr<FaultMechanism> mechanism;
  RangeRegistry ranges;
  AtomicCounters counters;
  NotifierRegistry notifiers{counters.notifier_invalidations};  // interval notifiers (interval_notifier.hpp)
  Observer observer{options.trace_path};
  UnlockEvents unlocks;
  std::unique_ptr<AccessRecency> recency;  // set once the devices are open
  // Some range was advised once (range_advice.cpp): eviction then ranks
  // chunks by their pages' advice, which costs a look at each page.
  std::atomic<bool> advised{false};
  LaunchStreamPools launch_streams;  // cleared before the devices close
  // device_pagemap()'s answers: each device with signals deferred per call.
  std::vector<std::unique_ptr<DevicePagemap>> public_pagemaps;

 private:
  std::vector<std::unique_ptr<Device>> devices_;
  std::vector<std::unique_ptr<ReverseMap>> rmaps_;
  std::unique_ptr<StagingPool> staging_;
  std::atomic<std::uint32_t> next_range_id_{0};
  Ranked<std::mutex, LockRank::retired> retired_mutex_;
  std::vector<std::shared_ptr<ManagedRange>> retired_;

  // Waits until no live part of a registered range overlaps [base, base + bytes)
  // (the application unmapped it and the event is on its way); throws if that
  // never happens.
  void wait_for_address_reuse(const std::byte* base, std::size_t bytes);
};

}  // namespace uhmm::detail
