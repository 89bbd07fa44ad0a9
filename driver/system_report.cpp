// probe_gpu_backends(): backend_probe.hpp's answers in the public report types.
#include "uhmm/detail/system_report.hpp"

#include "backend_probe.hpp"
#include "plugin_loader.hpp"

#include <iterator>

namespace uhmm::detail {

std::vector<BackendReport> probe_gpu_backends(const std::string& plugin_dir) {
  std::vector<BackendReport> out;
  std::vector<const char*> names(std::begin(kGpuBackends), std::end(kGpuBackends));
  names.push_back(kEmulatedBackend);
  for (const char* name : names) {
    const BackendProbe probe = probe_backend(name, plugin_dir);
    if (name == kEmulatedBackend && probe.plugin == nullptr) continue;  // only where a test's directory has it
    BackendReport report;
    report.name = name;
    report.available = probe.available();
    report.plugin_path = probe.plugin_path;
    report.why = probe.why;
    report.driver_too_old = probe.driver_too_old;
    for (const PluginDeviceProperties& p : probe.devices)
      report.devices.push_back({p.name, p.pci_bus_id, p.total_bytes, p.free_bytes, p.capabilities});
    out.push_back(std::move(report));
  }
  return out;
}

std::vector<std::string> plugin_search_directories(const std::string& plugin_dir) {
  return plugin_search_path(plugin_dir);
}

}  // namespace uhmm::detail
