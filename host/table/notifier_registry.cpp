#include "notifier_registry.hpp"

#include <algorithm>
#include <exception>

#include "deferred_signals.hpp"
#include "managed_range.hpp"
#include "uhmm/detail/log.hpp"

namespace uhmm::detail {
namespace {

thread_local unsigned callback_depth = 0;

bool overlaps(std::uintptr_t lo, std::uintptr_t hi, std::uintptr_t a, std::uintptr_t b) noexcept {
  return lo < b && a < hi;
}

}  // namespace

bool NotifierRegistry::in_callback() noexcept { return callback_depth != 0; }

void NotifierRegistry::add(std::shared_ptr<NotifierState> notifier) {
  std::lock_guard lock(mutex_);
  notifiers_.push_back(std::move(notifier));
}

void NotifierRegistry::remove(const NotifierState& notifier) noexcept {
  std::unique_lock lock(mutex_);
  std::erase_if(notifiers_, [&](const auto& n) { return n.get() == &notifier; });
  changed_.wait(lock, [&] { return notifier.running == 0; });
}

std::uint64_t NotifierRegistry::read_begin(const NotifierState& notifier) {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] {
    return std::none_of(active_.begin(), active_.end(),
                        [&](const auto& span) { return overlaps(notifier.lo, notifier.hi, span.first, span.second); });
  });
  return notifier.seq.load(std::memory_order_acquire);
}

NotifierRegistry::Invalidation NotifierRegistry::invalidate(std::uintptr_t lo, std::uintptr_t hi,
                                                            InvalidateKind kind, OwnerId owner) noexcept {
  if (lo >= hi) return {};
  struct Call {
    NotifierState* notifier;
    InvalidateEvent event;
  };
  std::vector<Call> calls;
  {
    std::lock_guard lock(mutex_);
    try {
      active_.emplace_back(lo, hi);
      for (const auto& n : notifiers_) {
        if (!overlaps(lo, hi, n->lo, n->hi)) continue;
        InvalidateEvent e;
        e.kind = kind;
        e.start = reinterpret_cast<void*>(std::max(lo, n->lo));
        e.end = reinterpret_cast<void*>(std::min(hi, n->hi));
        e.owner = owner;
        // The bump comes before the change (the caller makes it after this
        // returns): a snapshot that read the old state fails read_retry.
        e.seq = n->seq.fetch_add(1, std::memory_order_acq_rel) + 1;
        calls.push_back({n.get(), e});
        ++n->running;
      }
    } catch (const std::bad_alloc&) {
      // Without room to list the callbacks, bump every overlapping notifier:
      // their drivers then retry, which is the safe side of a missed call.
      for (const auto& n : notifiers_)
        if (overlaps(lo, hi, n->lo, n->hi)) n->seq.fetch_add(1, std::memory_order_acq_rel);
      log().error("interval notifiers: out of memory; an invalidation of [{:#x}, {:#x}) called no callback", lo, hi);
      for (auto& c : calls) --c.notifier->running;
      calls.clear();
      changed_.notify_all();
      // active_ may lack this span; the invalidation is then not waited for.
      const bool recorded = !active_.empty() && active_.back() == std::pair{lo, hi};
      return recorded ? Invalidation(this, lo, hi) : Invalidation{};
    }
  }
  ++callback_depth;
  for (const Call& c : calls) {
    try {
      DeferSignals::run_application_code([&] { c.notifier->callback(c.event); });
    } catch (const std::exception& e) {
      log().error("interval notifier callback threw: {}", e.what());
    } catch (...) {
      log().error("interval notifier callback threw a non-standard exception");
    }
  }
  --callback_depth;
  invalidations_.fetch_add(calls.size(), std::memory_order_relaxed);
  if (!calls.empty()) {
    std::lock_guard lock(mutex_);
    for (const Call& c : calls) --c.notifier->running;
  }
  changed_.notify_all();
  return Invalidation(this, lo, hi);
}

NotifierRegistry::Invalidation NotifierRegistry::invalidate(const ManagedRange& range, std::size_t first,
                                                            std::size_t end, InvalidateKind kind,
                                                            OwnerId owner) noexcept {
  return invalidate(reinterpret_cast<std::uintptr_t>(range.page_address(first)),
                    reinterpret_cast<std::uintptr_t>(range.page_address(end)), kind, owner);
}

void NotifierRegistry::Invalidation::end() noexcept {
  if (registry_ == nullptr) return;
  {
    std::lock_guard lock(registry_->mutex_);
    auto& active = registry_->active_;
    const auto it = std::find(active.begin(), active.end(), std::pair{lo_, hi_});
    if (it != active.end()) active.erase(it);
  }
  registry_->changed_.notify_all();
  registry_ = nullptr;
}

}  // namespace uhmm::detail
