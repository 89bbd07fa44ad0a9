// The entry point a GPU backend plugin (libuhmm-backend-<name>.so) exports. The
// core loads plugins with dlopen so that libuhmm.so links no GPU runtime; this
// header is all the two sides share. Both are built from the same tree with
// the same compiler, so a Backend* may cross; the version guards against a
// plugin from another build. Bump kPluginAbiVersion whenever this header or
// include/uhmm/backend.hpp changes.
#pragma once

#include <cstddef>
#include <cstdint>

#include "uhmm/backend.hpp"

namespace uhmm::detail {

inline constexpr std::uint32_t kPluginAbiVersion = 3;  // 2: device buffers and native streams; 3: device_memory
// device_count's answer for a driver older than the plugin's runtime (any
// negative count is "unavailable" to a host that does not know it).
inline constexpr int kPluginDriverTooOld = -2;
inline constexpr const char* kPluginEntryPoint = "uhmm_backend_plugin";

// What the runtime says about one device, for discovery and pool sizing.
struct PluginDeviceProperties {
  char name[256] = {};
  char pci_bus_id[32] = {};        // "0000:41:00.0", as libdrm spells it
  std::uint64_t total_bytes = 0;
  std::uint64_t free_bytes = 0;    // GPUs: 0 (unknown) until opened: measuring it needs a context
  std::uint32_t capabilities = 0;  // BackendCapability bits a backend on it would have (GPUs: those known
                                   // without a context; the backend's info() has them all)
};

struct BackendPlugin {
  std::uint32_t abi_version;
  const char* backend;  // "cuda", "hip"
  // Devices the runtime reports (>= 0), or -1 with the runtime's reason in
  // `why` (e.g. "cudaGetDeviceCount: no CUDA-capable device is detected"),
  // or kPluginDriverTooOld: the installed driver is older than the runtime
  // the plugin carries (CUDA's static runtime), so the GPUs there are unusable
  // until the driver is updated: hosts say so loudly, not as a quiet fallback.
  int (*device_count)(char* why, std::size_t why_size) noexcept;
  // false with `why` when the runtime cannot query device `index`. Creates no
  // context on the device (a context costs device memory, and a device held
  // exclusively by another process refuses one).
  bool (*device_properties)(int index, PluginDeviceProperties* out, char* why, std::size_t why_size) noexcept;
  // The free and total memory of device `index`, which creates its context:
  // called only for devices about to be opened. false with `why` when the
  // device is unusable (e.g. exclusive-process and held by another process).
  bool (*device_memory)(int index, std::uint64_t* free_bytes, std::uint64_t* total_bytes, char* why,
                        std::size_t why_size) noexcept;
  // A backend on device `index` whose chunk pool grows up to pool_bytes; the
  // caller owns it (delete through Backend's virtual destructor). nullptr with
  // `why` on failure.
  Backend* (*create_backend)(int index, std::uint64_t pool_bytes, char* why, std::size_t why_size) noexcept;
};

// Signature of the exported entry point: the plugin's table if it speaks
// `abi_version`, else nullptr.
using PluginEntryPoint = const BackendPlugin* (*)(std::uint32_t abi_version);

}  // namespace uhmm::detail
