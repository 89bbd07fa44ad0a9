// How CPU faults on managed memory reach the fault service, and how pages are
// put into (and taken out of) the application's view of a range. Two
// mechanisms implement it: userfaultfd (the kernel reports faults and maps
// pages with ioctls) and signal (SIGSEGV on mprotect'ed pages of a memfd
// mapping; see signal_mechanism.hpp). The decisions — which page needs what,
// by mirror state — are made once, above this interface, for both.
//
// Every call that changes a page's protection or contents is made by the
// holder of the page's LOCKED bit. Calls return 0 or an errno, never throw.
// Like the userfaultfd ioctls they mirror, the install calls do not wake the
// faulting threads: the caller wakes them once the mirror is updated.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "uhmm/context.hpp"

namespace uhmm::detail {

class ManagedRange;

// One event read from the mechanism. Mostly a CPU fault: the page address and
// whether it was a store to a write-protected page. A mechanism that follows
// the application's own changes to a range's mapping (userfaultfd's REMOVE,
// UNMAP and REMAP events; follows_mapping_changes()) reports those in order
// with the faults; the fault service applies them at once (mapping_events.hpp).
struct FaultEvent {
  enum class Kind : std::uint8_t {
    fault,
    remove,  // madvise(DONTNEED/FREE/REMOVE) of [address, end)
    unmap,   // munmap of [address, end)
    remap,   // mremap of [address, end) to `to`
  };
  std::uintptr_t address;
  bool write_protect;
  Kind kind = Kind::fault;
  std::uintptr_t end = 0;
  std::uintptr_t to = 0;
};

// What a mechanism keeps per range (its mapping). The range owns it.
class RangeMapping {
 public:
  virtual ~RangeMapping() = default;  // unmaps; wakes threads still faulting in it
  std::byte* base() const noexcept { return base_; }
  std::size_t bytes() const noexcept { return bytes_; }
  // The application unmapped parts of the range itself (only a mechanism that
  // follows_mapping_changes() learns of that): unmap just the `live` page runs
  // [first, end) now, and nothing more later — something else may live in the
  // holes. Called once, from ~ManagedRange.
  virtual void release_only(const std::vector<std::pair<std::size_t, std::size_t>>& live) noexcept { (void)live; }

 protected:
  std::byte* base_ = nullptr;
  std::size_t bytes_ = 0;
};

class FaultMechanism {
 public:
  virtual ~FaultMechanism() = default;
  // "userfaultfd" or "signal" (Context::fault_mode()).
  virtual const char* name() const noexcept = 0;

  // A 2 MiB-aligned range of `bytes` (a multiple of kPageSize) whose pages all
  // fault on first access. Throws uhmm::Error (OutOfMemory when the mapping
  // itself fails).
  virtual std::unique_ptr<RangeMapping> map_range(std::size_t bytes) = 0;

  // The descriptor the fault service polls for faults, and the read: up to
  // `max` events without blocking, returning the count (0 if none; fewer than
  // `max` only when nothing more is pending). Reentrant on the service thread.
  virtual int poll_fd() const noexcept = 0;
  virtual std::size_t read_faults(FaultEvent* out, std::size_t max) noexcept = 0;

  // Makes the run readable and writable as zeros where it is missing. EEXIST:
  // some page of the run was present already, and nothing was changed.
  virtual int install_zeros(ManagedRange& range, std::size_t first, std::size_t count) noexcept = 0;
  // Fills missing pages of the run with `src` and makes them accessible.
  // EEXIST: stopped at a page that was present; *copied says how far it got.
  virtual int install_copy(ManagedRange& range, std::size_t first, std::size_t count, const std::byte* src,
                           std::size_t* copied) noexcept = 0;
  // Write-protects (stores fault, reads go on) or lifts it. Never wakes: a
  // writer woken before its page is unlocked could find it still LOCKED (a
  // migration it starts next would skip it); the holder wakes after unlock.
  virtual int write_protect(ManagedRange& range, std::size_t first, std::size_t count, bool protect) noexcept = 0;
  // Drops the host copy of a run (its data went to a device): the next access
  // faults, and the memory is released.
  virtual int drop(ManagedRange& range, std::size_t first, std::size_t count) noexcept = 0;
  // Makes every later access to the (missing) pages raise SIGBUS. Waiting
  // threads sleep on until wake().
  virtual bool has_poison() const noexcept = 0;
  virtual int poison(ManagedRange& range, std::size_t first, std::size_t count) noexcept = 0;
  // Opens held host pages read-write in the application's view now (never
  // deferred): the holder's own worker reaches them there (the kernel of a
  // launch that holds them in place), and its fault would wait for that very
  // holder. Only a mechanism that closes_idle_host_pages() has any to open.
  virtual int open_held(ManagedRange& range, std::size_t first, std::size_t count) noexcept {
    (void)range;
    (void)first;
    (void)count;
    return 0;
  }
  // Wakes the threads faulting on [addr, addr + len): each retries its access.
  virtual int wake(std::uintptr_t addr, std::size_t len) noexcept = 0;

  // True when read_faults() also reports the application's madvise, munmap
  // and mremap of managed memory (userfaultfd with its non-cooperative
  // events). Without it (signal mode) those are not followed: DESIGN.md.
  virtual bool follows_mapping_changes() const noexcept { return false; }

  // True when protections in this range should change a whole 2 MiB block at
  // a time (the signal mechanism near its mapping budget); the fault service
  // and migrations then bring back or drop whole blocks.
  virtual bool coarse() const noexcept { return false; }
  // True when host pages may be protected while nothing holds them (the
  // signal mechanism lowers them to keep blocks in one run): a fault with
  // fault-ahead then opens every unlocked host page of its block too.
  virtual bool closes_idle_host_pages() const noexcept { return false; }

  // True when never-touched (Empty) pages are open in the application's view
  // (the signal mechanism: so that system calls on them work). The
  // application, or the kernel in a system call, may then write one unseen:
  // an Empty page may hold host data, which host_data() tells.
  virtual bool opens_empty_pages() const noexcept { return false; }
  // Whether a never-touched page is closed (its access would fault).
  virtual bool empty_page_closed(ManagedRange& range, std::size_t page) const noexcept {
    (void)range;
    (void)page;
    return true;
  }
  // Sets present[i] for each page of the run that holds host data: with
  // opens_empty_pages(), one written or read since it was last dropped; with
  // follows_mapping_changes(), one mapped or swapped out (a page the
  // application freed may be gone). Returns 0 or an errno (then nothing is
  // known: treat every page as data).
  virtual int host_data(ManagedRange& range, std::size_t first, std::size_t count, std::uint8_t* present) noexcept {
    (void)range;
    (void)first;
    std::fill_n(present, count, std::uint8_t{0});
    return 0;
  }
};

// The mechanism options.fault_mode asks for: "userfaultfd", "signal", or
// "auto" (userfaultfd, else signal with a log line saying why). Throws
// uhmm::Error: invalid_argument for an unknown mode, userfaultfd_unavailable
// when userfaultfd is forced and refused.
std::unique_ptr<FaultMechanism> open_fault_mechanism(const ContextOptions& options);

}  // namespace uhmm::detail
