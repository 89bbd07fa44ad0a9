// What the application did to host pages without a fault, learnt before an
// operation that tells Empty from System (residency, snapshot, discard,
// migration):
//
//   written  signal mode opens never-touched (Empty) pages, so that system
//            calls on them work; the application, or the kernel inside a
//            system call, may then write one unseen. Those holding host data
//            become System (DESIGN.md, "The signal fault mechanism").
//   freed    userfaultfd mode: a host page the application discarded or freed
//            (one REMOVE event for MADV_DONTNEED and MADV_FREE) stays System,
//            FREED. Those no longer mapped (zapped, or reclaimed after
//            MADV_FREE) become Empty; those still mapped keep their data, and
//            FREED, as the kernel may still reclaim one not written since
//            (DESIGN.md, "The application changes the mapping").
#pragma once

#include <cstddef>

namespace uhmm::detail {

class Mm;
class ManagedRange;

// Pages [first, first + count) of range; locked pages are their holder's.
void learn_written_pages(Mm& ctx, ManagedRange& range, std::size_t first, std::size_t count) noexcept;

}  // namespace uhmm::detail
