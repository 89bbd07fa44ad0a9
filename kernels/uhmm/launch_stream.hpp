// uhmm::LaunchStream: what Context::launch_device hands the application's
// launch callback: the device's native stream (cudaStream_t / hipStream_t, or
// nullptr on the cpu backend) and the host-side queue that runs kernels the
// host compiler built. uhmm::launch(const LaunchStream&, n, functor) in
// launch.hpp picks between the two, so one kernel source serves every backend.
// Host code only, and C++17: nvcc and hipcc compile it (no fmt here).
#pragma once

#include <cstddef>
#include <functional>

namespace uhmm {

// Runs host-compiled kernels on a launch_device stream, in stream order
// (implemented by libuhmm, host/api/device_launch.cpp).
class HostLaunchQueue {
 public:
  // Queues kernel(first, last) over slices of [0, n) behind the stream's work.
  // On the cpu backend it runs on the backend's kernel threads; on a GPU-like
  // device whose memory the host reaches it runs in the caller once the stream
  // is drained. Throws uhmm::Error (Errc::invalid_argument) on a device whose
  // memory the host cannot reach: such a kernel must be compiled by nvcc/hipcc.
  virtual void enqueue(std::size_t n, std::function<void(std::size_t first, std::size_t last)> kernel) = 0;
  // A native launch failed when it was enqueued (the runtime's last error):
  // launch_device raises it as Errc::device_error once the stream is drained.
  virtual void report_native_error(const char* name, const char* text) noexcept = 0;

 protected:
  ~HostLaunchQueue() = default;
};

struct LaunchStream {
  void* native = nullptr;           // cudaStream_t / hipStream_t; nullptr on the cpu backend
  HostLaunchQueue* host = nullptr;  // never null inside a launch_device callback
  // The runtime's ordinal of the device `native` belongs to (-1 on the cpu
  // backend): uhmm::launch makes it current for the launch, since a kernel
  // goes to the current device and fails on another device's stream.
  int native_device = -1;
};

}  // namespace uhmm
