// Batched page copy and zero-fill bodies: one source for the GPU copy kernels
// (one thread block per page) and the cpu backend (one call per page).
#pragma once

#include <cstddef>
#include <cstdint>

#include "uhmm/kernel_config.hpp"

namespace uhmm::kernels {

inline constexpr std::size_t kCopyPageBytes = 4096;

// Copies the words of one page; `lane`/`lanes` split it across threads.
UHMM_HOST_DEVICE UHMM_FORCE_INLINE void copy_page(std::uint64_t dst, std::uint64_t src, std::size_t lane,
                                       std::size_t lanes) {
  auto* d = reinterpret_cast<std::uint64_t*>(UHMM_DEVICE_ADDRESS(static_cast<std::uintptr_t>(dst)));
  const auto* s = reinterpret_cast<const std::uint64_t*>(UHMM_DEVICE_ADDRESS(static_cast<std::uintptr_t>(src)));
  for (std::size_t w = lane; w < kCopyPageBytes / 8; w += lanes) d[w] = s[w];
}

UHMM_HOST_DEVICE UHMM_FORCE_INLINE void zero_page(std::uint64_t dst, std::size_t lane, std::size_t lanes) {
  auto* d = reinterpret_cast<std::uint64_t*>(UHMM_DEVICE_ADDRESS(static_cast<std::uintptr_t>(dst)));
  for (std::size_t w = lane; w < kCopyPageBytes / 8; w += lanes) d[w] = 0;
}

}  // namespace uhmm::kernels
