// The process's mappings against vm.max_map_count: what a failed mmap or
// mprotect ran out of, said plainly, and a reserve of mappings that the fault
// path spends when the process is at the limit (signal_mechanism.cpp).
#pragma once

#include <string>

namespace uhmm::detail {

// /proc/sys/vm/max_map_count, and the lines of /proc/self/maps (no large
// allocation: both run at the limit).
long max_map_count() noexcept;
long count_mappings() noexcept;

// The process is at (or within the few mappings one call may need of)
// vm.max_map_count.
bool near_map_limit() noexcept;

// Why a mapping call failed with `err`: "the process is at vm.max_map_count
// (N of M mappings)" when ENOMEM came from the mapping limit, "no host memory"
// for other ENOMEM, else strerror.
std::string describe_mapping_failure(int err);

}  // namespace uhmm::detail
