// The application's own changes to a managed range's mapping — madvise
// (MADV_DONTNEED, MADV_FREE, MADV_REMOVE), munmap, mremap — reported by
// userfaultfd's non-cooperative events (REMOVE, UNMAP, REMAP), and how the
// mirror follows them. DESIGN.md ("The application changes the mapping") has
// the rules and why; in short:
//
//   REMOVE  device-resident pages of the span are dropped (pool pages
//           released, entries Empty), as the kernel zaps device-private
//           entries; host pages stay System (their pte is gone or, after
//           MADV_FREE, maybe not): the fault path already zero-fills an
//           unmapped System page. Locked pages are left to their holder —
//           uhmm's own MADV_DONTNEED in migrate_vma_finalize zaps only
//           pages it holds locked, so it changes nothing here.
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
  // Drops the unlocked device pages of pages [first, end) of range (entries
  // become Empty, PINNED kept); returns how many.
  std::size_t drop_device_pages(ManagedRange& range, std::size_t first, std::size_t end) noexcept;
  // Copies the device pages of [first, end) to the same pages displaced by
  // `shift` bytes (the range's new place after mremap).
  void copy_out(ManagedRange& range, std::size_t first, std::size_t end, std::intptr_t shift,
                std::byte* staging) noexcept;

  ContextImpl& ctx_;
};

}  // namespace uhmm::detail
