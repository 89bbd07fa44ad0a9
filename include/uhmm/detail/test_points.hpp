// Test points: hooks tests set to force an interleaving or inject a failure
// at a precise place (tests that link the library's object files; never set
// otherwise). Unset, each costs one relaxed load.
#pragma once

#include <atomic>

namespace uhmm::detail::test_points {

// Called by the device page pool while it holds its mutex, on every
// allocation (a signal raised here lands inside a library lock).
extern std::atomic<void (*)()> pool_locked;

// Non-zero: each drop of migrated host copies in migrate_vma_finalize zaps the
// first half of its run, then fails with this errno, as MADV_DONTNEED on a
// run that is mlock'ed part way, on a kernel without MADV_DONTNEED_LOCKED.
inline std::atomic<int> migration_drop_error{0};

// Called by ContextImpl::bring_back between copying device pages into its
// staging buffer and installing them from it (an event the install's EAGAIN
// pump applies then must leave that buffer alone).
inline std::atomic<void (*)()> bring_back_staged{nullptr};

// Called by the REMAP handler (MappingEvents::copy_out) while it holds the
// device pages it copies to the range's new place, locked.
inline std::atomic<void (*)()> remap_copy_locked{nullptr};

// Called by a thread about to sleep until locked pages are unlocked
// (UnlockEvents::wait_after, wait_after_for).
inline std::atomic<void (*)()> unlock_wait{nullptr};

inline void at(const std::atomic<void (*)()>& point) noexcept {
  if (auto* hook = point.load(std::memory_order_relaxed)) hook();
}

}  // namespace uhmm::detail::test_points
