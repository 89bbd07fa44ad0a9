// MigrationResult: what one migration call did, page by page in counts.
#pragma once

#include <cstddef>

#include "uhmm/error.hpp"

namespace uhmm {

// Per-page outcome counts of one migration call.
struct MigrationResult {
  std::size_t pages = 0;     // pages in the range
  std::size_t migrated = 0;  // pages that moved in this call
  std::size_t already = 0;   // pages already where they were asked to be
  std::size_t skipped = 0;   // locked by another migration or pinned
  std::size_t failed = 0;    // selected but not moved (pool full, copy failed): still where they were
  Status status;             // why pages failed (ok when none did)
};

}  // namespace uhmm
