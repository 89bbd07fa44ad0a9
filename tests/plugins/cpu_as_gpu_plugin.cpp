// A backend plugin for tests: the real cpu backend behind the plugin ABI,
// loaded under a GPU backend's name (libuhmm-backend-cuda.so in a directory of
// its own, reached through UHMM_PLUGIN_DIR). It lets backend selection, auto
// detection, pool sizing from free memory, the device cap and the ABI check
// run end to end where no GPU exists. UHMM_TEST_PLUGIN_ABI_OFFSET != 0 builds
// a plugin from "another build", which must be refused. Error's constructor
// resolves against the libuhmm.so of the test process that loads it.
// UHMM_TEST_PLUGIN_GPU_LIKE=1 builds a plugin whose backend poses as a GPU:
// no kCapHostKernels (launch is refused, as on CUDA/HIP) but host-visible
// memory, so launch_device takes the path real GPUs take (device buffers,
// table upload, a kernel per launch) and its kernels still run here.
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

#if UHMM_TEST_PLUGIN_GPU_LIKE
// The cpu backend without host kernels: everything else is forwarded.
class GpuLikeBackend final : public Backend {
 public:
  explicit GpuLikeBackend(CpuBackendOptions options) : cpu_(std::move(options)) {}
  DeviceInfo info() const override {
    DeviceInfo i = cpu_.info();
    i.backend = "cuda";
    i.capabilities &= ~std::uint32_t{kCapHostKernels};
    return i;
  }
  Status allocate_chunk(DeviceAddress* out) noexcept override { return cpu_.allocate_chunk(out); }
  void free_chunk(DeviceAddress chunk) noexcept override { cpu_.free_chunk(chunk); }
  Status allocate_host(std::size_t bytes, void** out) noexcept override { return cpu_.allocate_host(bytes, out); }
  void free_host(void* p) noexcept override { cpu_.free_host(p); }
  Status create_stream(StreamId* out) noexcept override { return cpu_.create_stream(out); }
  void destroy_stream(StreamId stream) noexcept override { cpu_.destroy_stream(stream); }
  Status copy_to_device(StreamId stream, std::span<const HostToDevicePage> pages,
                        BatchResult* result) noexcept override {
    return cpu_.copy_to_device(stream, pages, result);
  }
  Status copy_to_host(StreamId stream, std::span<const DeviceToHostPage> pages,
                      BatchResult* result) noexcept override {
    return cpu_.copy_to_host(stream, pages, result);
  }
  Status copy_device_to_device(StreamId stream, std::span<const DeviceToDevicePage> pages,
                               BatchResult* result) noexcept override {
    return cpu_.copy_device_to_device(stream, pages, result);
  }
  Status zero_device(StreamId stream, std::span<const DeviceAddress> pages, BatchResult* result) noexcept override {
    return cpu_.zero_device(stream, pages, result);
  }
  Status launch(StreamId, std::size_t, HostKernel, BatchResult*) noexcept override {
    return {Errc::invalid_argument, "launch: the cuda backend runs no host kernels (kCapHostKernels is off)"};
  }
  Status synchronize(StreamId stream) noexcept override { return cpu_.synchronize(stream); }
  Status create_event(EventId* out) noexcept override { return cpu_.create_event(out); }
  void destroy_event(EventId event) noexcept override { cpu_.destroy_event(event); }
  Status record_event(StreamId stream, EventId event) noexcept override { return cpu_.record_event(stream, event); }
  Status stream_wait_event(StreamId stream, EventId event) noexcept override {
    return cpu_.stream_wait_event(stream, event);
  }
  Status synchronize_event(EventId event) noexcept override { return cpu_.synchronize_event(event); }
  Status allocate_device_buffer(std::size_t bytes, DeviceAddress* out) noexcept override {
    return cpu_.allocate_device_buffer(bytes, out);
  }
  void free_device_buffer(DeviceAddress buffer) noexcept override { cpu_.free_device_buffer(buffer); }
  Status copy_to_device_buffer(StreamId stream, DeviceAddress dst, const void* src,
                               std::size_t bytes) noexcept override {
    return cpu_.copy_to_device_buffer(stream, dst, src, bytes);
  }
  Status copy_from_device_buffer(StreamId stream, void* dst, DeviceAddress src,
                                 std::size_t bytes) noexcept override {
    return cpu_.copy_from_device_buffer(stream, dst, src, bytes);
  }
  void* native_stream(StreamId) const noexcept override { return nullptr; }

 private:
  CpuBackend cpu_;
};
using PluginBackend = GpuLikeBackend;
constexpr std::uint32_t kPluginCapabilities = kCapPeerCopy | kCapHostVisibleMemory;
#else
using PluginBackend = CpuBackend;
constexpr std::uint32_t kPluginCapabilities = kCapPeerCopy | kCapHostKernels | kCapHostVisibleMemory;
#endif

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
  out->capabilities = kPluginCapabilities;
  return true;
}

bool device_memory(int index, std::uint64_t* free_bytes, std::uint64_t* total_bytes, char* why,
                   std::size_t why_size) noexcept {
  PluginDeviceProperties props;
  if (!device_properties(index, &props, why, why_size)) return false;
  *free_bytes = props.free_bytes;
  *total_bytes = props.total_bytes;
  return true;
}

Backend* create_backend(int index, std::uint64_t pool_bytes, char* why, std::size_t why_size) noexcept {
  try {
    CpuBackendOptions options;
    options.memory_bytes = pool_bytes;
    options.name = fmt::format("cpu-as-gpu{}", index);
    return new PluginBackend(std::move(options));
  } catch (const std::exception& e) {
    std::snprintf(why, why_size, "%s", e.what());
    return nullptr;
  }
}

constexpr BackendPlugin kPlugin{kPluginAbiVersion + UHMM_TEST_PLUGIN_ABI_OFFSET, "cuda", device_count,
                                device_properties, device_memory, create_backend};

}  // namespace
}  // namespace uhmm::detail

extern "C" __attribute__((visibility("default"))) const uhmm::detail::BackendPlugin* uhmm_backend_plugin(
    std::uint32_t) {
  // Answers whatever version is asked: the loader must check the table's own.
  return &uhmm::detail::kPlugin;
}
