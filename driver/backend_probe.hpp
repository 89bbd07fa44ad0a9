// Asks a GPU backend plugin whether its runtime sees devices, and why not when
// it does not: the answer open_devices and uhmm-info both give.
#pragma once

#include <string>
#include <vector>

#include "plugin_abi.hpp"

namespace uhmm::detail {

inline constexpr const char* kGpuBackends[] = {"cuda", "hip"};
// The GPU plugin on the emulated runtime (driver/gpu/emulated/): tests only.
// Never probed by auto; reported by uhmm-info only where a plugin directory
// provides it (it is not installed).
inline constexpr const char* kEmulatedBackend = "emulated";

struct BackendProbe {
  std::string name;                            // "cuda", "hip"
  const BackendPlugin* plugin = nullptr;       // set when the plugin loaded
  std::string plugin_path;
  std::vector<PluginDeviceProperties> devices;  // what the runtime reports
  std::string why;                             // why unavailable (empty when available)
  bool driver_too_old = false;                 // GPUs a newer driver would make usable: say so loudly
  bool available() const noexcept { return plugin != nullptr && !devices.empty(); }
};

// Never throws; a plugin that is missing or whose runtime reports no device is
// an unavailable probe whose `why` says so, e.g.
// "cuda: plugin loaded (…/libuhmm-backend-cuda.so), cudaGetDeviceCount: no CUDA-capable device is detected".
BackendProbe probe_backend(const std::string& name, const std::string& plugin_dir) noexcept;

}  // namespace uhmm::detail
