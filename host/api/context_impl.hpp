// What uhmm::Context owns: the mm core and the fault service thread that
// serves it. Every other path takes the core (Mm&, mm.hpp); code that has only
// a Context reaches it through core(Context&) (context_core.hpp).
#pragma once

#include <memory>

#include "mm.hpp"
#include "uhmm/context.hpp"

namespace uhmm::detail {

class FaultService;

class ContextImpl {
 public:
  explicit ContextImpl(const ContextOptions& options);
  // Frees the ranges still allocated and stops the fault service; the core
  // then closes the devices.
  ~ContextImpl();
  ContextImpl(const ContextImpl&) = delete;
  ContextImpl& operator=(const ContextImpl&) = delete;

  Mm core;

 private:
  std::unique_ptr<FaultService> faults_;  // after core: stops before it
};

// How the library reaches a Context's ContextImpl (Context befriends it).
struct ContextAccess {
  static ContextImpl& impl(const Context& ctx) noexcept { return *ctx.impl_; }
};

}  // namespace uhmm::detail
