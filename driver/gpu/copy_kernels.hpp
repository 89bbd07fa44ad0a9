// The GPU copy kernels, as host-callable functions, so that gpu_backend.cpp
// stays plain C++: copy_kernels.cu (built by nvcc for CUDA, by the host
// compiler for the emulated runtime) or copy_kernels_hip.cpp (HIP: the
// kernels are a code object loaded as a module, so that a device without an
// image is an error code, not an abort).
#pragma once

#include "gpu_runtime.hpp"
#include "uhmm/page_gather.hpp"

namespace uhmm::gpu {

// The copy kernels as loaded on one device.
struct CopyKernels;

// Loads the copy kernels on the current device: gpuSuccess and *out, or the
// runtime's error (no kernel image for this architecture) and null.
gpuError_t load_copy_kernels(CopyKernels** out) noexcept;
// Releases them (the current device must be theirs); null is ignored.
void unload_copy_kernels(CopyKernels* kernels) noexcept;

// Enqueues one gather/scatter launch over `list` (page_gather.hpp) on the
// current device; returns the launch's error (gpuSuccess when enqueued).
gpuError_t enqueue_gather_scatter(CopyKernels& kernels, gpuStream_t stream, const kernels::PageList& list) noexcept;

}  // namespace uhmm::gpu
