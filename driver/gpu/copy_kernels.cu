// Built by nvcc for the cuda plugin and by hipcc (as HIP) for the hip plugin;
// by the host compiler for the emulated plugin (tests only).
#if UHMM_GPU_HIP
#include <hip/hip_runtime.h>
#endif

#include "copy_kernels.hpp"
#include "uhmm/launch.hpp"

namespace uhmm::gpu {

gpuError_t enqueue_gather_scatter(gpuStream_t stream, const kernels::PageList& list) noexcept {
  const kernels::GatherScatterPages body{list};
  // An earlier error left on this thread (the application's own call) is not this launch's.
  (void)gpuGetLastError();
  launch(stream, body.size(), body);
  return gpuGetLastError();
}

gpuError_t copy_kernels_loadable() noexcept {
#if UHMM_GPU_EMULATED
  return emuKernelImageLoadable();
#elif UHMM_GPU_HIP
  hipFuncAttributes attributes{};
  return hipFuncGetAttributes(&attributes,
                              reinterpret_cast<const void*>(&index_space_kernel<kernels::GatherScatterPages>));
#else
  cudaFuncAttributes attributes{};
  return cudaFuncGetAttributes(&attributes, index_space_kernel<kernels::GatherScatterPages>);
#endif
}

}  // namespace uhmm::gpu
