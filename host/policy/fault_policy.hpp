// The CPU-fault policy knobs that may change while a context runs
// (Context::set_fault_ahead / set_prefetch_threshold): read by the fault
// service on every batch, so a change applies from the next fault on.
#pragma once

#include <atomic>

#include "uhmm/context.hpp"

namespace uhmm::detail {

struct FaultPolicy {
  explicit FaultPolicy(const ContextOptions& o)
      : fault_ahead(o.fault_ahead),
        prefetch_threshold(o.prefetch_threshold),
        thrashing_enabled(o.thrashing.enabled),
        thrashing_bounces(o.thrashing.bounces),
        thrashing_window_ms(o.thrashing.window_ms),
        thrashing_cooldown_ms(o.thrashing.cooldown_ms),
        thrashing_pin(o.thrashing.pin),
        thrashing_throttle_ms(o.thrashing.throttle_ms) {}
  std::atomic<bool> fault_ahead;
  std::atomic<unsigned> prefetch_threshold;  // percent, 0..100 (density_prefetch.hpp)
  // Read field by field: a batch that sees half of a change is still sound.
  std::atomic<bool> thrashing_enabled;
  std::atomic<unsigned> thrashing_bounces, thrashing_window_ms, thrashing_cooldown_ms;
  std::atomic<bool> thrashing_pin;
  std::atomic<unsigned> thrashing_throttle_ms;

  ThrashingOptions thrashing() const noexcept {
    return {thrashing_enabled.load(std::memory_order_relaxed), thrashing_bounces.load(std::memory_order_relaxed),
            thrashing_window_ms.load(std::memory_order_relaxed), thrashing_cooldown_ms.load(std::memory_order_relaxed),
            thrashing_pin.load(std::memory_order_relaxed), thrashing_throttle_ms.load(std::memory_order_relaxed)};
  }
  void set_thrashing(const ThrashingOptions& t) noexcept {
    thrashing_bounces.store(t.bounces);
    thrashing_window_ms.store(t.window_ms);
    thrashing_cooldown_ms.store(t.cooldown_ms);
    thrashing_pin.store(t.pin);
    thrashing_throttle_ms.store(t.throttle_ms);
    thrashing_enabled.store(t.enabled);
  }
};

}  // namespace uhmm::detail
