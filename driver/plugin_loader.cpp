#include "plugin_loader.hpp"

#include <dlfcn.h>

#include <map>
#include <mutex>
#include <utility>

#include <fmt/format.h>

namespace uhmm::detail {
namespace {

#ifndef UHMM_PLUGIN_INSTALL_DIR
#define UHMM_PLUGIN_INSTALL_DIR ""
#endif

// The directory of the shared object this function is linked into (libuhmm.so).
std::string own_directory() {
  Dl_info info{};
  if (::dladdr(reinterpret_cast<void*>(&own_directory), &info) == 0 || info.dli_fname == nullptr) return {};
  std::string path = info.dli_fname;
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

LoadedPlugin load_uncached(const std::string& backend, const std::string& plugin_dir) {
  LoadedPlugin out;
  const std::string file = fmt::format("libuhmm-backend-{}.so", backend);
  std::string tried;
  for (const std::string& dir : plugin_search_path(plugin_dir)) {
    const std::string path = dir + "/" + file;
    // RTLD_LOCAL: the plugin's runtime symbols stay out of the process's namespace.
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* err = ::dlerror();
      tried += fmt::format("; {}: {}", path, err != nullptr ? err : "dlopen failed");
      continue;
    }
    auto entry = reinterpret_cast<PluginEntryPoint>(::dlsym(handle, kPluginEntryPoint));
    if (entry == nullptr) {
      tried += fmt::format("; {}: no '{}' entry point", path, kPluginEntryPoint);
      ::dlclose(handle);
      continue;
    }
    const BackendPlugin* plugin = entry(kPluginAbiVersion);
    if (plugin == nullptr || plugin->abi_version != kPluginAbiVersion) {
      tried += fmt::format("; {}: plugin ABI version differs from this libuhmm's ({}); rebuild them together", path,
                           kPluginAbiVersion);
      ::dlclose(handle);
      continue;
    }
    // Kept open for good (see the header).
    out.plugin = plugin;
    out.path = path;
    return out;
  }
  out.why = fmt::format("{}: plugin not loaded{}", backend, tried.empty() ? "; no directory to search" : tried);
  return out;
}

}  // namespace

std::vector<std::string> plugin_search_path(const std::string& plugin_dir) {
  if (!plugin_dir.empty()) return {plugin_dir};
  std::vector<std::string> dirs;
  if (std::string own = own_directory(); !own.empty()) dirs.push_back(std::move(own));
  if (const std::string installed = UHMM_PLUGIN_INSTALL_DIR; !installed.empty() &&
      (dirs.empty() || dirs.front() != installed))
    dirs.push_back(installed);
  return dirs;
}

LoadedPlugin load_backend_plugin(const std::string& backend, const std::string& plugin_dir) noexcept {
  static std::mutex mutex;
  static std::map<std::pair<std::string, std::string>, LoadedPlugin> cache;
  try {
    std::lock_guard lock(mutex);
    auto key = std::make_pair(backend, plugin_dir);
    auto it = cache.find(key);
    if (it == cache.end()) it = cache.emplace(key, load_uncached(backend, plugin_dir)).first;
    return it->second;
  } catch (const std::exception& e) {
    LoadedPlugin failed;
    failed.why = fmt::format("{}: plugin not loaded: {}", backend, e.what());
    return failed;
  }
}

}  // namespace uhmm::detail
