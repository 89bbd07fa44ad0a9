// uhmm::launch(stream, n, functor): runs functor(i) for every i in [0, n), so a
// kernel body is written once. Under nvcc / hipcc it is a grid-stride kernel
// launched with <<<>>> on the stream; under the host compiler it runs in the
// caller on a HostStream (the cpu backend slices work over threads itself and
// calls the same functors). The functor is copied by value to the device, so it
// must be trivially copyable and hold only device-reachable pointers.
// launch(const LaunchStream&, n, f) is the form for Context::launch_device:
// the native stream under nvcc / hipcc, the host launch queue otherwise.
#pragma once

#include <cstddef>
#include <type_traits>

#include "uhmm/kernel_config.hpp"
#include "uhmm/launch_stream.hpp"

// hipcc adds no runtime header by itself (nvcc does): the launch needs it.
#if defined(__HIPCC__)
#include <hip/hip_runtime.h>
#endif

// The runtime calls that make a device current around a native launch.
#if UHMM_DEVICE_CODE_COMPILER && defined(__HIPCC__)
#define UHMM_NATIVE_GET_DEVICE(d) hipGetDevice(d)
#define UHMM_NATIVE_SET_DEVICE(d) hipSetDevice(d)
#define UHMM_NATIVE_CLEAR_ERROR() (void)hipGetLastError()
#elif UHMM_DEVICE_CODE_COMPILER
#define UHMM_NATIVE_GET_DEVICE(d) cudaGetDevice(d)
#define UHMM_NATIVE_SET_DEVICE(d) cudaSetDevice(d)
#define UHMM_NATIVE_CLEAR_ERROR() (void)cudaGetLastError()
#elif UHMM_EMULATED_DEVICE_CODE
#define UHMM_NATIVE_GET_DEVICE(d) uhmm_emulated_get_device(d)
#define UHMM_NATIVE_SET_DEVICE(d) uhmm_emulated_set_device(d)
#define UHMM_NATIVE_CLEAR_ERROR() (void)uhmm_emulated_get_last_error()
#endif

namespace uhmm {

#ifdef UHMM_NATIVE_SET_DEVICE
// Makes a launch_device stream's device current for one launch and gives
// the caller's back (set only when it differs): on a GPU a kernel goes to the
// current device, and a stream of another device fails it (invalid resource
// handle), so launch_device on any but the application's current device
// failed. A failure to set it shows as the launch's own error.
class NativeDeviceScope {
 public:
  explicit NativeDeviceScope(int device) noexcept {
    if (device < 0) return;
    if (UHMM_NATIVE_GET_DEVICE(&previous_) != 0) {
      UHMM_NATIVE_CLEAR_ERROR();
      previous_ = -1;
    }
    if (previous_ == device) return;
    restore_ = UHMM_NATIVE_SET_DEVICE(device) == 0 && previous_ >= 0;
  }
  ~NativeDeviceScope() {
    // A failure (the application's device became unusable) must not linger as its last error.
    if (restore_ && UHMM_NATIVE_SET_DEVICE(previous_) != 0) UHMM_NATIVE_CLEAR_ERROR();
  }
  NativeDeviceScope(const NativeDeviceScope&) = delete;
  NativeDeviceScope& operator=(const NativeDeviceScope&) = delete;

 private:
  int previous_ = -1;
  bool restore_ = false;
};
#endif

// The geometry of a launch (also the hip plugin's module launch of its copy kernel).
inline constexpr unsigned kLaunchThreads = 256;
inline constexpr std::size_t kLaunchMaxBlocks = std::size_t{1} << 16;

#if UHMM_DEVICE_CODE_COMPILER

template <class F>
__global__ void index_space_kernel(std::size_t n, F f) {
  const std::size_t stride = std::size_t{gridDim.x} * blockDim.x;
  for (std::size_t i = std::size_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride) f(i);
}

// Enqueues the launch; the caller checks the runtime's last error.
template <class Stream, class F, class = std::enable_if_t<!std::is_same_v<Stream, LaunchStream>>>
void launch(Stream stream, std::size_t n, const F& f) {
  if (n == 0) return;
  std::size_t blocks = (n + kLaunchThreads - 1) / kLaunchThreads;
  if (blocks > kLaunchMaxBlocks) blocks = kLaunchMaxBlocks;
  index_space_kernel<F><<<static_cast<unsigned>(blocks), kLaunchThreads, 0, stream>>>(n, f);
}

#if defined(__HIPCC__)
using NativeLaunchStream = hipStream_t;
#define UHMM_NATIVE_LAST_ERROR() hipGetLastError()
#define UHMM_NATIVE_SUCCESS hipSuccess
#define UHMM_NATIVE_ERROR_NAME hipGetErrorName
#define UHMM_NATIVE_ERROR_STRING hipGetErrorString
#else
using NativeLaunchStream = cudaStream_t;
#define UHMM_NATIVE_LAST_ERROR() cudaGetLastError()
#define UHMM_NATIVE_SUCCESS cudaSuccess
#define UHMM_NATIVE_ERROR_NAME cudaGetErrorName
#define UHMM_NATIVE_ERROR_STRING cudaGetErrorString
#endif

// A launch_device stream: on a GPU the kernel goes to the native stream (a
// launch error is reported to uhmm, which raises it after draining); on the
// cpu backend (no native stream) the functor runs as host code, so its
// operator() must be UHMM_HOST_DEVICE there.
template <class F>
void launch(const LaunchStream& stream, std::size_t n, const F& f) {
  if (stream.native == nullptr) {
    stream.host->enqueue(n, [f](std::size_t first, std::size_t last) {
      for (std::size_t i = first; i < last; ++i) f(i);
    });
    return;
  }
  const NativeDeviceScope device(stream.native_device);
  (void)UHMM_NATIVE_LAST_ERROR();  // an earlier, unrelated error is not this launch's
  launch(static_cast<NativeLaunchStream>(stream.native), n, f);
  if (const auto error = UHMM_NATIVE_LAST_ERROR(); error != UHMM_NATIVE_SUCCESS)
    stream.host->report_native_error(UHMM_NATIVE_ERROR_NAME(error), UHMM_NATIVE_ERROR_STRING(error));
}

#else

// The host compiler's stream: work runs in the caller, in index order.
struct HostStream {};

template <class F>
void launch(HostStream, std::size_t n, const F& f) {
  for (std::size_t i = 0; i < n; ++i) f(i);
}

#if UHMM_EMULATED_DEVICE_CODE

// The emulated GPU runtime (tests only, driver/gpu/emulated/): its <<<>>>. The
// functor is copied by value, as kernel parameters are, and runs as host code
// on the stream's worker thread.
template <class F>
void emulated_kernel_body(const void* functor, std::size_t n) {
  const F& f = *static_cast<const F*>(functor);
  for (std::size_t i = 0; i < n; ++i) f(i);
}

// Enqueues the launch; the caller checks the runtime's last error.
template <class F>
void launch(uhmmEmulatedStream* stream, std::size_t n, const F& f) {
  static_assert(std::is_trivially_copyable_v<F>, "a kernel functor is copied to the device by value");
  if (n == 0) return;
  (void)uhmm_emulated_launch(stream, n, &emulated_kernel_body<F>, &f, sizeof(F), alignof(F));
}

#endif

// A launch_device stream under the host compiler: the functor runs as host
// code on the backend's kernel threads (cpu backend), or in the caller on a
// device whose memory the host reaches; anywhere else the queue refuses it
// (except on the emulated runtime's native stream, as on a GPU).
template <class F>
void launch(const LaunchStream& stream, std::size_t n, const F& f) {
#if UHMM_EMULATED_DEVICE_CODE
  if (stream.native != nullptr) {
    const NativeDeviceScope device(stream.native_device);
    (void)uhmm_emulated_get_last_error();  // an earlier, unrelated error is not this launch's
    launch(static_cast<uhmmEmulatedStream*>(stream.native), n, f);
    if (const int error = uhmm_emulated_get_last_error(); error != 0)
      stream.host->report_native_error(uhmm_emulated_error_name(error), uhmm_emulated_error_string(error));
    return;
  }
#endif
  stream.host->enqueue(n, [f](std::size_t first, std::size_t last) {
    for (std::size_t i = first; i < last; ++i) f(i);
  });
}

#endif

}  // namespace uhmm
