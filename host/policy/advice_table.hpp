// The advice of one managed range, page-granular, kept as sorted disjoint runs
// of pages that carry some advice (pages outside every run have none): a range
// advised in a few large pieces costs a few entries. Thread safe: readers (the
// fault service, eviction) share a lock with each other, a change takes it
// alone; an atomic says whether any advice is set, so an unadvised range costs
// readers one load.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <shared_mutex>
#include <vector>

#include "lock_order.hpp"
#include "uhmm/advice.hpp"

namespace uhmm::detail {

class AdviceTable {
 public:
  struct Run {
    std::size_t first;
    std::size_t end;
    RangeAdvice advice;
  };

  // Applies `change` to the advice of every page of [first, end). Strong
  // guarantee: throws std::bad_alloc with nothing changed.
  void update(std::size_t first, std::size_t end, const std::function<void(RangeAdvice&)>& change);
  // The advice of one page.
  RangeAdvice get(std::size_t page) const;
  // The runs (clipped to [first, end)) with advice there; pages in no run have none.
  std::vector<Run> runs(std::size_t first, std::size_t end) const;
  bool empty() const noexcept { return empty_.load(std::memory_order_acquire); }

 private:
  mutable Ranked<std::shared_mutex, LockRank::advice> mutex_;
  std::vector<Run> runs_;  // sorted, disjoint, no two adjacent with equal advice, none without advice
  std::atomic<bool> empty_{true};
};

// One page's advice looked up in a few runs (from AdviceTable::runs), for a
// walk over a block in ascending page order.
class AdviceCursor {
 public:
  explicit AdviceCursor(std::vector<AdviceTable::Run> runs) : runs_(std::move(runs)) {}
  const RangeAdvice& at(std::size_t page) noexcept {
    static constexpr RangeAdvice kNone{};
    while (next_ < runs_.size() && runs_[next_].end <= page) ++next_;
    return next_ < runs_.size() && runs_[next_].first <= page ? runs_[next_].advice : kNone;
  }

 private:
  std::vector<AdviceTable::Run> runs_;
  std::size_t next_ = 0;
};

}  // namespace uhmm::detail
