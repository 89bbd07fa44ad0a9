// The vendor shim: the few CUDA / HIP runtime calls the GPU backend makes, under
// one set of gpu* names, so gpu_backend.cpp is written once and compiled twice
// (UHMM_GPU_HIP=0 for CUDA, 1 for HIP). The two runtime APIs match call for call.
// A third build (UHMM_GPU_EMULATED=1, tests only) runs the plugin on the
// emulated runtime of driver/gpu/emulated/, which matches them too.
#pragma once

#if UHMM_GPU_EMULATED
#include "emulated/emulated_runtime.hpp"
#elif UHMM_GPU_HIP
#ifndef __HIP_PLATFORM_AMD__
#define __HIP_PLATFORM_AMD__ 1
#endif
#include <hip/hip_runtime_api.h>
#else
#include <cuda_runtime_api.h>
#endif

namespace uhmm::gpu {

#if UHMM_GPU_EMULATED
// The emulated runtime (tests only; driver/gpu/emulated/): the third build of the plugin.
inline constexpr const char* kBackendName = "emulated";
using gpuError_t = emuError_t;
using gpuStream_t = emuStream_t;
using gpuEvent_t = emuEvent_t;
using gpuDeviceProp = emuDeviceProp;
using gpuPointerAttributes = emuPointerAttributes;
inline constexpr gpuError_t gpuSuccess = emuSuccess;
inline constexpr gpuError_t gpuErrorPeerAccessAlreadyEnabled = emuErrorPeerAccessAlreadyEnabled;
inline constexpr gpuError_t gpuErrorInsufficientDriver = emuErrorInsufficientDriver;
inline constexpr int kRuntimeVersion = EMU_RUNTIME_VERSION;
inline constexpr gpuError_t gpuErrorMemoryAllocation = emuErrorMemoryAllocation;
inline constexpr gpuError_t gpuErrorNoDevice = emuErrorNoDevice;
inline constexpr gpuError_t gpuErrorRuntimeUnloading = emuErrorRuntimeUnloading;
inline constexpr gpuError_t gpuErrorNotReady = emuErrorNotReady;
inline constexpr unsigned gpuStreamNonBlocking = emuStreamNonBlocking;
inline constexpr unsigned gpuEventDisableTiming = emuEventDisableTiming;
inline constexpr unsigned gpuHostAllocPortableMapped = emuHostAllocPortable | emuHostAllocMapped;
inline constexpr auto gpuMemcpyDefault = emuMemcpyDefault;
#define UHMM_GPU_API(name) emu##name
#elif UHMM_GPU_HIP
inline constexpr const char* kBackendName = "hip";
using gpuError_t = hipError_t;
using gpuStream_t = hipStream_t;
using gpuEvent_t = hipEvent_t;
using gpuDeviceProp = hipDeviceProp_t;
using gpuPointerAttributes = hipPointerAttribute_t;
inline constexpr gpuError_t gpuSuccess = hipSuccess;
inline constexpr gpuError_t gpuErrorPeerAccessAlreadyEnabled = hipErrorPeerAccessAlreadyEnabled;
inline constexpr gpuError_t gpuErrorInsufficientDriver = hipErrorInsufficientDriver;
inline constexpr int kRuntimeVersion = HIP_VERSION;
inline constexpr gpuError_t gpuErrorMemoryAllocation = hipErrorOutOfMemory;
inline constexpr gpuError_t gpuErrorNoDevice = hipErrorNoDevice;
inline constexpr gpuError_t gpuErrorRuntimeUnloading = hipErrorDeinitialized;
inline constexpr gpuError_t gpuErrorNotReady = hipErrorNotReady;
inline constexpr unsigned gpuStreamNonBlocking = hipStreamNonBlocking;
inline constexpr unsigned gpuEventDisableTiming = hipEventDisableTiming;
inline constexpr unsigned gpuHostAllocPortableMapped = hipHostMallocPortable | hipHostMallocMapped;
inline constexpr auto gpuMemcpyDefault = hipMemcpyDefault;
#define UHMM_GPU_API(name) hip##name
#else
inline constexpr const char* kBackendName = "cuda";
using gpuError_t = cudaError_t;
using gpuStream_t = cudaStream_t;
using gpuEvent_t = cudaEvent_t;
using gpuDeviceProp = cudaDeviceProp;
using gpuPointerAttributes = cudaPointerAttributes;
inline constexpr gpuError_t gpuSuccess = cudaSuccess;
inline constexpr gpuError_t gpuErrorPeerAccessAlreadyEnabled = cudaErrorPeerAccessAlreadyEnabled;
inline constexpr gpuError_t gpuErrorInsufficientDriver = cudaErrorInsufficientDriver;
inline constexpr int kRuntimeVersion = CUDART_VERSION;  // the static runtime linked into the plugin
inline constexpr gpuError_t gpuErrorMemoryAllocation = cudaErrorMemoryAllocation;
inline constexpr gpuError_t gpuErrorNoDevice = cudaErrorNoDevice;
inline constexpr gpuError_t gpuErrorRuntimeUnloading = cudaErrorCudartUnloading;
inline constexpr gpuError_t gpuErrorNotReady = cudaErrorNotReady;
inline constexpr unsigned gpuStreamNonBlocking = cudaStreamNonBlocking;
inline constexpr unsigned gpuEventDisableTiming = cudaEventDisableTiming;
inline constexpr unsigned gpuHostAllocPortableMapped = cudaHostAllocPortable | cudaHostAllocMapped;
inline constexpr auto gpuMemcpyDefault = cudaMemcpyDefault;
#define UHMM_GPU_API(name) cuda##name
#endif

// gpuX(...) is cudaX(...) or hipX(...).
#define gpuGetDeviceCount UHMM_GPU_API(GetDeviceCount)
#define gpuDriverGetVersion UHMM_GPU_API(DriverGetVersion)
#define gpuGetDeviceProperties UHMM_GPU_API(GetDeviceProperties)
#define gpuDeviceGetPCIBusId UHMM_GPU_API(DeviceGetPCIBusId)
#define gpuSetDevice UHMM_GPU_API(SetDevice)
#define gpuGetDevice UHMM_GPU_API(GetDevice)
#define gpuMemGetInfo UHMM_GPU_API(MemGetInfo)
#define gpuMalloc UHMM_GPU_API(Malloc)
#define gpuFree UHMM_GPU_API(Free)
#define gpuStreamCreateWithFlags UHMM_GPU_API(StreamCreateWithFlags)
#define gpuStreamDestroy UHMM_GPU_API(StreamDestroy)
#define gpuStreamSynchronize UHMM_GPU_API(StreamSynchronize)
#define gpuStreamWaitEvent UHMM_GPU_API(StreamWaitEvent)
#define gpuEventCreateWithFlags UHMM_GPU_API(EventCreateWithFlags)
#define gpuEventDestroy UHMM_GPU_API(EventDestroy)
#define gpuEventRecord UHMM_GPU_API(EventRecord)
#define gpuEventSynchronize UHMM_GPU_API(EventSynchronize)
#define gpuMemcpyAsync UHMM_GPU_API(MemcpyAsync)
#define gpuMemsetAsync UHMM_GPU_API(MemsetAsync)
#define gpuGetErrorName UHMM_GPU_API(GetErrorName)
#define gpuGetErrorString UHMM_GPU_API(GetErrorString)
#define gpuGetLastError UHMM_GPU_API(GetLastError)
#define gpuDeviceCanAccessPeer UHMM_GPU_API(DeviceCanAccessPeer)
#define gpuDeviceEnablePeerAccess UHMM_GPU_API(DeviceEnablePeerAccess)
#define gpuPointerGetAttributes UHMM_GPU_API(PointerGetAttributes)
#if UHMM_GPU_EMULATED
#define gpuHostAlloc emuHostAlloc
#define gpuFreeHost emuFreeHost
#elif UHMM_GPU_HIP
#define gpuHostAlloc hipHostMalloc
#define gpuFreeHost hipHostFree
#else
#define gpuHostAlloc cudaHostAlloc
#define gpuFreeHost cudaFreeHost
#endif

// No stream host functions (cudaLaunchHostFunc / hipStreamAddCallback): they
// share one runtime thread and must not wait on anything that needs the
// runtime, which a staged page copy that faults does (issue 16, defect 2).
// Staging is filled and drained by the calling thread (gpu_backend.cpp).

}  // namespace uhmm::gpu
