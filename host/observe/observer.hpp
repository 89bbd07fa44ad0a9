// What a Context records about its own work beyond the counters: latency
// histograms (always on, a clock read and two atomic adds per sample) and,
// with UHMM_TRACE, a trace of every fault, migration and eviction. The mm
// code calls one function per event; off, tracing costs one predictable branch.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "latency_histogram.hpp"
#include "trace_recorder.hpp"
#include "uhmm/context.hpp"

namespace uhmm::detail {

enum class FaultKind { zero_fill, from_device, write_protect };

class Observer {
 public:
  // An empty trace_path: no trace. Throws uhmm::Error if the file cannot be opened.
  explicit Observer(const std::string& trace_path)
      : trace_(trace_path.empty() ? nullptr : std::make_unique<TraceRecorder>(trace_path)) {}

  Latencies latencies() const noexcept { return histograms_.snapshot(); }
  bool tracing() const noexcept { return trace_ != nullptr; }

  // The faults of `faults` that are of `kind` and were resolved by now:
  // those with the given write_protect flag whose page is in `pages` (sorted).
  // Their latency runs from when the service read them to now, when their
  // threads have been woken.
  template <class Fault, class PageOf>
  void faults_resolved(FaultKind kind, std::span<const Fault> faults, const std::vector<std::size_t>& pages,
                       bool write_protect, PageOf page_of) noexcept {
    if (pages.empty()) return;
    const std::uint64_t end = now_ns();
    for (const Fault& f : faults)
      if (f.write_protect == write_protect && std::binary_search(pages.begin(), pages.end(), page_of(f.address)))
        fault_resolved(kind, f.address, f.read_ns, end);
  }

  void fault_resolved(FaultKind kind, std::uintptr_t address, std::uint64_t read_ns, std::uint64_t end_ns) noexcept {
    const std::uint64_t ns = end_ns > read_ns ? end_ns - read_ns : 0;
    static constexpr const char* kNames[] = {"fault zero-fill", "fault from device", "fault write-protect"};
    switch (kind) {
      case FaultKind::zero_fill: histograms_.fault_zero_fill.record(ns); break;
      case FaultKind::from_device: histograms_.fault_from_device.record(ns); break;
      case FaultKind::write_protect: histograms_.fault_write_protect.record(ns); break;
    }
    if (trace_) [[unlikely]]
      trace_->record({.name = kNames[static_cast<int>(kind)], .category = "fault", .start_ns = read_ns,
                      .duration_ns = ns, .args = {{{"address", address, true}}}});
  }

  // One migrate_to_device call that started at start_ns and just ended.
  void migrated_to_device(std::uint64_t start_ns, OwnerId device, const MigrationResult& r) noexcept {
    const std::uint64_t ns = now_ns() - start_ns;
    histograms_.migrate_to_device.record(ns);
    if (trace_) [[unlikely]]
      trace_->record({.name = "migrate to device", .category = "migration", .start_ns = start_ns, .duration_ns = ns,
                      .result = r.failed == 0 ? "ok" : r.migrated == 0 ? "failed" : "partial",
                      .args = {{{"pages", r.pages}, {"migrated", r.migrated}, {"bytes", r.migrated * kPageSize},
                                {"device", device}}}});
  }

  // One block's pages brought back to host RAM (bring_back).
  void migrated_to_host(std::uint64_t start_ns, std::uintptr_t address, std::size_t pages, std::size_t moved) noexcept {
    const std::uint64_t ns = now_ns() - start_ns;
    histograms_.migrate_to_host.record(ns);
    if (trace_) [[unlikely]]
      trace_->record({.name = "migrate to host", .category = "migration", .start_ns = start_ns, .duration_ns = ns,
                      .result = moved == pages ? "ok" : moved == 0 ? "failed" : "partial",
                      .args = {{{"address", address, true}, {"pages", pages}, {"migrated", moved},
                                {"bytes", moved * kPageSize}}}});
  }

  // Pages a device's memory gave back (migrate_device_range, and the eviction
  // policy when it lands): the trace's eviction events.
  void evicted(std::uint64_t start_ns, OwnerId device, std::size_t first, std::size_t npages,
               std::size_t moved) noexcept {
    if (trace_) [[unlikely]]
      trace_->record({.name = "evict", .category = "eviction", .start_ns = start_ns,
                      .duration_ns = now_ns() - start_ns,
                      .args = {{{"device", device}, {"first_device_page", first}, {"pages", npages},
                                {"migrated", moved}}}});
  }

 private:
  AtomicLatencies histograms_;
  std::unique_ptr<TraceRecorder> trace_;
};

}  // namespace uhmm::detail
