// uhmm::IntervalNotifier: the public face of a NotifierState registered in its
// context's NotifierRegistry.
#include "uhmm/interval_notifier.hpp"

#include <fmt/format.h>

#include "context_core.hpp"
#include "migration.hpp"
#include "deferred_signals.hpp"

namespace uhmm {

const char* to_string(InvalidateKind kind) noexcept {
  switch (kind) {
    case InvalidateKind::migrate: return "migrate";
    case InvalidateKind::discard: return "discard";
    case InvalidateKind::unmap: return "unmap";
    case InvalidateKind::protection_change: return "protection_change";
    case InvalidateKind::eviction: return "eviction";
    case InvalidateKind::free: return "free";
  }
  return "unknown";
}

IntervalNotifier::IntervalNotifier(Context& ctx, void* start, std::size_t bytes, Callback invalidate) : ctx_(ctx) {
  detail::DeferSignals defer;
  if (!invalidate) throw Error(Errc::invalid_argument, "IntervalNotifier: the invalidate callback is empty");
  if (detail::NotifierRegistry::in_callback())
    throw Error(Errc::busy, "IntervalNotifier: cannot register from inside a notifier callback");
  // Validates (aligned, non-zero, inside one live range) before anything is registered.
  const detail::RangeSpan span = detail::core(ctx).ranges.resolve(start, bytes, "IntervalNotifier");
  auto state = std::make_shared<detail::NotifierState>();
  state->lo = reinterpret_cast<std::uintptr_t>(start);
  state->hi = state->lo + bytes;
  state->callback = std::move(invalidate);
  detail::core(ctx).notifiers.add(state);
  state_ = std::move(state);
}

IntervalNotifier::~IntervalNotifier() {
  detail::DeferSignals defer;
  detail::core(ctx_).notifiers.remove(*state_);
}

std::uint64_t IntervalNotifier::read_begin() const {
  detail::DeferSignals defer;
  if (detail::NotifierRegistry::in_callback())
    throw Error(Errc::busy, "IntervalNotifier::read_begin: not allowed inside a notifier callback (it would wait "
                            "for the invalidation that is running)");
  return detail::core(ctx_).notifiers.read_begin(*state_);
}

bool IntervalNotifier::read_retry(std::uint64_t seq) const noexcept {
  return state_->seq.load(std::memory_order_acquire) != seq;
}

std::uint64_t IntervalNotifier::seq() const noexcept { return state_->seq.load(std::memory_order_acquire); }
void* IntervalNotifier::start() const noexcept { return reinterpret_cast<void*>(state_->lo); }
std::size_t IntervalNotifier::bytes() const noexcept { return state_->hi - state_->lo; }

}  // namespace uhmm
