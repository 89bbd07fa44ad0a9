// uhmm::Context: the public face of ContextImpl (the mm core and its fault service).
#include "uhmm/context.hpp"
#include "uhmm/hooks.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <string>

#include "context_core.hpp"
#include "context_impl.hpp"
#include "deferred_signals.hpp"
#include "migration.hpp"
#include "out_of_memory.hpp"
#include "stats_report.hpp"

namespace uhmm {

Context::Context() : Context(ContextOptions::from_environment()) {}
Context::Context(const ContextOptions& options) : impl_([&] {
  detail::DeferSignals defer;
  return std::make_unique<detail::ContextImpl>(options);
}()) {}
Context::~Context() {
  detail::DeferSignals defer;
  if (impl_->core.options.print_stats) std::fputs(detail::stats_report(counters(), latency()).c_str(), stderr);
}

void* Context::allocate(std::size_t bytes) {
  detail::DeferSignals defer;
  return impl_->core.allocate(bytes);
}
void Context::free(void* base) {
  detail::DeferSignals defer;
  impl_->core.free(base);
}
std::size_t Context::range_size(const void* base) const {
  detail::DeferSignals defer;
  return impl_->core.ranges.size_of(base, "range_size");
}

std::size_t Context::device_count() const noexcept { return impl_->core.device_count(); }
const char* Context::fault_mode() const noexcept { return impl_->core.mechanism->name(); }

OwnerId Context::device_owner(std::size_t i) const {
  if (i >= impl_->core.device_count())
    throw Error(Errc::invalid_argument, "device_owner: no device " + std::to_string(i) + " (this context has " +
                                            std::to_string(impl_->core.device_count()) + ")");
  return static_cast<OwnerId>(i + 1);
}

DeviceInfo Context::device_info(OwnerId owner) const { return impl_->core.device(owner, "device_info").info(); }
std::size_t Context::set_device_pool_limit(OwnerId owner, std::size_t bytes) {
  detail::DeferSignals defer;
  return detail::out_of_memory_as_error("set_device_pool_limit",
                                        [&] { return detail::set_device_pool_limit(impl_->core, owner, bytes); });
}
void Context::set_fault_ahead(bool on) noexcept { impl_->core.policy.fault_ahead.store(on); }
bool Context::fault_ahead() const noexcept { return impl_->core.policy.fault_ahead.load(); }
void Context::set_prefetch_threshold(unsigned percent) {
  if (percent > 100)
    throw Error(Errc::invalid_argument,
                fmt::format("set_prefetch_threshold: {} is not a percent from 0 to 100", percent));
  impl_->core.policy.prefetch_threshold.store(percent);
}
unsigned Context::prefetch_threshold() const noexcept { return impl_->core.policy.prefetch_threshold.load(); }
void Context::set_thrashing(const ThrashingOptions& t) {
  auto out_of = [](const char* what, unsigned v, unsigned lo, unsigned hi) {
    return Error(Errc::invalid_argument, fmt::format("set_thrashing: {} {} is not within {}-{}", what, v, lo, hi));
  };
  if (t.bounces < 2 || t.bounces > 65535) throw out_of("bounces", t.bounces, 2, 65535);
  if (t.window_ms < 1 || t.window_ms > 60000) throw out_of("window_ms", t.window_ms, 1, 60000);
  if (t.cooldown_ms < 1 || t.cooldown_ms > 600000) throw out_of("cooldown_ms", t.cooldown_ms, 1, 600000);
  if (t.throttle_ms > 1000) throw out_of("throttle_ms", t.throttle_ms, 0, 1000);
  impl_->core.policy.set_thrashing(t);
}
ThrashingOptions Context::thrashing() const noexcept { return impl_->core.policy.thrashing(); }

MigrationResult Context::migrate_to_device(void* p, std::size_t bytes, OwnerId device) {
  detail::DeferSignals defer;
  return detail::out_of_memory_as_error("migrate_to_device",
                                        [&] { return detail::migrate_to_device(impl_->core, p, bytes, device); });
}
MigrationResult Context::migrate_to_host(void* p, std::size_t bytes) {
  detail::DeferSignals defer;
  return detail::out_of_memory_as_error("migrate_to_host",
                                        [&] { return detail::migrate_to_host(impl_->core, p, bytes); });
}

Status Context::validate() const {
  detail::DeferSignals defer;
  impl_->core.ranges.gate().wait_applied();
  return impl_->core.validate(/*quiescent=*/true);
}

MigrationResult Context::pin(void* p, std::size_t bytes) {
  detail::DeferSignals defer;
  return detail::out_of_memory_as_error("pin", [&] { return detail::set_pinned(impl_->core, p, bytes, true); });
}
void Context::unpin(void* p, std::size_t bytes) {
  detail::DeferSignals defer;
  detail::out_of_memory_as_error("unpin", [&] { detail::set_pinned(impl_->core, p, bytes, false); });
}

std::vector<PageState> Context::residency(const void* p, std::size_t bytes) const {
  detail::DeferSignals defer;
  return detail::residency(impl_->core, p, bytes);
}

Latencies Context::latency() const {
  detail::DeferSignals defer;
  return impl_->core.observer.latencies();
}

Counters Context::counters() const {
  detail::DeferSignals defer;
  impl_->core.ranges.gate().wait_applied();  // counts what the caller's own munmap/madvise did
  Counters c = impl_->core.counters.snapshot();
  c.device_pages_in_use = 0;
  for (std::size_t i = 0; i < impl_->core.device_count(); ++i)
    c.device_pages_in_use += impl_->core.device(static_cast<OwnerId>(i + 1), "counters").pages_in_use();
  return c;
}

}  // namespace uhmm

namespace uhmm::hooks {

Backend& backend(Context& ctx, OwnerId owner) { return detail::core(ctx).device(owner, "backend").backend(); }
void inject_faults(Context& ctx, OwnerId owner, const FaultInjection& injection) {
  detail::DeferSignals defer;
  detail::core(ctx).device(owner, "inject_faults").set_fault_injection(injection);
}

}  // namespace uhmm::hooks
