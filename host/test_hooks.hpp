// Failures tests inject where the system would rarely produce them. Zero:
// off (production never sets them).
#pragma once

#include <atomic>

namespace uhmm::detail::test_hooks {

// Non-zero: each drop of migrated host copies in migrate_vma_finalize zaps the
// first half of its run, then fails with this errno — as MADV_DONTNEED on a
// run that is mlock'ed part way, on a kernel without MADV_DONTNEED_LOCKED.
inline std::atomic<int> migration_drop_error{0};

}  // namespace uhmm::detail::test_hooks
