// Built by nvcc for the cuda plugin, and by the host compiler for the
// emulated plugin (tests only). The kernels are part of the plugin's image
// (the HIP plugin loads them as a module instead: copy_kernels_hip.cpp).
#include <new>

#include "copy_kernels.hpp"
#include "uhmm/launch.hpp"

namespace uhmm::gpu {

// Nothing to hold: the runtime registered the kernels with the plugin.
struct CopyKernels {};

gpuError_t load_copy_kernels(CopyKernels** out) noexcept {
  *out = nullptr;
#if UHMM_GPU_EMULATED
  const gpuError_t error = emuKernelImageLoadable();
#else
  cudaFuncAttributes attributes{};
  const gpuError_t error = cudaFuncGetAttributes(&attributes, index_space_kernel<kernels::GatherScatterPages>);
#endif
  if (error != gpuSuccess) return error;
  *out = new (std::nothrow) CopyKernels;
  return *out != nullptr ? gpuSuccess : gpuErrorMemoryAllocation;
}

void unload_copy_kernels(CopyKernels* kernels) noexcept { delete kernels; }

gpuError_t enqueue_gather_scatter(CopyKernels&, gpuStream_t stream, const kernels::PageList& list) noexcept {
  const kernels::GatherScatterPages body{list};
  // An earlier error left on this thread (the application's own call) is not this launch's.
  (void)gpuGetLastError();
  launch(stream, body.size(), body);
  return gpuGetLastError();
}

}  // namespace uhmm::gpu
