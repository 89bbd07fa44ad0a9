#include "prefetch_history.hpp"

#include <iterator>

#include "uhmm/uhmm.h"

namespace uhmm::interop {

void PrefetchHistory::forget(std::uintptr_t lo, std::uintptr_t hi) {
  auto it = intervals_.lower_bound(lo);
  if (it != intervals_.begin() && std::prev(it)->second.end > lo) --it;
  while (it != intervals_.end() && it->first < hi) {
    const std::uintptr_t start = it->first;
    const Interval interval = it->second;
    it = intervals_.erase(it);
    // What sticks out on either side stays recorded.
    if (start < lo) intervals_.emplace(start, Interval{lo, interval.location});
    if (interval.end > hi) it = intervals_.emplace(hi, Interval{interval.end, interval.location}).first;
  }
}

void PrefetchHistory::record(std::uintptr_t lo, std::uintptr_t hi, int location) {
  forget(lo, hi);
  intervals_.emplace(lo, Interval{hi, location});
}

int PrefetchHistory::last(std::uintptr_t lo, std::uintptr_t hi) const {
  auto it = intervals_.upper_bound(lo);
  if (it == intervals_.begin()) return uhmmInvalidDeviceId;
  --it;  // the interval starting at or before lo
  const int location = it->second.location;
  std::uintptr_t covered = lo;
  for (; it != intervals_.end() && covered < hi; ++it) {
    if (it->first > covered || it->second.end <= covered || it->second.location != location)
      return uhmmInvalidDeviceId;
    covered = it->second.end;
  }
  return covered >= hi ? location : uhmmInvalidDeviceId;
}

}  // namespace uhmm::interop
