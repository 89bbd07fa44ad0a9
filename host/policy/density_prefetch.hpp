// How much of a block a CPU fault brings back from the device: NVIDIA UVM's
// density prefetch. A binary tree over the block's 512 pages; for each
// faulting page, the largest aligned power-of-two part of the block (a node of
// the tree) in which more than `threshold_percent` of the pages are on the
// host already or faulting now. Threshold 0: the whole block (any node holding
// the faulting page qualifies); 100: the faulting pages alone. UVM uses 51:
// a sequential scan then doubles what each fault brings, and scattered faults
// bring little.
#pragma once

#include <array>
#include <bitset>
#include <cstddef>
#include <span>

#include "uhmm/types.hpp"

namespace uhmm::detail {

using BlockPages = std::bitset<kPagesPerBlock>;

// `occupied`: pages of the block on the host (their faulting pages included);
// `faulting`: block-relative indices of the faulting pages. The union of their
// regions.
inline BlockPages density_prefetch_region(const BlockPages& occupied, std::span<const std::size_t> faulting,
                                          unsigned threshold_percent) {
  // Prefix counts: pages occupied in [lo, hi) in O(1).
  std::array<std::uint16_t, kPagesPerBlock + 1> before{};
  for (std::size_t i = 0; i < kPagesPerBlock; ++i) before[i + 1] = static_cast<std::uint16_t>(before[i] + occupied[i]);
  BlockPages region;
  for (std::size_t page : faulting) {
    if (page >= kPagesPerBlock) continue;
    for (std::size_t size = kPagesPerBlock; size >= 1; size /= 2) {
      const std::size_t lo = page & ~(size - 1);
      const std::size_t count = before[lo + size] - before[lo];
      if (count * 100 > threshold_percent * size || size == 1) {
        for (std::size_t i = lo; i < lo + size; ++i) region.set(i);
        break;
      }
    }
  }
  return region;
}

}  // namespace uhmm::detail
