// The vendor managed-memory baseline for `uhmm-bench --gpu` (see
// managed_baseline_abi.hpp). Written once over the GPU backend's vendor shim
// and compiled twice: libuhmm-managed-baseline-cuda.so (UHMM_GPU_HIP=0) and
// -hip.so (UHMM_GPU_HIP=1). Every runtime call is checked; the first failure
// ends the run with its call, error name and text in the result.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <new>
#include <vector>

#include "gpu_runtime.hpp"
#include "managed_baseline_abi.hpp"

namespace {

using namespace uhmm::gpu;
using Clock = std::chrono::steady_clock;
constexpr std::size_t kPage = 4096;

#if UHMM_GPU_HIP
gpuError_t gpuMallocManaged(void** p, std::size_t bytes) { return hipMallocManaged(p, bytes, hipMemAttachGlobal); }
gpuError_t prefetch(const void* p, std::size_t bytes, int device, gpuStream_t s) {
  return hipMemPrefetchAsync(p, bytes, device, s);
}
constexpr int kCpu = hipCpuDeviceId;
#define gpuMemcpy hipMemcpy
#define gpuMemcpyHostToDevice hipMemcpyHostToDevice
#define gpuMemcpyDeviceToHost hipMemcpyDeviceToHost
#define gpuDeviceSynchronize hipDeviceSynchronize
#else
gpuError_t gpuMallocManaged(void** p, std::size_t bytes) { return cudaMallocManaged(p, bytes, cudaMemAttachGlobal); }
// CUDA 13 names the destination by location; the CPU is the host location.
gpuError_t prefetch(const void* p, std::size_t bytes, int device, gpuStream_t s) {
  cudaMemLocation where{};
  where.type = device == cudaCpuDeviceId ? cudaMemLocationTypeHost : cudaMemLocationTypeDevice;
  where.id = device == cudaCpuDeviceId ? 0 : device;
  return cudaMemPrefetchAsync(p, bytes, where, 0, s);
}
constexpr int kCpu = cudaCpuDeviceId;
#define gpuMemcpy cudaMemcpy
#define gpuMemcpyHostToDevice cudaMemcpyHostToDevice
#define gpuMemcpyDeviceToHost cudaMemcpyDeviceToHost
#define gpuDeviceSynchronize cudaDeviceSynchronize
#endif

struct Failed {};

// Records the first failure and stops the run.
void check(gpuError_t err, const char* call, UhmmManagedResult* out) {
  if (err == gpuSuccess) return;
  std::snprintf(out->error, sizeof out->error, "%s: %s (%s)", call, gpuGetErrorName(err), gpuGetErrorString(err));
  throw Failed{};
}
#define BASELINE_TRY(call) check((call), #call, out)

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double percentile(std::vector<double>& v, double q) {
  if (v.empty()) return 0;
  const std::size_t k = static_cast<std::size_t>(q * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

// Frees what a run allocated, on every path.
struct Allocations {
  void* managed = nullptr;
  void* device = nullptr;
  gpuStream_t stream = nullptr;
  // Teardown of a finished run: a failure here cannot change its figures.
  ~Allocations() {
    if (stream != nullptr) (void)gpuStreamDestroy(stream);
    if (device != nullptr) (void)gpuFree(device);
    if (managed != nullptr) (void)gpuFree(managed);
  }
};

void run(const UhmmManagedRequest& req, UhmmManagedResult* out) {
  BASELINE_TRY(gpuSetDevice(req.device));
  gpuDeviceProp prop{};
  BASELINE_TRY(gpuGetDeviceProperties(&prop, req.device));
  std::snprintf(out->device_name, sizeof out->device_name, "%s", prop.name);

  Allocations a;
  BASELINE_TRY(gpuStreamCreateWithFlags(&a.stream, gpuStreamNonBlocking));
  BASELINE_TRY(gpuMallocManaged(&a.managed, req.bytes));
  BASELINE_TRY(gpuMalloc(&a.device, req.bytes));
  auto* bytes = static_cast<unsigned char*>(a.managed);
  std::memset(bytes, 1, req.bytes);  // first touch on the CPU: the data starts in host memory
  std::vector<unsigned char> pageable(req.bytes, 1);

  double to = 1e30, back = 1e30, dma_to = 1e30, dma_back = 1e30;
  for (std::uint32_t r = 0; r < std::max<std::uint32_t>(req.rounds, 1); ++r) {
    auto t0 = Clock::now();
    BASELINE_TRY(prefetch(a.managed, req.bytes, req.device, a.stream));
    BASELINE_TRY(gpuStreamSynchronize(a.stream));
    to = std::min(to, seconds_since(t0));
    t0 = Clock::now();
    BASELINE_TRY(prefetch(a.managed, req.bytes, kCpu, a.stream));
    BASELINE_TRY(gpuStreamSynchronize(a.stream));
    back = std::min(back, seconds_since(t0));
    t0 = Clock::now();
    BASELINE_TRY(gpuMemcpy(a.device, pageable.data(), req.bytes, gpuMemcpyHostToDevice));
    dma_to = std::min(dma_to, seconds_since(t0));
    t0 = Clock::now();
    BASELINE_TRY(gpuMemcpy(pageable.data(), a.device, req.bytes, gpuMemcpyDeviceToHost));
    dma_back = std::min(dma_back, seconds_since(t0));
  }
  if (bytes[0] != 1 || bytes[req.bytes - 1] != 1 || pageable[req.bytes / 2] != 1) {
    std::snprintf(out->error, sizeof out->error, "managed memory read back wrong data after the round trips");
    throw Failed{};
  }
  const double gb = static_cast<double>(req.bytes) / 1e9;
  out->prefetch_to_device_gbps = gb / to;
  out->prefetch_to_host_gbps = gb / back;
  out->dma_to_device_gbps = gb / dma_to;
  out->dma_to_host_gbps = gb / dma_back;

  // CPU faults on device-resident managed pages, one page at a time.
  const std::size_t pages = std::min<std::size_t>(req.fault_pages, req.bytes / kPage);
  if (pages == 0) return;
  BASELINE_TRY(prefetch(a.managed, pages * kPage, req.device, a.stream));
  BASELINE_TRY(gpuStreamSynchronize(a.stream));
  std::vector<double> us;
  us.reserve(pages);
  for (std::size_t i = 0; i < pages; ++i) {
    const auto t0 = Clock::now();
    if (static_cast<volatile unsigned char*>(bytes)[i * kPage] != 1) {
      std::snprintf(out->error, sizeof out->error, "a faulted managed page has the wrong data");
      throw Failed{};
    }
    us.push_back(seconds_since(t0) * 1e6);
  }
  out->cpu_fault_p50_us = percentile(us, 0.50);
  out->cpu_fault_p99_us = percentile(us, 0.99);
}

}  // namespace

extern "C" __attribute__((visibility("default"))) int uhmm_managed_baseline_run(const UhmmManagedRequest* request,
                                                                               UhmmManagedResult* out) {
  if (out == nullptr) return 1;
  *out = UhmmManagedResult{};
  if (request == nullptr || request->abi != kManagedBaselineAbi || request->bytes == 0) {
    std::snprintf(out->error, sizeof out->error, "bad request (abi %u, expected %u)",
                  request != nullptr ? request->abi : 0u, kManagedBaselineAbi);
    return 1;
  }
  try {
    run(*request, out);
    return 0;
  } catch (const Failed&) {
    return 1;
  } catch (const std::bad_alloc&) {
    std::snprintf(out->error, sizeof out->error, "out of host memory for %llu bytes",
                  static_cast<unsigned long long>(request->bytes));
    return 1;
  }
}
