// A set of page numbers kept as sorted, disjoint, non-adjacent [first, end)
// intervals: the parts of a managed range the application unmapped.
#pragma once

#include <algorithm>
#include <cstddef>
#include <utility>
#include <vector>

namespace uhmm::detail {

class PageIntervals {
 public:
  // Adds [first, end). May throw std::bad_alloc (then nothing changed).
  void add(std::size_t first, std::size_t end) {
    if (first >= end) return;
    std::vector<std::pair<std::size_t, std::size_t>> out;
    out.reserve(runs_.size() + 1);
    bool placed = false;
    for (const auto& r : runs_) {
      if (r.second < first) {
        out.push_back(r);
      } else if (end < r.first) {
        if (!placed) out.emplace_back(first, end), placed = true;
        out.push_back(r);
      } else {  // overlapping or adjacent: merge
        first = std::min(first, r.first);
        end = std::max(end, r.second);
      }
    }
    if (!placed) out.emplace_back(first, end);
    std::sort(out.begin(), out.end());
    runs_ = std::move(out);
  }
  // Whether any page of [first, end) is in the set.
  bool intersects(std::size_t first, std::size_t end) const noexcept {
    if (first >= end) return false;  // an empty span has no page in the set
    for (const auto& r : runs_)
      if (r.first < end && first < r.second) return true;
    return false;
  }
  // Whether every page of [first, end) is in the set.
  bool covers(std::size_t first, std::size_t end) const noexcept {
    for (const auto& r : runs_)
      if (r.first <= first && end <= r.second) return true;
    return first >= end;
  }
  bool empty() const noexcept { return runs_.empty(); }
  // The complement in [0, npages): the parts not in the set.
  std::vector<std::pair<std::size_t, std::size_t>> complement(std::size_t npages) const {
    std::vector<std::pair<std::size_t, std::size_t>> out;
    std::size_t at = 0;
    for (const auto& r : runs_) {
      if (at >= npages) break;  // intervals past npages leave nothing to add
      if (r.first > at) out.emplace_back(at, std::min(r.first, npages));
      at = std::max(at, r.second);
    }
    if (at < npages) out.emplace_back(at, npages);
    return out;
  }

 private:
  std::vector<std::pair<std::size_t, std::size_t>> runs_;
};

}  // namespace uhmm::detail
