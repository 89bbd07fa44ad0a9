// Device discovery: turns ContextOptions into devices. Only the cpu backend is
// built today; GPU backends will be dlopen'ed plugins chosen here.
#include <algorithm>
#include <cctype>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "cpu/cpu_backend.hpp"
#include "device.hpp"
#include "uhmm/detail/device.hpp"
#include "uhmm/detail/log.hpp"
#include "uhmm/error.hpp"

namespace uhmm::detail {

std::vector<std::unique_ptr<Device>> open_devices(const ContextOptions& options, PagemapLookup lookup) {
  std::string backend = options.backend;
  std::transform(backend.begin(), backend.end(), backend.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });

  if (backend == "cuda" || backend == "hip") {
    throw Error(Errc::device_error,
                fmt::format("backend '{}' (UHMM_BACKEND) is not available: this build of uhmm has no GPU "
                            "backend yet (GPU backends will be loaded as plugins); use 'cpu' or 'auto'",
                            options.backend));
  }
  if (backend != "auto" && backend != "cpu") {
    throw Error(Errc::invalid_argument,
                fmt::format("unknown backend '{}' (UHMM_BACKEND); accepted: auto, cpu, cuda, hip",
                            options.backend));
  }
  constexpr unsigned kMaxDevices = std::numeric_limits<OwnerId>::max();  // owners 1..255
  if (options.devices == 0 || options.devices > kMaxDevices) {
    throw Error(Errc::invalid_argument,
                fmt::format("devices (UHMM_DEVICES) is {}; it must be between 1 and {}", options.devices,
                            kMaxDevices));
  }
  if (options.device_pool_bytes < kChunkSize) {
    throw Error(Errc::invalid_argument,
                fmt::format("device_pool_bytes (UHMM_DEVICE_POOL) is {}; a device needs at least one 2 MiB chunk "
                            "({} bytes)", options.device_pool_bytes, kChunkSize));
  }
  if (backend == "auto") log().info("backend auto: no GPU backend in this build, using the cpu backend");

  const std::size_t capacity_pages = options.device_pool_bytes / kPageSize;
  std::vector<std::unique_ptr<Device>> devices;
  devices.reserve(options.devices);
  for (unsigned d = 0; d < options.devices; ++d) {
    const auto owner = static_cast<OwnerId>(d + 1);
    CpuBackendOptions backend_options;
    backend_options.memory_bytes = std::uint64_t{capacity_pages} * kPageSize;
    backend_options.name = fmt::format("cpu{}", d);
    backend_options.copy_threads = std::max(1u, options.cpu_copy_threads);
    devices.push_back(std::make_unique<DeviceImpl>(std::make_unique<CpuBackend>(std::move(backend_options)),
                                                   capacity_pages, owner, lookup));
    log().info("device {}: cpu backend '{}', pool of {} pages ({} bytes)", owner, fmt::format("cpu{}", d),
               capacity_pages, capacity_pages * kPageSize);
  }
  return devices;
}

}  // namespace uhmm::detail
