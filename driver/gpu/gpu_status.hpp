// Every runtime call the GPU backend makes is checked through UHMM_GPU_TRY /
// gpu_status: the failure becomes a Status naming the call, the runtime's error
// name and string, and the call site. Errc::out_of_memory only for the
// runtime's out-of-memory error (the pool and eviction tell it apart).
#pragma once

#include <string>

#include <fmt/format.h>

#include "gpu_runtime.hpp"
#include "uhmm/error.hpp"

namespace uhmm::gpu {

inline Status gpu_status(gpuError_t error, const char* call, const char* file, int line) noexcept {
  if (error == gpuSuccess) return Status::ok();
  // Clear a non-sticky error so that the next unrelated call does not report it.
  (void)gpuGetLastError();
  Status status;
  status.code = error == gpuErrorMemoryAllocation ? Errc::out_of_memory : Errc::device_error;
  try {
    status.message = fmt::format("{}: {} ({}) at {}:{}", call, gpuGetErrorName(error), gpuGetErrorString(error),
                                 file, line);
  } catch (...) {
  }
  return status;
}

// Makes `device` current for one entry point and gives the caller's current
// device back at the end: an application's next allocation or launch on this
// thread must not move to uhmm's device (issue 16, defect 4). Sets it only when
// it differs.
class DeviceScope {
 public:
  explicit DeviceScope(int device) noexcept {
    if (gpuGetDevice(&previous_) != gpuSuccess) {
      (void)gpuGetLastError();
      previous_ = -1;
    }
    if (previous_ == device) return;
    error_ = gpuSetDevice(device);
    restore_ = error_ == gpuSuccess && previous_ >= 0;
  }
  ~DeviceScope() {
    // A failure (the previous device became unusable) must not linger as the thread's last error.
    if (restore_ && gpuSetDevice(previous_) != gpuSuccess) (void)gpuGetLastError();
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;
  // gpuSetDevice's error (gpuSuccess when the device was current already).
  gpuError_t error() const noexcept { return error_; }

 private:
  int previous_ = -1;
  gpuError_t error_ = gpuSuccess;
  bool restore_ = false;
};

}  // namespace uhmm::gpu

#define UHMM_GPU_STATUS(call) ::uhmm::gpu::gpu_status((call), #call, __FILE__, __LINE__)
#define UHMM_GPU_TRY(call)                                   \
  do {                                                       \
    if (::uhmm::Status uhmm_status_ = UHMM_GPU_STATUS(call); \
        !uhmm_status_)                                       \
      return uhmm_status_;                                   \
  } while (0)
// Makes `device` current until the end of the enclosing scope (DeviceScope),
// or returns the failure of gpuSetDevice.
#define UHMM_GPU_ON_DEVICE(device)                                                                   \
  const ::uhmm::gpu::DeviceScope uhmm_device_scope_(device);                                       \
  if (::uhmm::Status uhmm_status_ =                                                                \
          ::uhmm::gpu::gpu_status(uhmm_device_scope_.error(), "gpuSetDevice", __FILE__, __LINE__); \
      !uhmm_status_)                                                                               \
  return uhmm_status_
