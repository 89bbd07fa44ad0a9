// Test points: hooks tests set to force an interleaving or inject a failure
// at a precise place (tests that link the library's object files; never set
// otherwise). Unset, each costs one relaxed load.
#pragma once

#include <atomic>
#include <cstddef>

namespace uhmm::detail::test_points {

// Called by the device page pool while it holds its mutex, on every
// allocation (a signal raised here lands inside a library lock).
extern std::atomic<void (*)()> pool_locked;

// Non-zero: each drop of migrated host copies in migrate_vma_finalize zaps the
// first half of its run, then fails with this errno, as MADV_DONTNEED on a
// run that is mlock'ed part way, on a kernel without MADV_DONTNEED_LOCKED.
inline std::atomic<int> migration_drop_error{0};

// Set: the signal fault mechanism acts as near its mapping budget (coarse,
// host/os/signal_mechanism.hpp) whatever its count of protection runs.
inline std::atomic<bool> signal_coarse{false};

// Called by the signal fault mechanism when, coarse, it is about to lower the
// unlocked pages of a block (widen), holding its range's mapping mutex but no
// block mutex: a test locks a page of the block here.
inline std::atomic<void (*)()> signal_widen{nullptr};

// Called by an operation that holds pages LOCKED to map them on the host
// (bring_back, snapshot_range's populate), with the first page's
// address: before it maps them (`installed` false) and after.
inline std::atomic<void (*)(void* first_page, bool installed)> held_install{nullptr};

inline void at(const std::atomic<void (*)(void*, bool)>& point, void* page, bool installed) noexcept {
  if (auto* hook = point.load(std::memory_order_relaxed)) hook(page, installed);
}

// Non-zero: the fault service holds a batch it has begun until it holds this
// many faults, so that a test can put faults of several threads into one
// batch (FaultService::hold_for_test_batch).
inline std::atomic<std::size_t> fault_batch_min{0};

// Called by bring_back with the first page it brings back, after copying
// the pages from their device and before installing them (a test unmaps
// them there).
inline std::atomic<void (*)(void*)> bring_back_copied{nullptr};

// Called by bring_back between copying device pages into its
// staging buffer and installing them from it (an event the install's EAGAIN
// pump applies then must leave that buffer alone).
inline std::atomic<void (*)()> bring_back_staged{nullptr};

// Called by the REMAP handler (MappingEvents::copy_out) while it holds the
// device pages it copies to the range's new place, locked.
inline std::atomic<void (*)()> remap_copy_locked{nullptr};

// Called by the REMAP handler (MappingEvents::remap) once it has applied a
// REMAP, before the UNMAP of the old place that follows it is read.
inline std::atomic<void (*)()> remap_applied{nullptr};

// Called by a thread about to sleep until locked pages are unlocked
// (UnlockEvents::wait_after, wait_after_for).
inline std::atomic<void (*)()> unlock_wait{nullptr};

inline void at(const std::atomic<void (*)()>& point) noexcept {
  if (auto* hook = point.load(std::memory_order_relaxed)) hook();
}

}  // namespace uhmm::detail::test_points
