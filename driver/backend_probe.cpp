#include "backend_probe.hpp"

#include <fmt/format.h>

#include "plugin_loader.hpp"

namespace uhmm::detail {

BackendProbe probe_backend(const std::string& name, const std::string& plugin_dir) noexcept {
  BackendProbe probe;
  try {
    probe.name = name;
    LoadedPlugin loaded = load_backend_plugin(name, plugin_dir);
    if (loaded.plugin == nullptr) {
      probe.why = loaded.why;
      return probe;
    }
    probe.plugin = loaded.plugin;
    probe.plugin_path = loaded.path;
    char why[512] = {};
    const int count = loaded.plugin->device_count(why, sizeof why);
    probe.driver_too_old = count == kPluginDriverTooOld;
    if (count <= 0) {
      probe.why = fmt::format("{}: plugin loaded ({}), {}", name, loaded.path,
                              count == 0 ? std::string("the runtime reports no device") : std::string(why));
      return probe;
    }
    for (int d = 0; d < count; ++d) {
      PluginDeviceProperties props;
      if (!loaded.plugin->device_properties(d, &props, why, sizeof why)) {
        probe.devices.clear();
        probe.why = fmt::format("{}: plugin loaded ({}), device {}: {}", name, loaded.path, d, why);
        return probe;
      }
      probe.devices.push_back(props);
    }
  } catch (const std::exception& e) {
    probe.devices.clear();
    probe.why = fmt::format("{}: {}", name, e.what());
  }
  return probe;
}

}  // namespace uhmm::detail
