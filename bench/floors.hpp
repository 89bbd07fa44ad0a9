// Physical floors measured on this machine in the same run as the figures they
// judge: memcpy bandwidth, a first-touch page fault, a bare userfaultfd round
// trip, a bare SIGSEGV + mprotect round trip.
#pragma once

#include <cstddef>
#include <vector>

namespace uhmm::bench {

struct Latencies {
  double p50_us = 0;
  double p99_us = 0;
  double mean_us = 0;  // for rates: 1e6 / mean_us events per second
};
Latencies summarize(std::vector<double>& samples_us);

double memcpy_gbps(std::size_t bytes);
// Per-page cost of first-touch faults on fresh anonymous memory.
double first_touch_us(std::size_t pages);
// A fault served by a handler thread with UFFDIO_COPY of 4 KiB: what a
// userfaultfd pager cannot go below with the same thread placement.
Latencies bare_userfaultfd_round_trip(std::size_t faults);
// A SIGSEGV on a PROT_NONE page resolved in the faulting thread's own handler
// (memcpy of 4 KiB, mprotect): what a signal-based pager cannot go below.
Latencies bare_sigsegv_round_trip(std::size_t faults);

}  // namespace uhmm::bench
