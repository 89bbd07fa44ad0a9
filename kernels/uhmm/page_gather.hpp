// Gather/scatter of a page list in one launch: word i of the index space is
// word (i % words-per-page) of page (i / words-per-page), so consecutive
// threads touch consecutive words (coalesced on a GPU). The list travels by
// value in the kernel's parameters (kMaxPages pairs fit the 4 KiB limit that
// CUDA and HIP both guarantee), so no device buffer has to outlive the launch.
#pragma once

#include <cstddef>
#include <cstdint>

#include "uhmm/kernel_config.hpp"
#include "uhmm/page_copy.hpp"

namespace uhmm::kernels {

inline constexpr std::size_t kWordsPerPage = kCopyPageBytes / 8;

struct PageList {
  static constexpr std::size_t kMaxPages = 240;  // 240 * 16 + 4 bytes < 4 KiB
  std::uint64_t dst[kMaxPages];
  std::uint64_t src[kMaxPages];  // 0: zero-fill dst
  std::uint32_t count = 0;
};

struct GatherScatterPages {
  PageList list;

  UHMM_HOST_DEVICE std::size_t size() const { return std::size_t{list.count} * kWordsPerPage; }

  UHMM_HOST_DEVICE void operator()(std::size_t i) const {
    const std::size_t page = i / kWordsPerPage;
    const std::size_t word = i % kWordsPerPage;
    // One word per call: lane `word` of kWordsPerPage lanes.
    if (list.src[page] == 0)
      zero_page(list.dst[page], word, kWordsPerPage);
    else
      copy_page(list.dst[page], list.src[page], word, kWordsPerPage);
  }
};

}  // namespace uhmm::kernels
