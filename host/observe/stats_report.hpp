// The UHMM_STATS=1 report printed when a Context ends: every counter, then
// each latency histogram that has samples as count, mean, p50, p90, p99.
#pragma once

#include <string>

#include "uhmm/counters.hpp"
#include "uhmm/latency.hpp"

namespace uhmm::detail {

std::string stats_report(const Counters& counters, const Latencies& latencies);

}  // namespace uhmm::detail
