// The application's own changes to a managed range's mapping — madvise
// (MADV_DONTNEED, MADV_FREE, MADV_REMOVE), munmap, mremap — reported by
// userfaultfd's non-cooperative events (REMOVE, UNMAP, REMAP), and how the
// mirror follows them. DESIGN.md ("The application changes the mapping") has
// the rules and why; in short:
//
//   REMOVE  the span's unlocked pages become Empty: device-resident ones give
//           their pool pages back (the kernel zaps device-private entries
//           too), host ones are zapped by the kernel right after. Locked pages
//           are left to their holder — uhmm's own MADV_DONTNEED in
//           migrate_vma_finalize zaps only pages it holds locked, and waits
//           until the event is applied, so it changes nothing here.
//   UNMAP   the span is gone for good: device pages released, entries Empty,
//           calls on it fail; a range unmapped entirely is retired.
//   REMAP   the moved part is retired the same way, after its device pages
//           were copied into the new place; the new place is unregistered and
//           becomes ordinary memory holding all the data.
#pragma once

#include <linux/userfaultfd.h>

#include <cstddef>
#include <cstdint>

namespace uhmm::detail {

class ContextImpl;
class ManagedRange;

class MappingEvents {
 public:
  explicit MappingEvents(ContextImpl& ctx) noexcept : ctx_(ctx) {}

  // Applies one REMOVE, UNMAP or REMAP message (others are ignored). The
  // fault-service thread only, right after reading it; never throws and never
  // waits for a page lock. `staging` is the service's block-sized buffer.
  void apply(const uffd_msg& msg, std::byte* staging) noexcept;

 private:
  void discard(std::uintptr_t lo, std::uintptr_t hi) noexcept;
  void unmap(std::uintptr_t lo, std::uintptr_t hi) noexcept;
  void remap(std::uintptr_t from, std::uintptr_t to, std::size_t len, std::byte* staging) noexcept;
  // Empties the unlocked pages [first, end) of range (device pages released,
  // PINNED kept); returns how many device pages were dropped.
  std::size_t drop_device_pages(ManagedRange& range, std::size_t first, std::size_t end) noexcept;
  // Copies the device pages of [first, end) to the same pages displaced by
  // `shift` bytes (the range's new place after mremap).
  void copy_out(ManagedRange& range, std::size_t first, std::size_t end, std::intptr_t shift,
                std::byte* staging) noexcept;

  ContextImpl& ctx_;
};

}  // namespace uhmm::detail
