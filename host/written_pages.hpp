// Signal mode opens never-touched (Empty) pages, so that system calls on them
// work; the application, or the kernel inside a system call, may then write
// one without a fault. Before an operation that tells Empty from System
// (residency, snapshot, discard, migration), the Empty pages of its span that
// hold host data become System: the mirror learns what was written (DESIGN.md,
// "The signal fault mechanism").
#pragma once

#include <cstddef>

namespace uhmm::detail {

class ContextImpl;
class ManagedRange;

// Pages [first, first + count) of range. Nothing where Empty pages are closed
// (userfaultfd: a first touch faults, and the mirror hears of it then).
void learn_written_pages(ContextImpl& ctx, ManagedRange& range, std::size_t first, std::size_t count) noexcept;

}  // namespace uhmm::detail
