// The CPU-fault policy knobs that may change while a context runs
// (Context::set_fault_ahead / set_prefetch_threshold): read by the fault
// service on every batch, so a change applies from the next fault on.
#pragma once

#include <atomic>

#include "uhmm/context.hpp"

namespace uhmm::detail {

struct FaultPolicy {
  explicit FaultPolicy(const ContextOptions& o) : fault_ahead(o.fault_ahead), prefetch_threshold(o.prefetch_threshold) {}
  std::atomic<bool> fault_ahead;
  std::atomic<unsigned> prefetch_threshold;  // percent, 0..100 (density_prefetch.hpp)
};

}  // namespace uhmm::detail
