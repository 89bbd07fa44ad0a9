// uhmm::launch(stream, n, functor): runs functor(i) for every i in [0, n), so a
// kernel body is written once. Under nvcc / hipcc it is a grid-stride kernel
// launched with <<<>>> on the stream; under the host compiler it runs in the
// caller on a HostStream (the cpu backend slices work over threads itself and
// calls the same functors). The functor is copied by value to the device, so it
// must be trivially copyable and hold only device-reachable pointers.
#pragma once

#include <cstddef>

#include "uhmm/kernel_config.hpp"

namespace uhmm {

#if UHMM_DEVICE_CODE_COMPILER

inline constexpr unsigned kLaunchThreads = 256;
inline constexpr std::size_t kLaunchMaxBlocks = std::size_t{1} << 16;

template <class F>
__global__ void index_space_kernel(std::size_t n, F f) {
  const std::size_t stride = std::size_t{gridDim.x} * blockDim.x;
  for (std::size_t i = std::size_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride) f(i);
}

// Enqueues the launch; the caller checks the runtime's last error.
template <class Stream, class F>
void launch(Stream stream, std::size_t n, const F& f) {
  if (n == 0) return;
  std::size_t blocks = (n + kLaunchThreads - 1) / kLaunchThreads;
  if (blocks > kLaunchMaxBlocks) blocks = kLaunchMaxBlocks;
  index_space_kernel<F><<<static_cast<unsigned>(blocks), kLaunchThreads, 0, stream>>>(n, f);
}

#else

// The host compiler's stream: work runs in the caller, in index order.
struct HostStream {};

template <class F>
void launch(HostStream, std::size_t n, const F& f) {
  for (std::size_t i = 0; i < n; ++i) f(i);
}

#endif

}  // namespace uhmm
