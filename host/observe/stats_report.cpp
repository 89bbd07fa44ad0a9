#include "stats_report.hpp"

#include <fmt/format.h>

namespace uhmm::detail {
namespace {

std::string duration(double ns) {
  if (ns < 1e3) return fmt::format("{:.0f} ns", ns);
  if (ns < 1e6) return fmt::format("{:.1f} us", ns / 1e3);
  if (ns < 1e9) return fmt::format("{:.1f} ms", ns / 1e6);
  return fmt::format("{:.2f} s", ns / 1e9);
}

}  // namespace

std::string stats_report(const Counters& c, const Latencies& l) {
  std::string out = "uhmm counters:\n";
#define UHMM_REPORT_COUNTER(name) out += fmt::format("  {:<28} {:>14}\n", #name, c.name);
  UHMM_COUNTERS(UHMM_REPORT_COUNTER)
#undef UHMM_REPORT_COUNTER
  // Percentiles are bucket upper edges (log2 buckets): within 2x above the truth.
  out += fmt::format("uhmm latencies:\n  {:<22} {:>10} {:>10} {:>10} {:>10} {:>10}\n", "", "count", "mean", "p50",
                     "p90", "p99");
#define UHMM_REPORT_LATENCY(name)                                                                               \
  if (l.name.count() != 0)                                                                                      \
    out += fmt::format("  {:<22} {:>10} {:>10} {:>10} {:>10} {:>10}\n", #name, l.name.count(),                 \
                       duration(l.name.mean_ns()), duration(l.name.percentile_ns(0.5)),                         \
                       duration(l.name.percentile_ns(0.9)), duration(l.name.percentile_ns(0.99)));
  UHMM_LATENCIES(UHMM_REPORT_LATENCY)
#undef UHMM_REPORT_LATENCY
  return out;
}

}  // namespace uhmm::detail
