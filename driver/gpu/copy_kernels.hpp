// The GPU copy kernels, as host-callable functions: the one translation unit
// built by nvcc / hipcc (copy_kernels.cu) so that gpu_backend.cpp stays plain C++.
#pragma once

#include "gpu_runtime.hpp"
#include "uhmm/page_gather.hpp"

namespace uhmm::gpu {

// Enqueues one gather/scatter launch over `list` (page_gather.hpp) on the
// current device; returns the launch's error (gpuSuccess when enqueued).
gpuError_t enqueue_gather_scatter(gpuStream_t stream, const kernels::PageList& list) noexcept;

// gpuSuccess when this plugin carries kernel code the current device can run;
// otherwise the runtime's error (no kernel image for this architecture).
gpuError_t copy_kernels_loadable() noexcept;

}  // namespace uhmm::gpu
