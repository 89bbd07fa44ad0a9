// Portability for code written once for nvcc, hipcc and the host compiler.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define UHMM_HOST_DEVICE __host__ __device__
#define UHMM_FORCE_INLINE __forceinline__
#define UHMM_DEVICE_CODE_COMPILER 1
#else
#define UHMM_HOST_DEVICE
#define UHMM_FORCE_INLINE inline __attribute__((always_inline))
#define UHMM_DEVICE_CODE_COMPILER 0
#endif

#if (defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__))
#define UHMM_IN_DEVICE_CODE 1
#else
#define UHMM_IN_DEVICE_CODE 0
#endif

// UHMM_DEVICE_ADDRESS(a): where the executing code reaches device address `a`:
// `a` itself on a GPU and on the cpu backend. Under the emulated runtime
// (tests only, driver/gpu/emulated/) device memory is a reservation the host
// cannot touch, and kernels reach it through the runtime's second mapping.
#if UHMM_EMULATED_DEVICE_CODE
#include "uhmm_emulated_device_code.hpp"  // not installed: the emulated runtime's tests only
#else
#define UHMM_DEVICE_ADDRESS(a) (a)
#endif

// 1 where kernels run as a GPU runs them (nvcc / hipcc device code, or device
// code for the emulated runtime): a fault there is a trap, the runtime's
// sticky error. 0 for host-compiled kernels (the cpu backend), which throw.
#if UHMM_IN_DEVICE_CODE || UHMM_EMULATED_DEVICE_CODE
#define UHMM_GPU_KERNEL_CODE 1
#else
#define UHMM_GPU_KERNEL_CODE 0
#endif
