// uhmm::Context: the public face of ContextImpl.
#include "uhmm/context.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <string>

#include "context_impl.hpp"
#include "deferred_signals.hpp"
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
  if (impl_->options.print_stats) std::fputs(detail::stats_report(counters(), latency()).c_str(), stderr);
}

void* Context::allocate(std::size_t bytes) {
  detail::DeferSignals defer;
  return impl_->allocate(bytes);
}
void Context::free(void* base) {
  detail::DeferSignals defer;
  impl_->free(base);
}
std::size_t Context::range_size(const void* base) const {
  detail::DeferSignals defer;
  return impl_->ranges.size_of(base, "range_size");
}

std::size_t Context::device_count() const noexcept { return impl_->device_count(); }
const char* Context::fault_mode() const noexcept { return impl_->mechanism->name(); }

OwnerId Context::device_owner(std::size_t i) const {
  if (i >= impl_->device_count())
    throw Error(Errc::invalid_argument, "device_owner: no device " + std::to_string(i) + " (this context has " +
                                            std::to_string(impl_->device_count()) + ")");
  return static_cast<OwnerId>(i + 1);
}

DeviceInfo Context::device_info(OwnerId owner) const { return impl_->device(owner, "device_info").info(); }
Backend& Context::backend(OwnerId owner) { return impl_->device(owner, "backend").backend(); }
std::size_t Context::set_device_pool_limit(OwnerId owner, std::size_t bytes) {
  detail::DeferSignals defer;
  return detail::out_of_memory_as_error("set_device_pool_limit",
                                        [&] { return impl_->set_device_pool_limit(owner, bytes); });
}
void Context::set_fault_ahead(bool on) noexcept { impl_->policy.fault_ahead.store(on); }
bool Context::fault_ahead() const noexcept { return impl_->policy.fault_ahead.load(); }
void Context::set_prefetch_threshold(unsigned percent) {
  if (percent > 100)
    throw Error(Errc::invalid_argument,
                fmt::format("set_prefetch_threshold: {} is not a percent from 0 to 100", percent));
  impl_->policy.prefetch_threshold.store(percent);
}
unsigned Context::prefetch_threshold() const noexcept { return impl_->policy.prefetch_threshold.load(); }
void Context::set_thrashing(const ThrashingOptions& t) {
  auto out_of = [](const char* what, unsigned v, unsigned lo, unsigned hi) {
    return Error(Errc::invalid_argument, fmt::format("set_thrashing: {} {} is not within {}-{}", what, v, lo, hi));
  };
  if (t.bounces < 2 || t.bounces > 65535) throw out_of("bounces", t.bounces, 2, 65535);
  if (t.window_ms < 1 || t.window_ms > 60000) throw out_of("window_ms", t.window_ms, 1, 60000);
  if (t.cooldown_ms < 1 || t.cooldown_ms > 600000) throw out_of("cooldown_ms", t.cooldown_ms, 1, 600000);
  if (t.throttle_ms > 1000) throw out_of("throttle_ms", t.throttle_ms, 0, 1000);
  impl_->policy.set_thrashing(t);
}
ThrashingOptions Context::thrashing() const noexcept { return impl_->policy.thrashing(); }
void Context::inject_faults(OwnerId owner, const FaultInjection& injection) {
  detail::DeferSignals defer;
  impl_->device(owner, "inject_faults").set_fault_injection(injection);
}

MigrationResult Context::migrate_to_device(void* p, std::size_t bytes, OwnerId device) {
  detail::DeferSignals defer;
  return detail::out_of_memory_as_error("migrate_to_device", [&] { return impl_->migrate_to_device(p, bytes, device); });
}
MigrationResult Context::migrate_to_host(void* p, std::size_t bytes) {
  detail::DeferSignals defer;
  return detail::out_of_memory_as_error("migrate_to_host", [&] { return impl_->migrate_to_host(p, bytes); });
}

Status Context::validate() const {
  detail::DeferSignals defer;
  impl_->ranges.gate().wait_applied();
  return impl_->validate(/*quiescent=*/true);
}

MigrationResult Context::pin(void* p, std::size_t bytes) {
  detail::DeferSignals defer;
  return detail::out_of_memory_as_error("pin", [&] { return impl_->set_pinned(p, bytes, true); });
}
void Context::unpin(void* p, std::size_t bytes) {
  detail::DeferSignals defer;
  detail::out_of_memory_as_error("unpin", [&] { impl_->set_pinned(p, bytes, false); });
}

std::vector<PageState> Context::residency(const void* p, std::size_t bytes) const {
  detail::DeferSignals defer;
  return impl_->residency(p, bytes);
}

Latencies Context::latency() const {
  detail::DeferSignals defer;
  return impl_->observer.latencies();
}

Counters Context::counters() const {
  detail::DeferSignals defer;
  impl_->ranges.gate().wait_applied();  // counts what the caller's own munmap/madvise did
  Counters c = impl_->counters.snapshot();
  c.device_pages_in_use = 0;
  for (std::size_t i = 0; i < impl_->device_count(); ++i)
    c.device_pages_in_use += impl_->device(static_cast<OwnerId>(i + 1), "counters").pages_in_use();
  return c;
}

}  // namespace uhmm
