// What the machine offers uhmm, for tools (uhmm-info) and logs: the GPU
// backends and why any is unavailable, the GPUs libdrm sees, and the running
// kernel's userfaultfd. Each call probes afresh and never throws on a missing
// backend, GPU or feature: the reason is in the report.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "uhmm/export.hpp"

namespace uhmm::detail {

struct GpuDeviceReport {
  std::string name;
  std::string pci_bus_id;  // "0000:41:00.0" (lower case, as libdrm)
  std::uint64_t total_bytes = 0;
  std::uint64_t free_bytes = 0;
  std::uint32_t capabilities = 0;  // BackendCapability bits
};

struct BackendReport {
  std::string name;  // "cuda", "hip"
  bool available = false;
  std::string plugin_path;  // when the plugin loaded
  std::string why;          // when unavailable
  bool driver_too_old = false;  // the GPU driver is older than the plugin's runtime: GPUs left unused
  std::vector<GpuDeviceReport> devices;
};

// A GPU as the kernel's DRM subsystem lists it (drmGetDevices2).
struct DrmDeviceReport {
  std::uint16_t vendor_id = 0;
  std::uint16_t device_id = 0;
  std::string vendor;       // "NVIDIA", "AMD", "Intel" or the id in hex
  std::string pci_bus_id;   // "" for a device not on PCI
  std::string render_node;  // "/dev/dri/renderD128", "" when none
  std::string driver;       // the kernel driver ("amdgpu", "nvidia-drm"), "" when unknown
  std::uint64_t memory_bytes = 0;  // VRAM where the driver reports it in sysfs (amdgpu), else 0
};

struct UserfaultfdReport {
  bool available = false;         // uhmm can serve CPU faults here
  std::string why;                // when not
  std::uint64_t features = 0;     // UFFDIO_API features the kernel supports
  std::vector<std::string> feature_names;
};

// The cuda and hip plugins, probed from plugin_dir (empty: beside libuhmm.so,
// then the install directory).
UHMM_EXPORT std::vector<BackendReport> probe_gpu_backends(const std::string& plugin_dir);
UHMM_EXPORT std::vector<std::string> plugin_search_directories(const std::string& plugin_dir);
// Empty when libdrm finds no device (or the machine has no DRM at all).
UHMM_EXPORT std::vector<DrmDeviceReport> drm_devices();
UHMM_EXPORT UserfaultfdReport probe_userfaultfd();

}  // namespace uhmm::detail
