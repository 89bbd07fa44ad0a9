// The application's own changes to a managed range's mapping — madvise
// (MADV_DONTNEED, MADV_FREE), munmap, mremap — reported by
// userfaultfd's non-cooperative events (REMOVE, UNMAP, REMAP), and how the
// mirror follows them. DESIGN.md ("The application changes the mapping") has
// the rules and why; in short:
//
//   REMOVE  MADV_DONTNEED or MADV_FREE (the event does not say which): the
//           span's unlocked device-resident pages become Empty, giving their
//           pool pages back; host pages (read-mostly ones too, whose device
//           copy goes) stay System, FREED: MADV_FREE keeps them, and which are
//           gone is learnt before the next walk (written_pages.hpp). Locked
//           pages are marked DISCARDED, and emptied by their holder's unlock;
//           uhmm's own MADV_DONTNEED (migrate_vma_finalize, ...) zaps only
//           pages it holds locked, waits until the event is applied, and
//           clears the marks it caused.
//   UNMAP   the span is gone for good: device pages released, entries Empty,
//           calls on it fail; a range unmapped entirely is retired.
//   REMAP   the moved part's device pages are copied into the new place
//           (those another operation holds too) and released; the new place
//           is unregistered and becomes ordinary memory holding all the data.
//           The UNMAP of the old place that the kernel sends next retires it
//           (until then it counts as live: no range is registered there).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "fault_mechanism.hpp"
#include "notifier_registry.hpp"
#include "uhmm/interval_notifier.hpp"

namespace uhmm::detail {

class Mm;
class ManagedRange;
class Userfaultfd;

class MappingEvents {
 public:
  // Userfaultfd mode only (the userfaultfd mechanism reports these events;
  // the signal mechanism has none): `uffd` is that mechanism's descriptor.
  // Throws OutOfMemory when no staging buffer can be had.
  MappingEvents(Mm& ctx, Userfaultfd& uffd);
  ~MappingEvents();
  MappingEvents(const MappingEvents&) = delete;
  MappingEvents& operator=(const MappingEvents&) = delete;

  // Applies one remove, unmap or remap event (faults are ignored). The
  // fault-service thread only, right after reading it; never throws and never
  // waits for a page lock.
  void apply(const FaultEvent& event) noexcept;
  // A fault where no live range is: memory the application grew a range into
  // in place with mremap stays registered, and plain anonymous memory reads
  // zeros there (a range being freed wakes its own faulting threads).
  void fault_outside_ranges(std::uintptr_t address, bool write_protect) noexcept;

 private:
  void discard(std::uintptr_t lo, std::uintptr_t hi) noexcept;
  void unmap(std::uintptr_t lo, std::uintptr_t hi) noexcept;
  void remap(std::uintptr_t from, std::uintptr_t to, std::size_t len) noexcept;
  // Empties the unlocked pages [first, end) of range (device pages released,
  // PINNED kept; a discard keeps host pages, FREED); returns how many device
  // pages were dropped. Interval notifiers hear of it first as `kind`.
  std::size_t drop_device_pages(ManagedRange& range, std::size_t first, std::size_t end,
                                InvalidateKind kind) noexcept;
  // One pass of it; without `invalidated` it returns true at the first page
  // it would change, before changing it. A discard keeps host pages, FREED.
  bool drop_pass(ManagedRange& range, std::size_t first, std::size_t end, InvalidateKind kind, bool invalidated,
                 std::vector<std::vector<DevicePageIndex>>& to_free, std::size_t& dropped) noexcept;
  // Copies the device pages of [first, end) to the same pages displaced by
  // `shift` bytes (the range's new place after mremap), through `staging`
  // (a page at least; nullptr: none could be had, and the pages are lost).
  void copy_out(ManagedRange& range, std::size_t first, std::size_t end, std::intptr_t shift,
                std::byte* staging) noexcept;
  // copy_out of page p, which another operation holds: copies its device
  // page to `target` unless its data is there already. False: lost.
  bool copy_held(ManagedRange& range, std::size_t p, std::byte* target, std::byte* staging) noexcept;
  // The staging buffer of a REMAP applied at nesting `level`.
  std::byte* staging_at(std::size_t level) noexcept;

  Mm& ctx_;
  Userfaultfd& uffd_;
  // A REMAP's copy stages each page in a buffer of its own: neither the
  // fault service's (a bring-back whose install pumps this event is still
  // installing from it) nor the one of a REMAP whose copy pumped this one.
  // One per nesting level; level 0's taken up front.
  std::vector<std::byte*> staging_;
  std::size_t remap_depth_ = 0;
};

}  // namespace uhmm::detail
