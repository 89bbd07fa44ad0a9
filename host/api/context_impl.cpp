#include "context_impl.hpp"

#include "uhmm/context.hpp"
#include "uhmm/detail/log.hpp"

#include "context_core.hpp"
#include "fault_service.hpp"

namespace uhmm::detail {

ContextImpl::ContextImpl(const ContextOptions& options)
    : core(options), faults_(std::make_unique<FaultService>(core)) {
  log().info(
      "context ready: {} device(s) on the {} backend, fault-ahead {} (prefetch threshold {}%), {} faults",
      core.device_count(), core.device(kNoOwner, "context").info().backend,
      core.options.fault_ahead ? "on" : "off", core.options.prefetch_threshold, core.mechanism->name());
}

ContextImpl::~ContextImpl() {
  // Ranges first (their device pages go back to the pools), then the fault
  // service; the core closes the devices.
  core.free_all();
  faults_.reset();
}

Mm& core(Context& ctx) noexcept { return ContextAccess::impl(ctx).core; }
const Mm& core(const Context& ctx) noexcept { return ContextAccess::impl(ctx).core; }

}  // namespace uhmm::detail
