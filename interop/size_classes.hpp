// The size classes of managed_memory_resource's small allocations: 16-byte
// steps up to 128 bytes, then four classes per power of two up to the large
// threshold, so a request wastes at most a fifth of its slot.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <optional>

namespace uhmm::interop {

inline constexpr std::size_t kSlabBytes = std::size_t{256} << 10;

inline constexpr auto kSizeClasses = [] {
  std::array<std::size_t, 8 + 4 * 11> sizes{};
  std::size_t n = 0;
  for (std::size_t s = 16; s <= 128; s += 16) sizes[n++] = s;
  for (std::size_t base = 128; base < kSlabBytes; base *= 2)
    for (std::size_t step = 1; step <= 4; ++step) sizes[n++] = base + base / 4 * step;
  return sizes;
}();
static_assert(kSizeClasses.back() == kSlabBytes);

// The smallest class that holds `bytes` with slots aligned to `alignment` (a
// power of two up to a page); none when `bytes` is above the largest class.
inline std::optional<std::size_t> size_class(std::size_t bytes, std::size_t alignment) {
  auto it = std::lower_bound(kSizeClasses.begin(), kSizeClasses.end(), std::max<std::size_t>(bytes, 1));
  // Slabs are 256 KiB-aligned: a slot is aligned when its size is a multiple.
  while (it != kSizeClasses.end() && *it % alignment != 0) ++it;
  if (it == kSizeClasses.end()) return std::nullopt;
  return static_cast<std::size_t>(it - kSizeClasses.begin());
}

}  // namespace uhmm::interop
