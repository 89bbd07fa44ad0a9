// Walks a per-page predicate as contiguous runs: one system call per run
// instead of one per page.
#pragma once

#include <cstddef>

namespace uhmm::detail {

// Calls fn(first, count) for each maximal run of i in [begin, end) with pred(i).
template <class Pred, class Fn>
void for_each_run(std::size_t begin, std::size_t end, Pred&& pred, Fn&& fn) {
  std::size_t i = begin;
  while (i < end) {
    while (i < end && !pred(i)) ++i;
    const std::size_t first = i;
    while (i < end && pred(i)) ++i;
    if (i > first) fn(first, i - first);
  }
}

}  // namespace uhmm::detail
