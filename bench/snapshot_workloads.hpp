// Workloads of range snapshots (hmm_range_fault) and of the one walk that
// snapshots, populates and locks for migration in a single pass.
#pragma once

#include <cstddef>

namespace uhmm::bench {

// Snapshots of a host-resident range of `bytes`, repeated: the rate in GB/s of
// mirror words produced (8 bytes per page), to set against memcpy of the same
// number of bytes.
double snapshot_word_gbps(std::size_t bytes, int rounds);

// The same range made device-resident, one way or the other, from a fresh
// range each round (never touched, or its first half written):
//   two walks: snapshot with POPULATE, then migrate_vma_setup + copy + pages + finalize;
//   one walk:  snapshot with REQ_MIGRATE, then copy + pages + finalize.
// Best seconds of each.
struct WalkTimes {
  double two_walks_s = 0;
  double one_walk_s = 0;
};
WalkTimes one_walk_vs_two(std::size_t bytes, bool half_written, int rounds);

}  // namespace uhmm::bench
