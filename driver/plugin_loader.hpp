// Finds and loads GPU backend plugins (libuhmm-backend-<name>.so). Search
// order: UHMM_PLUGIN_DIR when set (only there), else the directory libuhmm.so
// was loaded from, then the install directory (${libdir}/uhmm). A plugin that
// someone else could replace (it, or a directory above it, is writable by
// group or others, or owned by neither root nor the effective user) is
// refused, with the reason in `why`. A loaded plugin
// stays loaded for the life of the process: its GPU runtime must not be
// unloaded under live backends or at-exit destructors.
#pragma once

#include <string>
#include <vector>

#include "plugin_abi.hpp"

namespace uhmm::detail {

struct LoadedPlugin {
  const BackendPlugin* plugin = nullptr;  // nullptr when it could not be loaded
  std::string path;                       // the file loaded, when one was
  std::string why;                        // why not, naming each place searched
};

// The directories searched for plugins, in order, for a given UHMM_PLUGIN_DIR
// (empty: not set).
std::vector<std::string> plugin_search_path(const std::string& plugin_dir);

// Loads (once per process and name) the plugin of `backend` ("cuda", "hip").
// Thread-safe; never throws.
LoadedPlugin load_backend_plugin(const std::string& backend, const std::string& plugin_dir) noexcept;

}  // namespace uhmm::detail
