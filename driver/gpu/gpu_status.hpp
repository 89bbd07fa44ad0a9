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

}  // namespace uhmm::gpu

#define UHMM_GPU_STATUS(call) ::uhmm::gpu::gpu_status((call), #call, __FILE__, __LINE__)
#define UHMM_GPU_TRY(call)                                   \
  do {                                                       \
    if (::uhmm::Status uhmm_status_ = UHMM_GPU_STATUS(call); \
        !uhmm_status_)                                       \
      return uhmm_status_;                                   \
  } while (0)
