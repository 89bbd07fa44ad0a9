// The managed ranges of a Context, by address. Resolving a user's
// [p, p + bytes) here is where bad input is caught: every public call goes
// through resolve() before it changes anything.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <shared_mutex>
#include <string_view>
#include <vector>

#include "event_gate.hpp"
#include "lock_order.hpp"
#include "managed_range.hpp"

namespace uhmm::detail {

// A validated page span of one range, holding the range open (an operation in
// flight) for as long as it lives.
class RangeSpan {
 public:
  RangeSpan() = default;
  RangeSpan(std::shared_ptr<ManagedRange> range, std::size_t first, std::size_t count) noexcept;
  RangeSpan(RangeSpan&& other) noexcept = default;
  RangeSpan& operator=(RangeSpan&& other) noexcept;
  ~RangeSpan();

  ManagedRange& range() const noexcept { return *range_; }
  std::size_t first() const noexcept { return first_; }
  std::size_t count() const noexcept { return count_; }
  std::size_t end() const noexcept { return first_ + count_; }
  explicit operator bool() const noexcept { return range_ != nullptr; }

 private:
  std::shared_ptr<ManagedRange> range_;
  std::size_t first_ = 0;
  std::size_t count_ = 0;
};

class RangeRegistry {
 public:
  void add(std::shared_ptr<ManagedRange> range);
  // Removes the range starting at base; throws Errc::unknown_range (and changes
  // nothing) if no live range starts there. The caller waits for it to go idle.
  std::shared_ptr<ManagedRange> remove(const void* base, std::string_view call);
  // Validates a user span (aligned, non-zero, inside one range); throws uhmm::Error.
  // Without wait_for_events it does not wait for the gate (a notifier callback,
  // which may run on the fault service while it applies an event).
  RangeSpan resolve(const void* p, std::size_t bytes, std::string_view call, bool wait_for_events = true) const;
  // The range containing addr, held open; empty if none (never throws).
  RangeSpan find(const void* addr) const noexcept;
  RangeSpan find_by_id(std::uint32_t id) const noexcept;
  std::size_t size_of(const void* base, std::string_view call) const;
  std::vector<std::shared_ptr<ManagedRange>> all() const;
  // Ranges whose address span meets [lo, hi) (never throws; empty on no memory).
  std::vector<std::shared_ptr<ManagedRange>> overlapping(std::uintptr_t lo, std::uintptr_t hi) const noexcept;
  // Drops a range the application unmapped entirely, so its address can be
  // reused; false if it was not registered (freed meanwhile).
  bool retire(const ManagedRange& range) noexcept;

  // Calls wait here (in resolve) for mapping events already read to be applied.
  EventGate& gate() noexcept { return gate_; }

 private:
  using ByBase = std::multimap<std::uintptr_t, std::shared_ptr<ManagedRange>>;
  std::shared_ptr<ManagedRange> containing(std::uintptr_t addr) const;
  // The range starting at base, end() if none. Two can: a range allocated
  // where another's first pages were unmapped; the one live there wins.
  ByBase::const_iterator starting_at(std::uintptr_t base) const;

  mutable Ranked<std::shared_mutex, LockRank::range_registry> mutex_;
  ByBase by_base_;
  std::map<std::uint32_t, std::shared_ptr<ManagedRange>> by_id_;
  std::size_t max_bytes_ = 0;  // the largest range ever added: bounds overlapping()'s walk
  EventGate gate_;
};

}  // namespace uhmm::detail
