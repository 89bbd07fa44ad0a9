#include "lock_order.hpp"

#include <algorithm>
#include <cstdlib>

#include "uhmm/detail/log.hpp"

namespace uhmm::detail::lock_order {

#if defined(UHMM_EXPENSIVE_CHECKS)
std::atomic<bool> checking{true};
#else
std::atomic<bool> checking{false};
#endif

namespace {

// The ranks this thread holds, in the order taken. Deeper nesting than this
// is itself a bug worth hearing of; it is reported once and not tracked.
struct Held {
  static constexpr int kMax = 16;
  LockRank ranks[kMax];
  int count = 0;
  bool overflowed = false;
};
thread_local Held held;

std::atomic<ViolationHandler> handler{nullptr};

void violation(const char* held_name, const char* taken_name) noexcept {
  if (ViolationHandler h = handler.load()) {
    h(held_name, taken_name);
    return;
  }
  log().critical("lock order violated: {} taken while holding {} (host/base/lock_order.hpp)", taken_name, held_name);
  std::abort();
}

}  // namespace

const char* name_of(LockRank rank) noexcept {
  switch (rank) {
    case LockRank::range_registry: return "the range registry lock";
    case LockRank::retired: return "the retired-ranges lock";
    case LockRank::range_ops: return "a range's operation lock";
    case LockRank::protection: return "a range's protection lock (signal mode)";
    case LockRank::block: return "a block mutex";
    case LockRank::advice: return "a range's advice lock";
    case LockRank::unmapped: return "a range's unmapped-parts lock";
    case LockRank::notifiers: return "the notifier registry lock";
    case LockRank::bounces: return "a range's bounce-record lock";
    case LockRank::launch_stream_pools: return "the launch stream pools lock";
    case LockRank::launch_stream_pool: return "a device's launch stream pool lock";
    case LockRank::launch_results: return "a device launch's results lock";
    case LockRank::staging: return "the staging pool lock";
    case LockRank::unlock_events: return "the unlock events lock";
    case LockRank::trace_file: return "the trace file lock";
    case LockRank::trace_buffer: return "the trace buffer lock";
  }
  return "an unranked lock";
}

void check(LockRank rank) noexcept {
  for (int i = 0; i < held.count; ++i)
    if (held.ranks[i] >= rank) return violation(name_of(held.ranks[i]), name_of(rank));
}

void acquired(LockRank rank) noexcept {
  if (held.count == Held::kMax) {
    if (!held.overflowed) log().error("lock order: more than {} locks held at once", Held::kMax);
    held.overflowed = true;
    return;
  }
  held.ranks[held.count++] = rank;
}

void released(LockRank rank) noexcept {
  // The latest of that rank (locks need not be released in reverse order);
  // one taken before checking was turned on is not there.
  for (int i = held.count - 1; i >= 0; --i) {
    if (held.ranks[i] != rank) continue;
    std::copy(held.ranks + i + 1, held.ranks + held.count, held.ranks + i);
    --held.count;
    return;
  }
}

void set_violation_handler(ViolationHandler h) noexcept { handler.store(h); }

}  // namespace uhmm::detail::lock_order
