// The GPU plugin on two emulated devices (UHMM_EMULATED_DEVICES=2, set before
// the runtime starts): what only shows with more than one device.
#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "../../driver/backend_probe.hpp"
#include "emulated_runtime.hpp"

namespace uhmm::detail {
namespace {

// Before main, so before anything starts the emulated runtime.
const bool kTwoDevices = [] { return ::setenv("UHMM_EMULATED_DEVICES", "2", 1) == 0; }();

int current_device() {
  int d = -1;
  EXPECT_EQ(emuGetDevice(&d), emuSuccess);
  return d;
}

// Issue 16, defect 4: every entry point used to leave its device current, so
// an application's next allocation or launch on that thread went to uhmm's
// device. The application's choice (device 0) must survive each call on device 1.
TEST(EmulatedPluginDefects, TheApplicationsCurrentDeviceSurvivesEveryCall) {
  ASSERT_TRUE(kTwoDevices);
  ASSERT_EQ(emuSetDevice(0), emuSuccess);
  const BackendProbe probe = probe_backend("emulated", UHMM_TEST_EMULATED_PLUGIN_DIR);
  ASSERT_TRUE(probe.available()) << probe.why;
  ASSERT_EQ(probe.devices.size(), 2u);
  EXPECT_EQ(current_device(), 0) << "after probing";
  char why[256] = {};
  std::unique_ptr<Backend> backend(probe.plugin->create_backend(1, 8 * kChunkSize, why, sizeof why));
  ASSERT_NE(backend, nullptr) << why;
  EXPECT_EQ(current_device(), 0) << "after create_backend";
  DeviceAddress chunk = 0;
  StreamId stream = 0;
  EventId event = 0;
  void* pinned = nullptr;
  ASSERT_TRUE(backend->allocate_chunk(&chunk));
  EXPECT_EQ(current_device(), 0) << "after allocate_chunk";
  ASSERT_TRUE(backend->create_stream(&stream));
  EXPECT_EQ(current_device(), 0) << "after create_stream";
  ASSERT_TRUE(backend->allocate_host(kPageSize, &pinned));
  EXPECT_EQ(current_device(), 0) << "after allocate_host";
  ASSERT_TRUE(backend->create_event(&event));
  const HostToDevicePage page{pinned, chunk};
  ASSERT_TRUE(backend->copy_to_device(stream, {&page, 1}, nullptr));
  EXPECT_EQ(current_device(), 0) << "after copy_to_device";
  ASSERT_TRUE(backend->record_event(stream, event));
  ASSERT_TRUE(backend->synchronize_event(event));
  ASSERT_TRUE(backend->synchronize(stream));
  EXPECT_EQ(current_device(), 0) << "after events and synchronize";
  backend->destroy_event(event);
  backend->free_host(pinned);
  backend->destroy_stream(stream);
  backend->free_chunk(chunk);
  backend.reset();
  EXPECT_EQ(current_device(), 0) << "after teardown";
}

}  // namespace
}  // namespace uhmm::detail
