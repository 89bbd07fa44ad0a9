// Interval notifiers: the kernel's mmu_interval_notifier over uhmm's mirror
// page table. A driver that keeps its own view of managed memory (a device
// page table built from snapshot_range) registers a notifier on the span it
// mirrors; every change to the mirror that could make that view stale calls
// its invalidate callback first, and bumps its sequence number.
//
// The retry loop (as in the kernel's Documentation/mm/hmm.rst):
//
//   again:
//     const std::uint64_t seq = notifier.read_begin();
//     snapshot_range(ctx, range);                 // no driver lock held
//     std::lock_guard lock(driver_lock);
//     if (notifier.read_retry(seq)) goto again;  // changed meanwhile: redo it
//     install(range);                             // the view is current
//
//   void invalidate(const InvalidateEvent& e) {   // the callback
//     std::lock_guard lock(driver_lock);
//     unmap(e.start, e.end);                      // before the change lands
//   }
//
// The callback runs before the change becomes visible to the device (pages
// are locked, device pages not yet freed), on whatever thread makes the change
// — a migrating thread, the CPU fault service, an evicting thread, free().
// What a callback may do: take its own driver lock, read_retry() on any
// notifier, snapshot_range() without request flags (it reports locked pages as
// not valid), read counters. What it may not do: read_begin() (it waits for
// the very invalidation that is running), snapshot with POPULATE / HOST /
// MIGRATE (refused with Errc::busy: they may wait for pages the caller
// holds), migrations, allocate/free, register or unregister notifiers, or
// touch managed memory (it may run on the fault service, which would fault on
// itself). The thread that calls into uhmm must not hold the lock its
// callback takes, except around read_retry() and its own table update.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "uhmm/export.hpp"
#include "uhmm/types.hpp"

namespace uhmm {

class Context;
namespace detail {
struct NotifierState;
}

// Why a device's view of a span is about to go stale (MMU_NOTIFY_*).
enum class InvalidateKind : std::uint8_t {
  migrate,            // pages move: to a device, between devices, or back to host (faults, fault-ahead, explicit)
  discard,            // the application's MADV_DONTNEED / MADV_FREE / MADV_REMOVE
  unmap,              // the application's munmap / mremap
  protection_change,  // pin(): the pages become host-only
  eviction,           // device pages evicted back to host (pool pressure, shrink, migrate_device_range)
  free,               // Context::free of the range
};

UHMM_EXPORT const char* to_string(InvalidateKind kind) noexcept;

struct InvalidateEvent {
  InvalidateKind kind = InvalidateKind::migrate;
  // The affected part of the notifier's interval, page aligned.
  void* start = nullptr;
  void* end = nullptr;
  // Who the change is for: a migration's destination device (kNoOwner when
  // the pages go to the host), the device whose pool is evicted; kNoOwner for
  // the application's and the host's own changes. A driver may skip a migrate
  // event naming itself as it updates its table after its own migration
  // (MMU_NOTIFY_MIGRATE's owner in the kernel).
  OwnerId owner = kNoOwner;
  // The notifier's sequence number after this invalidation: a read_begin()
  // value older than it fails read_retry().
  std::uint64_t seq = 0;
};

class UHMM_EXPORT IntervalNotifier {
 public:
  using Callback = std::function<void(const InvalidateEvent&)>;

  // Registers on [start, start + bytes): page aligned, non-zero, inside one
  // managed range of ctx. Throws uhmm::Error (and registers nothing) on bad
  // input or a null callback. The notifier follows addresses: after the range
  // is freed it gets a `free` event, and nothing more from that range.
  IntervalNotifier(Context& ctx, void* start, std::size_t bytes, Callback invalidate);
  // Unregisters, waiting for callbacks of this notifier still running (so
  // their captures may die right after). Not from one of its own callbacks.
  ~IntervalNotifier();
  IntervalNotifier(const IntervalNotifier&) = delete;
  IntervalNotifier& operator=(const IntervalNotifier&) = delete;

  // mmu_interval_read_begin: waits until no invalidation of this interval is
  // in progress and returns the sequence number to validate a snapshot with.
  std::uint64_t read_begin() const;
  // mmu_interval_read_retry: true if an invalidation of this interval began
  // after the read_begin() that returned seq (the snapshot may be stale).
  bool read_retry(std::uint64_t seq) const noexcept;
  // The current sequence number, without waiting (mmu_interval_check_retry's view).
  std::uint64_t seq() const noexcept;

  void* start() const noexcept;
  std::size_t bytes() const noexcept;

 private:
  Context& ctx_;
  std::shared_ptr<detail::NotifierState> state_;
};

}  // namespace uhmm
