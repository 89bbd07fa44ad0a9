// What device code compiled for the emulated runtime (UHMM_EMULATED_DEVICE_CODE=1,
// tests only) needs from it: the translation of device addresses to the
// runtime's second mapping, and the kernel launch. Included by
// kernels/uhmm/kernel_config.hpp under that macro; never installed.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

struct uhmmEmulatedStream;

// The runtime's calls are exported from its library (the build hides symbols by default).
#pragma GCC visibility push(default)
extern "C" {
// Device memory of every emulated device: [lo, lo + bytes) for the host (no
// access), reached by kernels and the copy engine at address + shift. Set once
// when the runtime starts, before any kernel can run.
extern std::atomic<std::uintptr_t> uhmm_emulated_device_lo;
extern std::atomic<std::uintptr_t> uhmm_emulated_device_bytes;
extern std::atomic<std::uintptr_t> uhmm_emulated_device_shift;
// Set when there is more than one device: each device address a kernel
// touches is then checked for peer access (uhmm_emulated_device_checked).
extern std::atomic<bool> uhmm_emulated_check_peers;
// Inside a kernel, another device's memory without peer access enabled fails
// the kernel with an illegal address; otherwise the address's engine view.
std::uintptr_t uhmm_emulated_device_checked(std::uintptr_t address);
// An address outside device memory: inside a kernel it must be mapped pinned
// host memory (else the kernel fails with an illegal address); elsewhere
// (host code, the cpu backend) it is returned as is.
std::uintptr_t uhmm_emulated_outside_device(std::uintptr_t address);
// Queues run(functor copy, n) on `stream`; returns the error (0: queued) and
// sets the thread's last error as a failed launch does.
int uhmm_emulated_launch(uhmmEmulatedStream* stream, std::size_t n,
                         void (*run)(const void* functor, std::size_t n), const void* functor,
                         std::size_t bytes, std::size_t align);
int uhmm_emulated_get_last_error(void);
// emuGetDevice / emuSetDevice, for uhmm::launch's NativeDeviceScope.
int uhmm_emulated_get_device(int* device);
int uhmm_emulated_set_device(int device);
const char* uhmm_emulated_error_name(int error);
const char* uhmm_emulated_error_string(int error);
}
#pragma GCC visibility pop

inline std::uintptr_t uhmm_emulated_device_address(std::uintptr_t address) {
  const std::uintptr_t lo = uhmm_emulated_device_lo.load(std::memory_order_relaxed);
  if (address - lo < uhmm_emulated_device_bytes.load(std::memory_order_relaxed)) {
    if (uhmm_emulated_check_peers.load(std::memory_order_relaxed)) return uhmm_emulated_device_checked(address);
    return address + uhmm_emulated_device_shift.load(std::memory_order_relaxed);
  }
  return uhmm_emulated_outside_device(address);
}

#if UHMM_EMULATED_DEVICE_CODE
#define UHMM_DEVICE_ADDRESS(a) ::uhmm_emulated_device_address(a)
#endif
