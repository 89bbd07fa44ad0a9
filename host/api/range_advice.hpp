// Advice and explicit control over managed ranges (Context::advise, advice,
// prefetch, discard): the checks and the mirror-table work behind them.
// docs/DESIGN.md, "Advice".
#pragma once

#include <cstddef>

#include "uhmm/advice.hpp"
#include "uhmm/context.hpp"

namespace uhmm::detail {

class Mm;

// Records `advice` for every page of [p, p + bytes). Throws uhmm::Error and
// changes nothing on bad input.
void advise(Mm& ctx, void* p, std::size_t bytes, Advice advice, Location location);
// The advice of the page holding p (any address inside a managed range).
RangeAdvice advice_of(const Mm& ctx, const void* p);
// Migrates [p, p + bytes) to `to` (host or a device). Throws on bad input.
MigrationResult prefetch(Mm& ctx, void* p, std::size_t bytes, Location to);
// Checks a prefetch's destination (host, or a device of this context).
void check_prefetch_location(const Mm& ctx, Location to, const char* call);
// Drops the contents of [p, p + bytes): host pages and device pages are
// released without a copy, and the pages read as zeros afterwards. Waits for
// pages held by a migration, fault or kernel; poisoned pages are left as they
// are. Returns the pages whose contents were dropped.
std::size_t discard(Mm& ctx, void* p, std::size_t bytes);

}  // namespace uhmm::detail
