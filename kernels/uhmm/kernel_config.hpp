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
