// The owner ids of a context's devices, 1..count, for range-for. OwnerId is 8
// bits and a context may have 255 devices: `for (OwnerId o = 1; o <= count;
// ++o)` wraps to 0 there and never ends, so the count runs in a wider type.
#pragma once

#include <cstddef>
#include <ranges>

#include "uhmm/types.hpp"

namespace uhmm::detail {

inline auto owner_ids(std::size_t count) {
  return std::views::iota(std::size_t{1}, count + 1) |
         std::views::transform([](std::size_t i) { return static_cast<OwnerId>(i); });
}

}  // namespace uhmm::detail
