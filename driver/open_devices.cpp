// Device selection: turns ContextOptions into devices. The cpu backend is built
// in; cuda and hip are plugins (plugin_loader.hpp) probed through
// backend_probe.hpp. UHMM_BACKEND=auto takes the first GPU backend whose
// runtime reports a device, else the cpu backend, and logs why.
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "backend_probe.hpp"
#include "cpu/cpu_backend.hpp"
#include "device.hpp"
#include "uhmm/detail/device.hpp"
#include "uhmm/detail/log.hpp"
#include "uhmm/error.hpp"

namespace uhmm::detail {
namespace {

// The pool of one device: UHMM_DEVICE_POOL's bytes, or its percentage of
// `free_bytes`, in whole chunks.
std::uint64_t pool_bytes(const ContextOptions& options, std::uint64_t free_bytes) {
  // Split so that free_bytes * percent cannot overflow and loses nothing.
  const std::uint64_t pct = options.device_pool_percent;
  std::uint64_t bytes = pct > 0 ? free_bytes / 100 * pct + free_bytes % 100 * pct / 100 : options.device_pool_bytes;
  bytes -= bytes % kChunkSize;
  if (bytes < kChunkSize)
    throw Error(Errc::invalid_argument,
                fmt::format("device pool (UHMM_DEVICE_POOL={}) is {} bytes; a device needs at least one 2 MiB chunk",
                            options.device_pool_percent > 0 ? fmt::format("{}%", options.device_pool_percent)
                                                            : std::to_string(options.device_pool_bytes),
                            bytes));
  return bytes;
}

std::uint64_t host_available_bytes() {
  const long pages = ::sysconf(_SC_AVPHYS_PAGES);
  const long page = ::sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? std::uint64_t(pages) * std::uint64_t(page) : 0;
}

std::vector<std::unique_ptr<Device>> open_cpu_devices(const ContextOptions& options, const PagemapLookup& lookup) {
  const std::uint64_t bytes = pool_bytes(options, options.device_pool_percent > 0 ? host_available_bytes() : 0);
  const std::size_t capacity_pages = bytes / kPageSize;
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

// A backend on GPU `d`, or nullptr with `why` when the device is unusable
// (no context: exclusive-process and held by another job, ...). Its memory is
// measured here, on a device being opened: that creates its context.
std::unique_ptr<Backend> open_gpu(const BackendProbe& probe, const ContextOptions& options, std::size_t d,
                                  std::uint64_t* bytes, std::uint64_t* free_bytes, std::string* why) {
  char reason[512] = {};
  std::uint64_t total_bytes = 0;
  if (!probe.plugin->device_memory(static_cast<int>(d), free_bytes, &total_bytes, reason, sizeof reason)) {
    *why = reason;
    return nullptr;
  }
  *bytes = pool_bytes(options, *free_bytes);
  std::unique_ptr<Backend> backend(probe.plugin->create_backend(static_cast<int>(d), *bytes, reason, sizeof reason));
  if (!backend) *why = reason;
  return backend;
}

// One device per usable GPU the runtime reports, at most UHMM_DEVICES of them;
// contexts only on those (issue 16, defect 3). An unusable GPU is skipped;
// none usable is an error.
std::vector<std::unique_ptr<Device>> open_gpu_devices(const BackendProbe& probe, const ContextOptions& options,
                                                      const PagemapLookup& lookup) {
  std::vector<std::unique_ptr<Device>> devices;
  std::string skipped;
  for (std::size_t d = 0; d < probe.devices.size() && devices.size() < options.devices; ++d) {
    const PluginDeviceProperties& props = probe.devices[d];
    std::uint64_t bytes = 0, free_bytes = 0;
    std::string why;
    std::unique_ptr<Backend> backend = open_gpu(probe, options, d, &bytes, &free_bytes, &why);
    if (!backend) {
      log().warn("{} device {} '{}' (pci {}) is skipped: {}", probe.name, d, props.name, props.pci_bus_id, why);
      skipped += fmt::format("; device {} ({}): {}", d, props.name, why);
      continue;
    }
    const auto owner = static_cast<OwnerId>(devices.size() + 1);
    const std::size_t capacity_pages = bytes / kPageSize;
    auto device = std::make_unique<DeviceImpl>(std::move(backend), capacity_pages, owner, lookup);
    device->set_native_device(static_cast<int>(d));
    devices.push_back(std::move(device));
    log().info("device {}: {} device {} '{}' (pci {}), pool up to {} pages ({} bytes, {} free)", owner, probe.name,
               d, props.name, props.pci_bus_id, capacity_pages, bytes, free_bytes);
  }
  if (devices.empty())
    throw Error(Errc::device_error, fmt::format("{}: no usable device{}", probe.name, skipped));
  return devices;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

}  // namespace

std::vector<std::unique_ptr<Device>> open_devices(const ContextOptions& options, PagemapLookup lookup) {
  const std::string backend = lower(options.backend);
  // "emulated" (tests only): the GPU plugin on the emulated runtime, found only
  // where a test's UHMM_PLUGIN_DIR provides it; never offered by auto.
  const bool gpu = backend == "cuda" || backend == "hip" || backend == "emulated";
  if (!gpu && backend != "auto" && backend != "cpu") {
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
  if (options.device_pool_percent > 100) {
    throw Error(Errc::invalid_argument,
                fmt::format("device_pool_percent (UHMM_DEVICE_POOL) is {}; it must be between 1 and 100",
                            options.device_pool_percent));
  }
  if (options.device_pool_percent == 0 && options.device_pool_bytes < kChunkSize) {
    throw Error(Errc::invalid_argument,
                fmt::format("device_pool_bytes (UHMM_DEVICE_POOL) is {}; a device needs at least one 2 MiB chunk "
                            "({} bytes)", options.device_pool_bytes, kChunkSize));
  }

  if (gpu) {
    BackendProbe probe = probe_backend(backend, options.plugin_dir);
    if (!probe.available())
      throw Error(Errc::device_error,
                  fmt::format("backend '{}' (UHMM_BACKEND) is not available: {}; use 'cpu' or 'auto'",
                              options.backend, probe.why));
    return open_gpu_devices(probe, options, lookup);
  }
  if (backend == "auto") {
    std::string why;
    for (const char* name : kGpuBackends) {
      BackendProbe probe = probe_backend(name, options.plugin_dir);
      if (probe.available()) {
        log().info("backend auto: {} ({} device(s), plugin {})", name, probe.devices.size(), probe.plugin_path);
        return open_gpu_devices(probe, options, lookup);
      }
      why += fmt::format("; {}", probe.why);
      if (probe.driver_too_old) log().warn("backend auto: {}", probe.why);
    }
    log().info("backend auto: using the cpu backend{}", why);
  }
  return open_cpu_devices(options, lookup);
}

}  // namespace uhmm::detail
