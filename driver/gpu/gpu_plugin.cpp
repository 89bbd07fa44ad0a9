// The plugin's exported entry point (plugin_abi.hpp): device count and
// properties straight from the runtime, and GpuBackend construction.
#include <cctype>
#include <cstdio>
#include <cstring>
#include <string>

#include <fmt/format.h>

#include "../plugin_abi.hpp"
#include "copy_kernels.hpp"
#include "gpu_backend.hpp"
#include "gpu_status.hpp"

namespace uhmm::gpu {
namespace {

void write_why(const std::string& text, char* why, std::size_t why_size) noexcept {
  if (why == nullptr || why_size == 0) return;
  std::snprintf(why, why_size, "%s", text.c_str());
}

// The driver is older than the runtime this plugin carries (the CUDA plugin
// links CUDA's static runtime: a CUDA 13 build needs an R580 driver): not "no
// GPU", but GPUs this build cannot use until the driver is updated.
int driver_too_old(char* why, std::size_t why_size) noexcept {
  int driver = 0;
  const gpuError_t error = gpuDriverGetVersion(&driver);
  if (error != gpuSuccess) (void)gpuGetLastError();
  write_why(fmt::format("{}GetDeviceCount: {}: the GPU driver (version {}) is older than the {} runtime this "
                        "plugin was built with (version {}): its GPUs are NOT used; update the driver, or use a "
                        "uhmm built with an older toolkit",
                        kBackendName, gpuGetErrorName(gpuErrorInsufficientDriver),
                        error == gpuSuccess ? std::to_string(driver) : std::string("unknown"), kBackendName,
                        kRuntimeVersion),
            why, why_size);
  return detail::kPluginDriverTooOld;
}

int device_count(char* why, std::size_t why_size) noexcept {
  int count = 0;
  const gpuError_t error = gpuGetDeviceCount(&count);
  if (error == gpuErrorInsufficientDriver) {
    (void)gpuGetLastError();
    return driver_too_old(why, why_size);
  }
  if (error != gpuSuccess) {
    // Without a driver or device the runtime says so here ("no CUDA-capable device is detected").
    write_why(fmt::format("{}GetDeviceCount: {} ({})", kBackendName, gpuGetErrorName(error), gpuGetErrorString(error)),
              why, why_size);
    (void)gpuGetLastError();
    return -1;
  }
  return count;
}

// Properties and bus id need no context: probing creates none on any device
// (issue 16, defect 3). Free memory and copy-kernel images are learnt when a
// device is opened (device_memory, create_backend).
bool device_properties(int index, detail::PluginDeviceProperties* out, char* why, std::size_t why_size) noexcept {
  gpuDeviceProp props{};
  Status s = UHMM_GPU_STATUS(gpuGetDeviceProperties(&props, index));
  if (s) s = UHMM_GPU_STATUS(gpuDeviceGetPCIBusId(out->pci_bus_id, sizeof out->pci_bus_id, index));
  if (!s) {
    write_why(s.message, why, why_size);
    return false;
  }
  std::snprintf(out->name, sizeof out->name, "%s", props.name);
  // The runtime spells the bus id in capitals; libdrm in lower case.
  for (char* c = out->pci_bus_id; *c != '\0'; ++c) *c = static_cast<char>(std::tolower(static_cast<unsigned char>(*c)));
  out->total_bytes = props.totalGlobalMem;
  out->free_bytes = 0;
  out->capabilities = kCapPeerCopy;
  return true;
}

bool device_memory(int index, std::uint64_t* free_bytes, std::uint64_t* total_bytes, char* why,
                   std::size_t why_size) noexcept {
  const DeviceScope device(index);  // the caller's current device comes back after
  Status s = UHMM_GPU_STATUS(device.error());
  std::size_t free_now = 0, total = 0;
  if (s) s = UHMM_GPU_STATUS(gpuMemGetInfo(&free_now, &total));
  if (!s) {
    write_why(s.message, why, why_size);
    return false;
  }
  *free_bytes = free_now;
  *total_bytes = total;
  return true;
}

Backend* create_backend(int index, std::uint64_t pool_bytes, char* why, std::size_t why_size) noexcept {
  GpuBackendOptions options;
  options.device = index;
  options.pool_bytes = pool_bytes;
  std::string reason;
  auto backend = GpuBackend::create(options, &reason);
  if (!backend) write_why(reason, why, why_size);
  return backend.release();
}

constexpr detail::BackendPlugin kPlugin{detail::kPluginAbiVersion, kBackendName, device_count, device_properties,
                                        device_memory, create_backend};

}  // namespace
}  // namespace uhmm::gpu

extern "C" __attribute__((visibility("default"))) const uhmm::detail::BackendPlugin* uhmm_backend_plugin(
    std::uint32_t abi_version) {
  return abi_version == uhmm::detail::kPluginAbiVersion ? &uhmm::gpu::kPlugin : nullptr;
}
