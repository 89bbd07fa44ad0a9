// Read-mostly pages (Advice::set_read_mostly): a migration to a device keeps
// the host copy, and the page becomes Duplicated — valid on the host and on
// one device, read-only on both. A write collapses it to one copy: a CPU store
// to the host copy (write-protect fault), a launch that may write it to the
// device copy. docs/DESIGN.md, "Advice".
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "uhmm/interval_notifier.hpp"
#include "uhmm/types.hpp"

namespace uhmm::detail {

class Mm;
class ManagedRange;

// Keeps the host copies of Duplicated pages: their device copies go back to
// their pools, the entries become System and writable (the write-protection
// is lifted without waking: the caller unlocks, which wakes). Pre: `pages`
// ascending, LOCKED by the caller, Duplicated. Never throws.
void collapse_to_host(Mm& ctx, ManagedRange& range, std::span<const std::size_t> pages,
                      InvalidateKind kind = InvalidateKind::migrate, OwnerId cause = kNoOwner) noexcept;
// Keeps the device copies: the host copies are dropped, the entries become
// Device and writable. Same preconditions; not on the fault service's thread
// (it waits for the fault service to apply its own zap). Pages whose host
// copies could not be dropped collapse to the host instead: returned.
// Throws std::bad_alloc before it changes anything.
std::vector<std::size_t> collapse_to_device(Mm& ctx, ManagedRange& range, std::span<const std::size_t> pages);

}  // namespace uhmm::detail
