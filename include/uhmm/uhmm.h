/* uhmm's C API, named after CUDA's managed-memory API so that porting is a
 * rename: cudaMallocManaged -> uhmmMallocManaged, cudaMemAdvise ->
 * uhmmMemAdvise, cudaErrorInvalidValue -> uhmmErrorInvalidValue, and so on
 * (docs/user-guide.md, "Porting from CUDA and HIP", has the whole table).
 *
 * Every call works on a process-wide default context, created on first use
 * from the UHMM_* environment variables, as CUDA's primary context
 * (uhmm/default_context.hpp reaches the C++ uhmm::Context behind it). Every
 * call returns uhmmSuccess or an error code; a failing call changes nothing
 * and records its error for uhmmGetLastError, per thread, as CUDA does. Bad
 * arguments never abort the process.
 *
 * C11 and C++. Thread safe; the current device is per thread. */
#ifndef UHMM_UHMM_H
#define UHMM_UHMM_H

#include <stddef.h>

#if defined(UHMM_BUILDING_LIBRARY)
#define UHMM_C_API __attribute__((visibility("default")))
#else
#define UHMM_C_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* CUDA's numbers where CUDA has the error, so that logs read alike. */
typedef enum uhmmError {
  uhmmSuccess = 0,
  uhmmErrorInvalidValue = 1,          /* a bad pointer, size, flag or advice; a double free */
  uhmmErrorMemoryAllocation = 2,      /* host or device memory is exhausted */
  uhmmErrorInitializationError = 3,   /* the default context could not start (its message says why) */
  uhmmErrorInvalidDevice = 101,       /* no such device */
  uhmmErrorOperatingSystem = 304,     /* an OS call failed unexpectedly */
  uhmmErrorInvalidResourceHandle = 400, /* a stream that does not exist (destroyed, or never created) */
  uhmmErrorIllegalAddress = 700,      /* a kernel touched a page outside its spans */
  uhmmErrorNotPermitted = 800,        /* the range is in use (being freed by another thread) */
  uhmmErrorNotSupported = 801,        /* a valid request uhmm does not implement */
  uhmmErrorDeviceFailure = 1000,      /* a device operation (copy, stream) failed; no CUDA equivalent */
  uhmmErrorUnknown = 999
} uhmmError_t;

/* The host as a location, as cudaCpuDeviceId. */
#define uhmmCpuDeviceId (-1)
/* "No single location", as cudaInvalidDeviceId (attribute queries). */
#define uhmmInvalidDeviceId (-2)

/* uhmmMallocManaged flags. Only global attachment exists in uhmm: every
 * device and the host may use a managed range. */
#define uhmmMemAttachGlobal 0x01u
#define uhmmMemAttachHost 0x02u /* uhmmErrorNotSupported */

typedef enum uhmmMemoryAdvise {
  uhmmMemAdviseSetReadMostly = 1,
  uhmmMemAdviseUnsetReadMostly = 2,
  uhmmMemAdviseSetPreferredLocation = 3,
  uhmmMemAdviseUnsetPreferredLocation = 4,
  uhmmMemAdviseSetAccessedBy = 5,
  uhmmMemAdviseUnsetAccessedBy = 6
} uhmmMemoryAdvise;

typedef enum uhmmMemRangeAttribute {
  uhmmMemRangeAttributeReadMostly = 1,           /* int: 1 when every page is read-mostly */
  uhmmMemRangeAttributePreferredLocation = 2,    /* int: a device, uhmmCpuDeviceId, or uhmmInvalidDeviceId */
  uhmmMemRangeAttributeAccessedBy = 3,           /* int[]: the devices, then uhmmInvalidDeviceId */
  uhmmMemRangeAttributeLastPrefetchLocation = 4  /* int: as PreferredLocation, of the last prefetch */
} uhmmMemRangeAttribute;

/* A location as CUDA 12.2+ names one (cudaMemLocation): the calls taking it
 * are the _v2 ones below, as CUDA 13's cudaMemPrefetchAsync and cudaMemAdvise. */
typedef enum uhmmMemLocationType {
  uhmmMemLocationTypeInvalid = 0,
  uhmmMemLocationTypeDevice = 1,            /* id: a device ordinal */
  uhmmMemLocationTypeHost = 2,              /* id ignored */
  uhmmMemLocationTypeHostNuma = 3,          /* uhmmErrorNotSupported: uhmm does not place pages on NUMA nodes */
  uhmmMemLocationTypeHostNumaCurrent = 4    /* the host */
} uhmmMemLocationType;

typedef struct uhmmMemLocation {
  uhmmMemLocationType type;
  int id;
} uhmmMemLocation;

/* An ordered queue of prefetches; 0 (NULL) is the current device's default stream. */
typedef struct uhmmStream_st* uhmmStream_t;

/* Errors. uhmmGetLastError returns the calling thread's last error and resets
 * it to uhmmSuccess; uhmmPeekAtLastError leaves it. */
UHMM_C_API uhmmError_t uhmmGetLastError(void);
UHMM_C_API uhmmError_t uhmmPeekAtLastError(void);
UHMM_C_API const char* uhmmGetErrorName(uhmmError_t error);
UHMM_C_API const char* uhmmGetErrorString(uhmmError_t error);
/* What uhmm said about the calling thread's last failing call ("" if none;
 * uhmmGetLastError does not clear it):
 * the C++ error's message, naming the argument at fault. No CUDA equivalent. */
UHMM_C_API const char* uhmmGetLastErrorMessage(void);

/* Managed memory: `bytes` rounded up to whole pages, reads as zeros first. */
UHMM_C_API uhmmError_t uhmmMallocManaged(void** ptr, size_t bytes, unsigned int flags);
/* Frees what uhmmMallocManaged returned; NULL is a no-op, as cudaFree(0). */
UHMM_C_API uhmmError_t uhmmFree(void* ptr);

/* [ptr, ptr + bytes) rounded out to whole pages, inside one managed range.
 * dstDevice: a device, or uhmmCpuDeviceId. Queued on `stream`; failures
 * surface at its synchronization. */
UHMM_C_API uhmmError_t uhmmMemPrefetchAsync(const void* ptr, size_t bytes, int dstDevice, uhmmStream_t stream);
/* device: the location for SetPreferredLocation (a device or
 * uhmmCpuDeviceId); the device for (Un)SetAccessedBy; ignored otherwise. */
UHMM_C_API uhmmError_t uhmmMemAdvise(const void* ptr, size_t bytes, uhmmMemoryAdvise advice, int device);
/* The same with a location (CUDA 13's signatures, CUDA 12.2's _v2 names);
 * flags must be 0. */
UHMM_C_API uhmmError_t uhmmMemPrefetchAsync_v2(const void* ptr, size_t bytes, uhmmMemLocation location,
                                               unsigned int flags, uhmmStream_t stream);
UHMM_C_API uhmmError_t uhmmMemAdvise_v2(const void* ptr, size_t bytes, uhmmMemoryAdvise advice,
                                        uhmmMemLocation location);
UHMM_C_API uhmmError_t uhmmMemRangeGetAttribute(void* data, size_t dataSize, uhmmMemRangeAttribute attribute,
                                                const void* ptr, size_t bytes);

/* Streams belong to the device current when they are created. */
UHMM_C_API uhmmError_t uhmmStreamCreate(uhmmStream_t* stream);
/* Waits for the stream's work, then destroys it. */
UHMM_C_API uhmmError_t uhmmStreamDestroy(uhmmStream_t stream);
/* Waits for the stream's work; returns the first failure among it. */
UHMM_C_API uhmmError_t uhmmStreamSynchronize(uhmmStream_t stream);
/* Every stream of the calling process, the default ones included. */
UHMM_C_API uhmmError_t uhmmDeviceSynchronize(void);

/* Destroys the default context: every managed range allocated through it is
 * freed and every stream destroyed (as cudaDeviceReset). The next call
 * creates a new one. No other thread may use uhmm memory meanwhile. */
UHMM_C_API uhmmError_t uhmmDeviceReset(void);

UHMM_C_API uhmmError_t uhmmGetDeviceCount(int* count);
UHMM_C_API uhmmError_t uhmmSetDevice(int device);
UHMM_C_API uhmmError_t uhmmGetDevice(int* device);

#ifdef __cplusplus
}
#endif

#endif
