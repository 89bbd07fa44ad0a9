// The HIP copy kernel, built by hipcc --genco into a code object bundle that
// the hip plugin embeds and loads with hipModuleLoadData
// (copy_kernels_hip.cpp): a device the bundle has no code object for is then
// an error code there, instead of the abort at the process's first HIP call
// that a registered fat binary without it causes (issue 16, defect 10).
#include <hip/hip_runtime.h>

#include <cstddef>

#include "uhmm/page_gather.hpp"

// By name, for hipModuleGetFunction: the grid-stride loop of uhmm::launch.
extern "C" __global__ void uhmm_gather_scatter(std::size_t n, uhmm::kernels::GatherScatterPages body) {
  const std::size_t stride = std::size_t{gridDim.x} * blockDim.x;
  for (std::size_t i = std::size_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride) body(i);
}
