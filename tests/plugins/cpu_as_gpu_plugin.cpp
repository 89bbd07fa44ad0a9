// A backend plugin for tests: the real cpu backend behind the plugin ABI,
// loaded under a GPU backend's name (libuhmm-backend-cuda.so in a directory of
// its own, reached through UHMM_PLUGIN_DIR). It lets backend selection, auto
// detection, pool sizing from free memory, the device cap and the ABI check
// run end to end where no GPU exists. UHMM_TEST_PLUGIN_ABI_OFFSET != 0 builds
// a plugin from "another build", which must be refused. Error's constructor
// resolves against the libuhmm.so of the test process that loads it.
#include <cstdio>

#include <fmt/format.h>
#include <spdlog/sinks/stdout_sinks.h>

#include "../../driver/cpu/cpu_backend.hpp"
#include "../../driver/plugin_abi.hpp"
#include "uhmm/detail/log.hpp"

namespace uhmm::detail {

// The plugin's own logger: libuhmm's is registered under "uhmm" in spdlog's
// shared registry, so a second registration would throw.
spdlog::logger& log() {
  static spdlog::logger logger("uhmm-test-plugin", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  return logger;
}

namespace {

constexpr int kDevices = 2;
constexpr std::uint64_t kFreeBytes = std::uint64_t{64} << 20;

int device_count(char*, std::size_t) noexcept { return kDevices; }

bool device_properties(int index, PluginDeviceProperties* out, char* why, std::size_t why_size) noexcept {
  if (index < 0 || index >= kDevices) {
    std::snprintf(why, why_size, "no device %d", index);
    return false;
  }
  std::snprintf(out->name, sizeof out->name, "cpu-as-gpu%d", index);
  std::snprintf(out->pci_bus_id, sizeof out->pci_bus_id, "0000:%02x:00.0", 0x40 + index);
  out->total_bytes = 2 * kFreeBytes;
  out->free_bytes = kFreeBytes;
  out->capabilities = kCapPeerCopy | kCapHostKernels | kCapHostVisibleMemory;
  return true;
}

Backend* create_backend(int index, std::uint64_t pool_bytes, char* why, std::size_t why_size) noexcept {
  try {
    CpuBackendOptions options;
    options.memory_bytes = pool_bytes;
    options.name = fmt::format("cpu-as-gpu{}", index);
    return new CpuBackend(std::move(options));
  } catch (const std::exception& e) {
    std::snprintf(why, why_size, "%s", e.what());
    return nullptr;
  }
}

constexpr BackendPlugin kPlugin{kPluginAbiVersion + UHMM_TEST_PLUGIN_ABI_OFFSET, "cuda", device_count,
                                device_properties, create_backend};

}  // namespace
}  // namespace uhmm::detail

extern "C" __attribute__((visibility("default"))) const uhmm::detail::BackendPlugin* uhmm_backend_plugin(
    std::uint32_t) {
  // Answers whatever version is asked: the loader must check the table's own.
  return &uhmm::detail::kPlugin;
}
