// Compile-only check that every kernels/ header builds as device code under
// nvcc and hipcc (the host compiler's build is checked by kernels_test.cpp).
// Built into an object library when a GPU compiler is on; nothing runs it.
#if UHMM_GPU_HIP
#include <hip/hip_runtime.h>
#endif

#include "uhmm/device_span.hpp"
#include "uhmm/launch.hpp"
#include "uhmm/page_copy.hpp"
#include "uhmm/page_gather.hpp"

namespace {

struct Saxpy {
  uhmm::DevicePageTable x_table, y_table;
  float a;
  __device__ void operator()(std::size_t i) const {
    uhmm::device_span<const float> x(x_table);
    uhmm::device_span<float> y(y_table);
    y[i] = a * x[i] + y[i];
  }
};

}  // namespace

#if UHMM_GPU_HIP
using check_stream_t = hipStream_t;
#else
using check_stream_t = cudaStream_t;
#endif

void uhmm_device_compile_check(check_stream_t stream, const uhmm::DevicePageTable& x, const uhmm::DevicePageTable& y) {
  uhmm::launch(stream, x.bytes / sizeof(float), Saxpy{x, y, 2.0f});
  uhmm::launch(stream, 1, uhmm::kernels::GatherScatterPages{});
}
