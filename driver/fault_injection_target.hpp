// The optional hook through which a backend takes the copy-engine part of a
// FaultInjection. A backend that supports injection implements it next to
// Backend; DeviceImpl finds it with dynamic_cast, so a backend without it (a GPU
// backend) still works, only without injected copy failures.
#pragma once

#include "uhmm/backend.hpp"

namespace uhmm::detail {

class FaultInjectionTarget {
 public:
  virtual ~FaultInjectionTarget() = default;
  // Thread-safe; replaces the previous injection (alloc_pages_left is the
  // pool's business and is ignored by backends).
  virtual void set_fault_injection(const FaultInjection& injection) noexcept = 0;
};

}  // namespace uhmm::detail
