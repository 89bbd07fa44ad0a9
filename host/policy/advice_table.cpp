#include "advice_table.hpp"

#include <algorithm>
#include <mutex>

namespace uhmm::detail {

void AdviceTable::update(std::size_t first, std::size_t end, const std::function<void(RangeAdvice&)>& change) {
  if (first >= end) return;
  std::unique_lock lock(mutex_);
  // Rebuilt aside and swapped in: an allocation failure changes nothing.
  std::vector<Run> out;
  out.reserve(runs_.size() + 3);
  auto push = [&](std::size_t f, std::size_t e, const RangeAdvice& a) {
    if (f >= e || a == RangeAdvice{}) return;
    if (!out.empty() && out.back().end == f && out.back().advice == a) {
      out.back().end = e;
      return;
    }
    out.push_back({f, e, a});
  };
  std::size_t at = first;  // next page of [first, end) not yet changed
  for (const Run& r : runs_) {
    if (r.end <= first || r.first >= end) {
      if (r.first >= end && at < end) {  // the gap before this run
        RangeAdvice a;
        change(a);
        push(at, end, a);
        at = end;
      }
      push(r.first, r.end, r.advice);
      continue;
    }
    push(r.first, std::max(r.first, first), r.advice);  // the part before first
    if (at < r.first) {                                  // the gap inside [first, end)
      RangeAdvice a;
      change(a);
      push(at, r.first, a);
    }
    RangeAdvice a = r.advice;
    change(a);
    const std::size_t lo = std::max(r.first, first);
    const std::size_t hi = std::min(r.end, end);
    push(lo, hi, a);
    at = hi;
    push(hi, r.end, r.advice);  // the part after end
  }
  if (at < end) {
    RangeAdvice a;
    change(a);
    push(at, end, a);
  }
  runs_.swap(out);
  empty_.store(runs_.empty(), std::memory_order_release);
}

RangeAdvice AdviceTable::get(std::size_t page) const {
  if (empty()) return {};
  std::shared_lock lock(mutex_);
  const auto it = std::upper_bound(runs_.begin(), runs_.end(), page,
                                   [](std::size_t p, const Run& r) { return p < r.end; });
  return it != runs_.end() && it->first <= page ? it->advice : RangeAdvice{};
}

std::vector<AdviceTable::Run> AdviceTable::runs(std::size_t first, std::size_t end) const {
  std::vector<Run> out;
  if (empty() || first >= end) return out;  // no run of an empty span, not even an empty one
  std::shared_lock lock(mutex_);
  auto it = std::upper_bound(runs_.begin(), runs_.end(), first,
                             [](std::size_t p, const Run& r) { return p < r.end; });
  for (; it != runs_.end() && it->first < end; ++it)
    out.push_back({std::max(it->first, first), std::min(it->end, end), it->advice});
  return out;
}

}  // namespace uhmm::detail
