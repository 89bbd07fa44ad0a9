// The mm core behind a Context: for the Context members defined outside
// context.cpp (streams, advice, snapshots, notifiers, launches, the migrate
// API) and for tests of host internals. Defined in context_impl.cpp.
#pragma once

namespace uhmm {
class Context;
}  // namespace uhmm

namespace uhmm::detail {

class Mm;
Mm& core(Context& ctx) noexcept;
const Mm& core(const Context& ctx) noexcept;

}  // namespace uhmm::detail
