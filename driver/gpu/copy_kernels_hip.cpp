// The hip plugin's copy kernels: copy_kernels_hip_module.cu's code object
// bundle, embedded here and loaded per device with hipModuleLoadData. ROCm
// treats a registered fat binary without a code object for some device as
// fatal at the first HIP call (the auto probe), so the plugin registers none:
// a device the bundle lacks (gfx942, gfx908, ...) only loses the kernel path
// (issue 16, defect 10).
#include <new>

#include "copy_kernels.hpp"
#include "uhmm/launch.hpp"

// The bundle, placed in .rodata by the assembler (UHMM_HIP_COPY_KERNELS_IMAGE: its path).
__asm__(".pushsection .rodata\n"
        ".balign 64\n"
        ".hidden uhmm_hip_copy_kernels_image\n"
        ".globl uhmm_hip_copy_kernels_image\n"
        "uhmm_hip_copy_kernels_image:\n"
        ".incbin \"" UHMM_HIP_COPY_KERNELS_IMAGE "\"\n"
        ".byte 0\n"
        ".popsection\n");
extern "C" const unsigned char uhmm_hip_copy_kernels_image[];

namespace uhmm::gpu {

struct CopyKernels {
  hipModule_t module = nullptr;
  hipFunction_t gather_scatter = nullptr;
};

gpuError_t load_copy_kernels(CopyKernels** out) noexcept {
  *out = nullptr;
  auto* kernels = new (std::nothrow) CopyKernels;
  if (kernels == nullptr) return gpuErrorMemoryAllocation;
  hipError_t error = hipModuleLoadData(&kernels->module, uhmm_hip_copy_kernels_image);
  if (error == hipSuccess) error = hipModuleGetFunction(&kernels->gather_scatter, kernels->module, "uhmm_gather_scatter");
  if (error != hipSuccess) {
    unload_copy_kernels(kernels);
    return error;
  }
  *out = kernels;
  return hipSuccess;
}

void unload_copy_kernels(CopyKernels* kernels) noexcept {
  if (kernels == nullptr) return;
  // A failure (the runtime unloading) leaves nothing to release; it must not linger as the last error.
  if (kernels->module != nullptr && hipModuleUnload(kernels->module) != hipSuccess) (void)hipGetLastError();
  delete kernels;
}

gpuError_t enqueue_gather_scatter(CopyKernels& kernels, gpuStream_t stream, const kernels::PageList& list) noexcept {
  kernels::GatherScatterPages body{list};
  std::size_t n = body.size();
  if (n == 0) return hipSuccess;
  std::size_t blocks = (n + kLaunchThreads - 1) / kLaunchThreads;
  if (blocks > kLaunchMaxBlocks) blocks = kLaunchMaxBlocks;
  void* arguments[] = {&n, &body};
  return hipModuleLaunchKernel(kernels.gather_scatter, static_cast<unsigned>(blocks), 1, 1, kLaunchThreads, 1, 1, 0,
                               stream, arguments, nullptr);
}

}  // namespace uhmm::gpu
