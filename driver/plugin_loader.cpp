#include "plugin_loader.hpp"

#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <system_error>
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

// Why the file or directory at `path` (as lstat saw it) could be replaced by
// someone else, or "". A sticky directory (as /tmp) may be writable by all:
// others cannot replace what they do not own there, and its entries are
// checked in turn.
std::string untrusted_because(const std::string& path, const struct stat& st) {
  const uid_t me = ::geteuid();
  if (st.st_uid != 0 && st.st_uid != me)
    return fmt::format("{} is owned by uid {}, neither root nor this process's user (uid {})", path, st.st_uid, me);
  if (S_ISLNK(st.st_mode)) return {};  // a link's mode means nothing; its owner and directory do
  const bool sticky_directory = S_ISDIR(st.st_mode) && (st.st_mode & S_ISVTX) != 0;
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0 && !sticky_directory)
    return fmt::format("{} is writable by {} (mode {:04o})", path, (st.st_mode & S_IWOTH) != 0 ? "others" : "its group",
                       st.st_mode & 07777);
  return {};
}

// Checks `path` and every directory above it, up to /. "" when each is
// trusted, or when one is missing (dlopen then says what is missing).
std::string untrusted_on_the_way(std::string path) {
  for (;;) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) return {};
    if (std::string why = untrusted_because(path, st); !why.empty()) return why;
    const auto slash = path.rfind('/');
    if (slash == std::string::npos || path == "/") return {};
    path = slash == 0 ? std::string("/") : path.substr(0, slash);
  }
}

// A plugin runs inside this process with its privileges: one that someone
// else could replace (a file or directory on its way writable by others, or
// owned by another user) would run their code, in a setuid or file-capability
// program with privileges they lack. Checks the path as named and as resolved.
std::string untrusted_plugin(const std::string& file) {
  std::error_code ec;
  const std::string named = std::filesystem::absolute(file, ec).string();
  if (std::string why = untrusted_on_the_way(ec ? file : named); !why.empty()) return why;
  const std::unique_ptr<char, decltype(&std::free)> resolved(::realpath(file.c_str(), nullptr), &std::free);
  return resolved != nullptr ? untrusted_on_the_way(resolved.get()) : std::string();
}

LoadedPlugin load_uncached(const std::string& backend, const std::string& plugin_dir) {
  LoadedPlugin out;
  const std::string file = fmt::format("libuhmm-backend-{}.so", backend);
  std::string tried;
  for (const std::string& dir : plugin_search_path(plugin_dir)) {
    const std::string path = dir + "/" + file;
    if (std::string why = untrusted_plugin(path); !why.empty()) {
      tried += fmt::format("; {}: refused: {} (a plugin and the directories above it must be owned by root or this "
                           "user and writable by no one else)",
                           path, why);
      continue;
    }
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
