// drm_devices(): the GPUs the kernel's DRM subsystem lists, through libdrm
// (drmGetDevices2): vendor, PCI bus id, render node, kernel driver, and VRAM
// where the driver reports it in sysfs (amdgpu's mem_info_vram_total).
#include <fcntl.h>
#include <unistd.h>
#include <xf86drm.h>

#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "uhmm/detail/system_report.hpp"

namespace uhmm::detail {
namespace {

std::string vendor_name(std::uint16_t id) {
  switch (id) {
    case 0x10de: return "NVIDIA";
    case 0x1002: return "AMD";
    case 0x8086: return "Intel";
    default: return fmt::format("{:#06x}", id);
  }
}

std::string kernel_driver(const char* node) {
  const int fd = ::open(node, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  std::string name;
  if (drmVersionPtr version = drmGetVersion(fd); version != nullptr) {
    if (version->name != nullptr) name.assign(version->name, static_cast<std::size_t>(version->name_len));
    drmFreeVersion(version);
  }
  ::close(fd);
  return name;
}

std::uint64_t sysfs_vram_bytes(const std::string& pci_bus_id) {
  std::ifstream in("/sys/bus/pci/devices/" + pci_bus_id + "/mem_info_vram_total");
  std::uint64_t bytes = 0;
  return (in >> bytes) ? bytes : 0;
}

}  // namespace

std::vector<DrmDeviceReport> drm_devices() {
  std::vector<DrmDeviceReport> out;
  const int count = drmGetDevices2(0, nullptr, 0);
  if (count <= 0) return out;
  std::vector<drmDevicePtr> devices(static_cast<std::size_t>(count));
  const int got = drmGetDevices2(0, devices.data(), count);
  for (int i = 0; i < got; ++i) {
    const drmDevicePtr d = devices[static_cast<std::size_t>(i)];
    DrmDeviceReport report;
    if (d->bustype == DRM_BUS_PCI && d->businfo.pci != nullptr && d->deviceinfo.pci != nullptr) {
      report.vendor_id = d->deviceinfo.pci->vendor_id;
      report.device_id = d->deviceinfo.pci->device_id;
      report.pci_bus_id = fmt::format("{:04x}:{:02x}:{:02x}.{:x}", d->businfo.pci->domain, d->businfo.pci->bus,
                                      d->businfo.pci->dev, d->businfo.pci->func);
      report.memory_bytes = sysfs_vram_bytes(report.pci_bus_id);
    }
    report.vendor = vendor_name(report.vendor_id);
    if ((d->available_nodes & (1 << DRM_NODE_RENDER)) != 0) {
      report.render_node = d->nodes[DRM_NODE_RENDER];
      report.driver = kernel_driver(d->nodes[DRM_NODE_RENDER]);
    }
    out.push_back(std::move(report));
  }
  drmFreeDevices(devices.data(), got);
  return out;
}

}  // namespace uhmm::detail
