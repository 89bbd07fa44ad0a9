// Backend selection (driver/open_devices.cpp, plugin_loader.cpp): GPU backends
// are plugins found beside libuhmm.so or in UHMM_PLUGIN_DIR; an explicit cuda
// or hip backend with no GPU (or no plugin) is Errc::device_error saying why,
// never a crash; auto falls back to the cpu backend.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <utility>

#include "uhmm/uhmm.hpp"

namespace {

using namespace uhmm;
namespace fs = std::filesystem;

bool gpu_device_node_present() {
  return ::access("/dev/nvidiactl", F_OK) == 0 || ::access("/dev/kfd", F_OK) == 0;
}

ContextOptions options_for(const std::string& backend) {
  ContextOptions o;
  o.backend = backend;
  o.device_pool_bytes = std::size_t{16} << 20;
  return o;
}

// Context construction must fail with device_error; returns the message.
std::string device_error_of(const ContextOptions& o) {
  try {
    Context ctx(o);
    ADD_FAILURE() << "a context was created on backend " << o.backend;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::device_error) << e.what();
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a uhmm::Error: " << e.what();
  }
  return {};
}

TEST(BackendSelection, ExplicitGpuBackendWithoutAGpuIsADeviceErrorSayingWhy) {
  if (gpu_device_node_present()) GTEST_SKIP() << "a GPU driver's device node is here";
  for (const char* backend : {"cuda", "hip"}) {
    SCOPED_TRACE(backend);
    const std::string what = device_error_of(options_for(backend));
    EXPECT_NE(what.find(std::string("backend '") + backend + "'"), std::string::npos) << what;
    // Either the plugin is not built here (sanitizer builds) or its runtime
    // found no device: both are said, with the runtime's own words.
    const bool not_loaded = what.find("plugin not loaded") != std::string::npos;
    const bool no_device = what.find("plugin loaded") != std::string::npos &&
                           what.find("GetDeviceCount") != std::string::npos;
    EXPECT_TRUE(not_loaded || no_device) << what;
  }
}

TEST(BackendSelection, AutoWithoutAGpuUsesTheCpuBackend) {
  if (gpu_device_node_present()) GTEST_SKIP() << "a GPU driver's device node is here";
  Context ctx(options_for("auto"));
  ASSERT_EQ(ctx.device_count(), 1u);
  EXPECT_EQ(ctx.device_info(ctx.device_owner(0)).backend, "cpu");
}

TEST(BackendSelection, PluginDirWithoutThePluginNamesWhereItLooked) {
  ContextOptions o = options_for("cuda");
  o.plugin_dir = "/nonexistent/uhmm-plugins";
  const std::string what = device_error_of(o);
  EXPECT_NE(what.find("plugin not loaded"), std::string::npos) << what;
  EXPECT_NE(what.find("/nonexistent/uhmm-plugins/libuhmm-backend-cuda.so"), std::string::npos) << what;
}

TEST(BackendSelection, ALibraryWithoutTheEntryPointIsNotTakenForAPlugin) {
  // libuhmm.so itself, under a plugin's name: it loads, but is no plugin.
  Dl_info info{};
  const char* (*exported)(Errc) noexcept = &uhmm::to_string;
  ASSERT_NE(::dladdr(reinterpret_cast<void*>(exported), &info), 0);
  const fs::path dir = fs::temp_directory_path() / ("uhmm-plugin-test-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  fs::create_symlink(fs::absolute(info.dli_fname), dir / "libuhmm-backend-hip.so");
  ContextOptions o = options_for("hip");
  o.plugin_dir = dir.string();
  const std::string what = device_error_of(o);
  EXPECT_NE(what.find("no 'uhmm_backend_plugin' entry point"), std::string::npos) << what;
  fs::remove_all(dir);
}

// ---- through the test plugin (tests/plugins/): the cpu backend named "cuda" ----

TEST(BackendSelection, AGpuBackendOpensOneDevicePerReportedGpuUpToUhmmDevices) {
  ContextOptions o = options_for("cuda");
  o.plugin_dir = UHMM_TEST_PLUGINS;
  {
    Context one(o);
    ASSERT_EQ(one.device_count(), 1u);
    EXPECT_EQ(one.device_info(one.device_owner(0)).name, "cpu-as-gpu0");
  }
  o.devices = 8;  // the plugin reports 2
  Context two(o);
  ASSERT_EQ(two.device_count(), 2u);
  EXPECT_EQ(two.device_info(two.device_owner(1)).name, "cpu-as-gpu1");
}

TEST(BackendSelection, AutoTakesAGpuBackendWhoseRuntimeReportsADevice) {
  ContextOptions o = options_for("auto");
  o.plugin_dir = UHMM_TEST_PLUGINS;
  Context ctx(o);
  EXPECT_EQ(ctx.device_info(ctx.device_owner(0)).name, "cpu-as-gpu0");
}

TEST(BackendSelection, APercentagePoolIsThatShareOfTheDevicesFreeMemory) {
  ContextOptions o = options_for("cuda");
  o.plugin_dir = UHMM_TEST_PLUGINS;
  o.device_pool_percent = 50;  // of the plugin's 64 MiB free
  Context ctx(o);
  EXPECT_EQ(ctx.device_info(ctx.device_owner(0)).memory_bytes, std::uint64_t{32} << 20);
  o.device_pool_percent = 1;  // 655 KiB: less than one chunk
  try {
    Context small(o);
    ADD_FAILURE() << "a pool below one chunk was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument) << e.what();
    EXPECT_NE(std::string(e.what()).find("UHMM_DEVICE_POOL=1%"), std::string::npos) << e.what();
  }
}

TEST(BackendSelection, PagesMigrateThroughAPluginBackend) {
  ContextOptions o = options_for("cuda");
  o.plugin_dir = UHMM_TEST_PLUGINS;
  Context ctx(o);
  constexpr std::size_t kBytes = std::size_t{1} << 20;
  auto* w = static_cast<std::uint64_t*>(ctx.allocate(kBytes));
  for (std::size_t i = 0; i < kBytes / 8; ++i) w[i] = i * 7 + 3;
  const MigrationResult r = ctx.migrate_to_device(w, kBytes);
  EXPECT_EQ(r.migrated, kBytes / kPageSize) << r.status.message;
  std::size_t bad = 0;
  for (std::size_t i = 0; i < kBytes / 8; ++i) bad += w[i] != i * 7 + 3;  // faults bring them back
  EXPECT_EQ(bad, 0u);
  ctx.free(w);
}

// A copy of the test plugin in base/name, the directory and the file with
// the given modes; returns the directory.
fs::path plugin_copy(const fs::path& base, const std::string& name, fs::perms dir_mode, fs::perms file_mode) {
  const fs::path dir = base / name;
  fs::create_directories(dir);
  const fs::path file = dir / "libuhmm-backend-cuda.so";
  fs::copy_file(fs::path(UHMM_TEST_PLUGINS) / "libuhmm-backend-cuda.so", file);
  fs::permissions(file, file_mode);
  fs::permissions(dir, dir_mode);
  return dir;
}

std::string refusal_of(const fs::path& dir) {
  ContextOptions o = options_for("cuda");
  o.plugin_dir = dir.string();
  return device_error_of(o);
}

TEST(BackendSelection, APluginOthersCouldReplaceIsRefusedSayingWhy) {
  using enum fs::perms;
  const fs::path base = fs::temp_directory_path() / ("uhmm-plugin-trust-" + std::to_string(::getpid()));
  fs::remove_all(base);
  fs::create_directories(base);
  fs::permissions(base, owner_all | group_read | group_exec | others_read | others_exec);
  const fs::perms rwxr_xr_x = owner_all | group_read | group_exec | others_read | others_exec;
  const fs::perms rw_r__r__ = owner_read | owner_write | group_read | others_read;

  const fs::path open_dir = plugin_copy(base, "dir-0777", all, rw_r__r__);
  std::string what = refusal_of(open_dir);
  EXPECT_NE(what.find("refused: " + open_dir.string() + " is writable by others (mode 0777)"), std::string::npos)
      << what;
  what = refusal_of(plugin_copy(base, "file-0666", rwxr_xr_x, rw_r__r__ | group_write | others_write));
  EXPECT_NE(what.find("libuhmm-backend-cuda.so is writable by others (mode 0666)"), std::string::npos) << what;
  what = refusal_of(plugin_copy(base, "file-0664", rwxr_xr_x, rw_r__r__ | group_write));
  EXPECT_NE(what.find("libuhmm-backend-cuda.so is writable by its group (mode 0664)"), std::string::npos) << what;
  if (::geteuid() == 0) {
    const fs::path foreign = plugin_copy(base, "file-of-nobody", rwxr_xr_x, rw_r__r__);
    ASSERT_EQ(::chown((foreign / "libuhmm-backend-cuda.so").c_str(), 65534, 65534), 0);
    what = refusal_of(foreign);
    EXPECT_NE(what.find("is owned by uid 65534, neither root nor this process's user"), std::string::npos) << what;
  }

  for (const auto& [name, dir_mode] : {std::pair{"dir-0755", rwxr_xr_x}, std::pair{"dir-1777", all | sticky_bit}}) {
    SCOPED_TRACE(name);
    ContextOptions o = options_for("cuda");
    o.plugin_dir = plugin_copy(base, name, dir_mode, rw_r__r__).string();
    Context ctx(o);
    EXPECT_EQ(ctx.device_info(ctx.device_owner(0)).name, "cpu-as-gpu0");
  }
  fs::remove_all(base);
}

TEST(BackendSelection, APluginFromAnotherBuildIsRefusedNotCalled) {
  ContextOptions o = options_for("cuda");
  o.plugin_dir = UHMM_TEST_PLUGINS_OTHER_ABI;
  const std::string what = device_error_of(o);
  EXPECT_NE(what.find("plugin ABI version differs"), std::string::npos) << what;
}

}  // namespace
