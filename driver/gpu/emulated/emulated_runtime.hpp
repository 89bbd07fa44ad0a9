// The emulated GPU runtime: the calls of the CUDA / HIP runtime that the GPU
// plugin makes (gpu_runtime.hpp), implemented on the host for tests, so that
// the plugin's source runs in CI unchanged. What it models and what it cannot:
// driver/gpu/README.md. Error codes keep CUDA's numbers.
#pragma once

#include <cstddef>

#include "uhmm_emulated_device_code.hpp"

#pragma GCC visibility push(default)
extern "C" {

enum emuError_t {
  emuSuccess = 0,
  emuErrorInvalidValue = 1,
  emuErrorMemoryAllocation = 2,
  emuErrorInitializationError = 3,
  emuErrorInsufficientDriver = 35,
  emuErrorRuntimeUnloading = 4,
  emuErrorDevicesUnavailable = 46,
  emuErrorNoDevice = 100,
  emuErrorInvalidDevice = 101,
  emuErrorNoKernelImageForDevice = 209,
  emuErrorPeerAccessUnsupported = 217,
  emuErrorInvalidResourceHandle = 400,
  emuErrorNotReady = 600,
  emuErrorIllegalAddress = 700,
  emuErrorPeerAccessAlreadyEnabled = 704,
  emuErrorLaunchFailure = 719,
  emuErrorNotPermitted = 800,
};

using emuStream_t = uhmmEmulatedStream*;
using emuEvent_t = struct uhmmEmulatedEvent*;
using emuHostFn_t = void (*)(void* user);

struct emuDeviceProp {
  char name[256];
  std::size_t totalGlobalMem;
  int pciDomainID;
  int pciBusID;
  int pciDeviceID;
};

enum : unsigned {
  emuStreamDefault = 0,
  emuStreamNonBlocking = 1,
  emuEventDefault = 0,
  emuEventDisableTiming = 2,
  emuHostAllocDefault = 0,
  emuHostAllocPortable = 1,
  emuHostAllocMapped = 2,
};
enum emuMemcpyKind { emuMemcpyDefault = 4 };
// The runtime version the emulated plugin is "built with" (CUDART_VERSION's form).
#define EMU_RUNTIME_VERSION 13000
enum emuMemoryType { emuMemoryTypeUnregistered = 0, emuMemoryTypeHost = 1, emuMemoryTypeDevice = 2 };
struct emuPointerAttributes {
  emuMemoryType type;
  int device;  // the device of device memory; -1 otherwise
  void* devicePointer;
  void* hostPointer;
};

emuError_t emuGetDeviceCount(int* count);
emuError_t emuDriverGetVersion(int* version);
emuError_t emuGetDeviceProperties(emuDeviceProp* props, int device);
emuError_t emuDeviceGetPCIBusId(char* bus_id, int length, int device);
emuError_t emuSetDevice(int device);
emuError_t emuGetDevice(int* device);
emuError_t emuMemGetInfo(std::size_t* free_bytes, std::size_t* total_bytes);
emuError_t emuMalloc(void** out, std::size_t bytes);
emuError_t emuFree(void* p);
emuError_t emuHostAlloc(void** out, std::size_t bytes, unsigned flags);
emuError_t emuFreeHost(void* p);
emuError_t emuHostGetDevicePointer(void** device, void* host, unsigned flags);
emuError_t emuStreamCreateWithFlags(emuStream_t* out, unsigned flags);
emuError_t emuStreamDestroy(emuStream_t stream);
emuError_t emuStreamSynchronize(emuStream_t stream);
emuError_t emuStreamQuery(emuStream_t stream);
emuError_t emuStreamWaitEvent(emuStream_t stream, emuEvent_t event, unsigned flags);
emuError_t emuEventCreateWithFlags(emuEvent_t* out, unsigned flags);
emuError_t emuEventDestroy(emuEvent_t event);
emuError_t emuEventRecord(emuEvent_t event, emuStream_t stream);
emuError_t emuEventSynchronize(emuEvent_t event);
emuError_t emuEventQuery(emuEvent_t event);
emuError_t emuMemcpyAsync(void* dst, const void* src, std::size_t bytes, emuMemcpyKind kind,
                          emuStream_t stream);
emuError_t emuMemsetAsync(void* dst, int value, std::size_t bytes, emuStream_t stream);
emuError_t emuLaunchHostFunc(emuStream_t stream, emuHostFn_t fn, void* user);
emuError_t emuDeviceSynchronize(void);
// Peer access (cudaDeviceCanAccessPeer / cudaDeviceEnablePeerAccess): kernels
// of the current device reach `peer`'s memory only once it is enabled (else
// an illegal address), and copies between the two go direct instead of
// through the host (counted apart). Enabling creates peer's context.
emuError_t emuDeviceCanAccessPeer(int* can_access, int device, int peer);
emuError_t emuDeviceEnablePeerAccess(int peer, unsigned flags);
emuError_t emuPointerGetAttributes(emuPointerAttributes* attributes, const void* p);
const char* emuGetErrorName(emuError_t error);
const char* emuGetErrorString(emuError_t error);
emuError_t emuGetLastError(void);
emuError_t emuPeekAtLastError(void);
// Whether the copy kernels have an image for the current device (always, unless a test says otherwise).
emuError_t emuKernelImageLoadable(void);

// ---- test hooks (no vendor counterpart) ----
// Every queued operation waits a pseudo-random 0..max_us microseconds first,
// so that streams interleave differently (also UHMM_EMULATED_DELAY_US and
// UHMM_EMULATED_SEED in the environment).
void emuTestSetDelay(unsigned max_us, unsigned seed);
// The device's memory as other processes would leave it: allocations beyond
// `bytes` in all fail with emuErrorMemoryAllocation.
void emuTestSetDeviceLimit(int device, std::size_t bytes);
// The next operation queued on `stream` fails when it runs, with `error`,
// which is sticky (the device is lost) or reported once by the stream.
void emuTestFailNextOperation(emuStream_t stream, emuError_t error, int sticky);
// Clears the device's sticky error (as cudaDeviceReset, without the reset).
void emuTestClearStickyError(int device);
// Whether copy kernels "load" (models a plugin without an image for the device).
void emuTestSetKernelImage(int loadable);
// Counts of what ran: operations by kind (see emulated_runtime.cpp).
// peer_direct / peer_staged: copies between two devices' memory with and
// without peer access (the vendors stage the latter through host memory).
struct emuTestCounts {
  unsigned long long copies, memsets, kernels, host_functions, event_waits, frees, peer_direct, peer_staged;
};
emuTestCounts emuTestGetCounts(void);
// Alignment of allocations of 2 MiB and more (2 MiB unless a test models a
// runtime that aligns them less; 256 B at least).
void emuTestSetLargeAlignment(std::size_t bytes);
// Bytes of device memory allocated on `device` (gpuMalloc, not yet freed).
std::size_t emuTestDeviceUsed(int device);
// Called by every gpuMalloc before it allocates (null: none), on the caller's
// thread: a test holds an allocation "in flight" there.
void emuTestSetMallocHook(void (*hook)(void* user), void* user);
// Contexts: a device's primary context is created by the first call that
// needs one on it (gpuSetDevice included, as CUDA 12 does); queries of
// properties and bus ids need none. Counts the contexts created per device.
unsigned emuTestContextsCreated(int device);
// Forgets every device's context (as in a fresh process), so that the next
// call needing one creates and counts it again.
void emuTestForgetContexts(void);
// A device no context can be created on (exclusive-process mode, held by
// another process): calls that need one fail with emuErrorDevicesUnavailable.
void emuTestSetDeviceUnusable(int device, int unusable);
// Whether `device` can access `peer` (emuDeviceCanAccessPeer; every pair can
// unless a test says otherwise, as over a PCIe switch that forbids it).
void emuTestSetPeerCapable(int device, int peer, int capable);
// Forgets every enabled peer access (as in a fresh process).
void emuTestForgetPeerAccess(void);
// A driver older than the runtime (a static CUDA 13 runtime on a CUDA 12
// driver): every call fails with emuErrorInsufficientDriver, and
// emuDriverGetVersion reports 12040 instead of EMU_RUNTIME_VERSION.
void emuTestSetDriverTooOld(int too_old);
}
#pragma GCC visibility pop
