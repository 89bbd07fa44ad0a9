// Where each part of the managed memory was last prefetched to, for
// uhmmMemRangeAttributeLastPrefetchLocation: disjoint address intervals, each
// with the device ordinal (or uhmmCpuDeviceId) of its last prefetch.
#pragma once

#include <cstdint>
#include <map>

namespace uhmm::interop {

class PrefetchHistory {
 public:
  // [lo, hi) was prefetched to `location` (it replaces what was recorded there).
  void record(std::uintptr_t lo, std::uintptr_t hi, int location);
  // [lo, hi) is no longer managed memory (freed).
  void forget(std::uintptr_t lo, std::uintptr_t hi);
  // The location of the last prefetch of all of [lo, hi); uhmmInvalidDeviceId
  // when part of it was never prefetched or parts went to different places.
  int last(std::uintptr_t lo, std::uintptr_t hi) const;

 private:
  struct Interval {
    std::uintptr_t end;
    int location;
  };
  std::map<std::uintptr_t, Interval> intervals_;  // by start
};

}  // namespace uhmm::interop
