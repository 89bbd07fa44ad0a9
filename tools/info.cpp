// uhmm-info: what uhmm finds on this machine: the backends (and why a GPU
// backend is unavailable), the GPUs libdrm lists joined with what the CUDA /
// HIP runtimes say about them, the pool configuration from UHMM_* and the
// userfaultfd features of the running kernel.
//
//   uhmm-info            text
//   uhmm-info --json     one JSON object
//   uhmm-info --open     also opens a Context as UHMM_* ask (exit 1 with the error if that fails)
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <string>
#include <vector>

#include "uhmm/detail/system_report.hpp"
#include "uhmm/uhmm.hpp"

namespace {

using namespace uhmm;
using json = nlohmann::ordered_json;

json capabilities_json(std::uint32_t caps) {
  json out = json::array();
  const std::pair<std::uint32_t, const char*> names[] = {
      {kCapPeerCopy, "peer_copy"}, {kCapCopyKernels, "copy_kernels"}, {kCapVirtualMemory, "virtual_memory"},
      {kCapHostKernels, "host_kernels"}, {kCapHostVisibleMemory, "host_visible_memory"}};
  for (const auto& [bit, name] : names)
    if ((caps & bit) != 0) out.push_back(name);
  return out;
}

// The whole report as JSON; the text output is printed from it too.
json gather(bool open_context) {
  json report;
  report["version"] = UHMM_VERSION;
  json options;
  ContextOptions o;
  try {
    o = ContextOptions::from_environment();
    options["backend"] = o.backend;
    if (o.device_pool_percent > 0)
      options["device_pool"] = fmt::format("{}% of free device memory", o.device_pool_percent);
    else
      options["device_pool"] = fmt::format("{} bytes ({} MiB) per device", o.device_pool_bytes, o.device_pool_bytes >> 20);
    options["devices"] = o.devices;
    options["plugin_dir"] = o.plugin_dir.empty() ? "(not set)" : o.plugin_dir;
  } catch (const Error& e) {
    options["error"] = e.what();
  }
  report["options"] = options;

  json backends = json::array();
  backends.push_back({{"name", "cpu"}, {"available", true}, {"why", "built in (a device emulated in host memory)"}});
  std::vector<detail::BackendReport> gpu = detail::probe_gpu_backends(o.plugin_dir);
  std::string auto_choice = "cpu";
  for (const auto& b : gpu) {
    json devices = json::array();
    for (const auto& d : b.devices)
      devices.push_back({{"name", d.name}, {"pci_bus_id", d.pci_bus_id}, {"total_bytes", d.total_bytes},
                         {"free_bytes", d.free_bytes}, {"capabilities", capabilities_json(d.capabilities)}});
    backends.push_back({{"name", b.name}, {"available", b.available}, {"plugin", b.plugin_path},
                        {"why", b.available ? "" : b.why}, {"driver_too_old", b.driver_too_old},
                        {"devices", devices}});
    if (b.available && auto_choice == "cpu" && b.name != "emulated") auto_choice = b.name;  // emulated: tests only
  }
  report["backends"] = backends;
  report["auto_selects"] = auto_choice;
  report["plugin_search_path"] = detail::plugin_search_directories(o.plugin_dir);

  json gpus = json::array();
  for (const auto& d : detail::drm_devices()) {
    json g = {{"vendor", d.vendor}, {"vendor_id", d.vendor_id}, {"device_id", d.device_id},
              {"pci_bus_id", d.pci_bus_id}, {"render_node", d.render_node}, {"driver", d.driver},
              {"memory_bytes", d.memory_bytes}};
    // Joined with the runtime's view by PCI bus id.
    for (const auto& b : gpu)
      for (const auto& r : b.devices)
        if (!d.pci_bus_id.empty() && r.pci_bus_id == d.pci_bus_id)
          g["runtime"] = {{"backend", b.name}, {"name", r.name}, {"total_bytes", r.total_bytes}};
    gpus.push_back(g);
  }
  report["drm_devices"] = gpus;

  const detail::UserfaultfdReport uffd = detail::probe_userfaultfd();
  report["userfaultfd"] = {{"available", uffd.available}, {"why", uffd.why}, {"features", uffd.feature_names}};

  if (open_context) {
    try {
      Context ctx;
      json opened = json::array();
      for (std::size_t i = 0; i < ctx.device_count(); ++i) {
        const DeviceInfo info = ctx.device_info(ctx.device_owner(i));
        opened.push_back({{"backend", info.backend}, {"name", info.name}, {"pool_bytes", info.memory_bytes}});
      }
      report["context"] = {{"opened", true}, {"devices", opened}};
    } catch (const Error& e) {
      report["context"] = {{"opened", false}, {"error", e.what()}, {"code", to_string(e.code())}};
    }
  }
  return report;
}

void print_text(const json& r) {
  fmt::print("uhmm {}\n\nbackends:\n", r["version"].get<std::string>());
  bool any_gpu = false;
  for (const auto& b : r["backends"]) {
    const bool ok = b["available"].get<bool>();
    fmt::print("  {:<5} {}\n", b["name"].get<std::string>(),
               ok ? (b["name"] == "cpu" ? b["why"].get<std::string>()
                                        : fmt::format("available ({})", b["plugin"].get<std::string>()))
                  : "unavailable: " + b["why"].get<std::string>());
    if (b.contains("devices"))
      for (const auto& d : b["devices"]) {
        any_gpu = true;
        fmt::print("        {} (pci {}): {} MiB, {} MiB free, {}\n", d["name"].get<std::string>(),
                   d["pci_bus_id"].get<std::string>(), d["total_bytes"].get<std::uint64_t>() >> 20,
                   d["free_bytes"].get<std::uint64_t>() >> 20, d["capabilities"].dump());
      }
  }
  for (const auto& b : r["backends"])
    if (b.value("driver_too_old", false))
      fmt::print("\n  WARNING: {}: the GPU driver is too old for this build; its GPUs are NOT used.\n\n",
                 b["name"].get<std::string>());
  if (!any_gpu) fmt::print("  no GPU: no GPU backend reports a device\n");
  fmt::print("  UHMM_BACKEND=auto selects: {}\n", r["auto_selects"].get<std::string>());
  fmt::print("  plugin search path:");
  for (const auto& d : r["plugin_search_path"]) fmt::print(" {}", d.get<std::string>());
  fmt::print("\n\nGPUs (libdrm):\n");
  if (r["drm_devices"].empty()) fmt::print("  none\n");
  for (const auto& g : r["drm_devices"]) {
    fmt::print("  {} {:04x}:{:04x} pci {} {} driver {}", g["vendor"].get<std::string>(), g["vendor_id"].get<int>(),
               g["device_id"].get<int>(), g["pci_bus_id"].get<std::string>(), g["render_node"].get<std::string>(),
               g["driver"].get<std::string>());
    if (g["memory_bytes"].get<std::uint64_t>() > 0) fmt::print(", {} MiB VRAM", g["memory_bytes"].get<std::uint64_t>() >> 20);
    if (g.contains("runtime"))
      fmt::print(" = {} '{}'", g["runtime"]["backend"].get<std::string>(), g["runtime"]["name"].get<std::string>());
    fmt::print("\n");
  }
  fmt::print("\noptions (UHMM_*):\n");
  for (const auto& [k, v] : r["options"].items())
    fmt::print("  {}: {}\n", k, v.is_string() ? v.get<std::string>() : v.dump());
  const auto& u = r["userfaultfd"];
  fmt::print("\nuserfaultfd: {}\n", u["available"].get<bool>() ? "available" : "unavailable: " + u["why"].get<std::string>());
  fmt::print("  kernel features:");
  for (const auto& f : u["features"]) fmt::print(" {}", f.get<std::string>());
  fmt::print("\n");
  if (r.contains("context")) {
    const auto& c = r["context"];
    if (c["opened"].get<bool>()) {
      fmt::print("\ncontext: opened");
      for (const auto& d : c["devices"])
        fmt::print("; device {} '{}' pool {} MiB", d["backend"].get<std::string>(), d["name"].get<std::string>(),
                   d["pool_bytes"].get<std::uint64_t>() >> 20);
      fmt::print("\n");
    } else {
      fmt::print("\ncontext: not opened: {} ({})\n", c["error"].get<std::string>(), c["code"].get<std::string>());
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"uhmm-info: the backends, GPUs, pool configuration and userfaultfd features uhmm finds here"};
  bool as_json = false;
  bool open_context = false;
  app.add_flag("--json", as_json, "print one JSON object");
  app.add_flag("--open", open_context, "also open a Context as the UHMM_* variables ask; exit 1 if that fails");
  CLI11_PARSE(app, argc, argv);
  try {
    const json report = gather(open_context);
    if (as_json)
      fmt::print("{}\n", report.dump(2));
    else
      print_text(report);
    return report.contains("context") && !report["context"]["opened"].get<bool>() ? 1 : 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "uhmm-info: %s\n", e.what());
    return 1;
  }
}
