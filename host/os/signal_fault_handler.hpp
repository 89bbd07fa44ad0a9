// The process-wide SIGSEGV handler of the signal fault mechanism, and what it
// shares with the fault services: the ranges it serves and the fault slots.
//
// A thread that touches a protected page of a served range enters the handler,
// which (async-signal-safe: atomics, write(2), futex) posts the page in a free
// slot, kicks the owning fault service's eventfd and sleeps on the slot's
// futex until a service marks it done; the handler then returns and the access
// retries, as a thread woken from a userfaultfd fault does. Faults on other
// addresses go to the handler that was installed before uhmm's.
//
// The served ranges are an immutable sorted snapshot, replaced on add/remove;
// a reader section (two counters, the epoch picks one) lets a writer free the
// old snapshot once no handler can still be reading it, and lets a context
// close its eventfd once no handler can still be posting to it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fault_mechanism.hpp"

namespace uhmm::detail::signal_faults {

// Page protections as the signal mechanism records them, per page.
enum Protection : std::uint8_t { kNone = 0, kRead = 1, kReadWrite = 2, kPoison = 3 };
// As stored in a range's table: XORed with kReadWrite, so that a fresh table
// (untouched zero pages, no memory) says every page is open.
constexpr std::uint8_t stored(Protection p) noexcept { return static_cast<std::uint8_t>(p ^ kReadWrite); }
constexpr Protection from_stored(std::uint8_t s) noexcept { return static_cast<Protection>(s ^ kReadWrite); }

struct ServedRange {
  std::uintptr_t begin;
  std::uintptr_t end;
  std::uint32_t queue;         // the fault service's queue id
  int event_fd;                // its wake-up
  const std::uint8_t* protection;  // per page, stored(), read with atomic_ref (write classification)
};

// Installs the handler once per process (chaining to the previous one).
// Throws uhmm::Error if sigaction fails.
void install();

// A queue id never used before (never 0).
std::uint32_t new_queue() noexcept;

// Serves a range from now on. Throws std::bad_alloc.
void add_range(const ServedRange& range);
// Stops serving the range starting at begin; when it returns, no handler is
// still looking at it or posting to its queue. Then wakes its waiting threads.
void remove_range(std::uintptr_t begin) noexcept;

// Takes up to max posted faults of `queue` (the fault service's read).
std::size_t take(std::uint32_t queue, FaultEvent* out, std::size_t max) noexcept;
// Releases the threads of `queue` waiting on a page in [addr, addr + len).
void wake(std::uint32_t queue, std::uintptr_t addr, std::size_t len) noexcept;

// Marks the calling thread as uhmm's own fault service: a fault it takes on a
// served range is a bug, reported and passed on (it would wait on itself).
void mark_service_thread() noexcept;
bool on_service_thread() noexcept;

}  // namespace uhmm::detail::signal_faults
