#include "managed_comparison.hpp"

#include <dlfcn.h>
#include <unistd.h>

#include <filesystem>
#include <stdexcept>

#include <fmt/format.h>

#include "uhmm/context.hpp"

namespace uhmm::bench {
namespace {

std::filesystem::path own_directory() {
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::filesystem::path(".") : exe.parent_path();
}

}  // namespace

ManagedBaseline::ManagedBaseline(const std::string& backend)
    : name_(fmt::format("{}MallocManaged + prefetch", backend == "hip" ? "hip" : "cuda")) {
  if (backend != "cuda" && backend != "hip")
    throw std::runtime_error(fmt::format("no managed-memory baseline for the {} backend", backend));
  // UHMM_PLUGIN_DIR as the library reads it (ignored in a privileged process).
  const std::string dir = ContextOptions::from_environment().plugin_dir;
  const std::filesystem::path path =
      (!dir.empty() ? std::filesystem::path(dir) : own_directory()) /
      fmt::format("libuhmm-managed-baseline-{}.so", backend);
  // Never unloaded: a GPU runtime must not be unloaded under its own atexit work.
  void* lib = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr)
    throw std::runtime_error(fmt::format("cannot load the {} baseline {}: {}", backend, path.string(), ::dlerror()));
  run_ = reinterpret_cast<UhmmManagedBaselineFn>(::dlsym(lib, kManagedBaselineEntry));
  if (run_ == nullptr)
    throw std::runtime_error(fmt::format("{} has no {} entry point", path.string(), kManagedBaselineEntry));
}

UhmmManagedResult ManagedBaseline::run(std::size_t bytes, unsigned rounds, std::size_t fault_pages,
                                       int device) const {
  UhmmManagedRequest request;
  request.device = device;
  request.bytes = bytes;
  request.rounds = rounds;
  request.fault_pages = static_cast<std::uint32_t>(fault_pages);
  UhmmManagedResult result;
  if (run_(&request, &result) != 0)
    throw std::runtime_error(fmt::format("{} baseline, {} bytes: {}", name_, bytes, result.error));
  return result;
}

}  // namespace uhmm::bench
