// The GPU plugin on two emulated devices (UHMM_EMULATED_DEVICES=2, set before
// the runtime starts): what only shows with more than one device.
#include <gtest/gtest.h>

#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../../driver/backend_probe.hpp"
#include "emulated_runtime.hpp"
#include "test_support.hpp"
#include "uhmm/uhmm.hpp"

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

namespace uhmm::test {
namespace {

ContextOptions two_device_options(unsigned devices) {
  ContextOptions o;
  o.backend = "emulated";
  o.plugin_dir = UHMM_TEST_EMULATED_PLUGIN_DIR;
  o.device_pool_bytes = std::uint64_t{16} << 20;
  o.devices = devices;
  o.fault_mode = test_fault_mode();
  return o;
}

// Issue 16, defect 3: probing made every device current and asked for its
// free memory, which creates a context (about 0.5 GiB on a GPU) on each, even
// with UHMM_DEVICES=1. Contexts now exist only on the devices opened.
TEST(EmulatedPluginDefects, ProbingCreatesNoContextAndOnlyOpenedDevicesGetOne) {
  emuTestForgetContexts();  // as in a fresh process
  const unsigned before0 = emuTestContextsCreated(0), before1 = emuTestContextsCreated(1);
  const detail::BackendProbe probe = detail::probe_backend("emulated", UHMM_TEST_EMULATED_PLUGIN_DIR);
  ASSERT_TRUE(probe.available()) << probe.why;
  EXPECT_EQ(probe.devices.size(), 2u);
  EXPECT_EQ(emuTestContextsCreated(0), before0) << "probing";
  EXPECT_EQ(emuTestContextsCreated(1), before1) << "probing";
  {
    Context ctx(two_device_options(1));
    EXPECT_EQ(ctx.device_count(), 1u);
  }
  EXPECT_EQ(emuTestContextsCreated(0), before0 + 1);
  EXPECT_EQ(emuTestContextsCreated(1), before1) << "UHMM_DEVICES=1 opened only device 0";
}

// Issue 16, defect 3: one device no context can be made on (exclusive-process
// mode, held by another job) made the whole backend unavailable; it is skipped.
TEST(EmulatedPluginDefects, AnUnusableDeviceIsSkipped) {
  emuTestSetDeviceUnusable(0, 1);
  try {
    Context ctx(two_device_options(2));
    ASSERT_EQ(ctx.device_count(), 1u);
    EXPECT_EQ(ctx.device_info(ctx.device_owner(0)).name, "uhmm emulated GPU 1");
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what();
  }
  emuTestSetDeviceUnusable(0, 0);
}

struct AddOne {
  device_span<std::uint64_t> x;
  UHMM_HOST_DEVICE void operator()(std::size_t i) const { x[i] += 1; }
};

// Found by the stress test on two emulated devices: a kernel goes to the
// current device, and a launch on another device's stream fails (invalid
// resource handle), so launch_device on any device but the application's
// current one failed. uhmm::launch now makes the launch's device current
// for the launch and gives the application's back.
TEST(EmulatedLaunchDevice, LaunchesOnADeviceOtherThanTheCurrentOne) {
  Context ctx(two_device_options(2));
  TestArrays arrays(ctx);
  auto data = arrays.make<std::uint64_t>(4 * kPageSize / 8);
  ASSERT_EQ(emuSetDevice(0), emuSuccess);
  for (std::size_t d = 0; d < 2; ++d) {
    ctx.launch_device_on(
        ctx.device_owner(d),
        [](const LaunchStream& stream, device_span<std::uint64_t> x) { launch(stream, x.size(), AddOne{x}); },
        data);
    int current = -1;
    ASSERT_EQ(emuGetDevice(&current), emuSuccess);
    EXPECT_EQ(current, 0) << "after a launch on device " << d;
  }
  EXPECT_EQ(data[0], 2u);
  EXPECT_EQ(data[data.size() - 1], 2u);
}

// Issue 16, defect 6: peer access was never enabled, so every
// device-to-device page went through host memory (the runtime stages a copy
// between devices without it). The plugin enables it where the runtime
// allows, on the first batch that reads the peer.
class EmulatedPeerAccess : public ::testing::Test {
 protected:
  void SetUp() override { emuTestForgetPeerAccess(); }
  void TearDown() override { emuTestSetPeerCapable(1, 0, 1); }
  // Moves a range's pages to device 0 (`scattered`: one by one, last first,
  // so that no two are adjacent on device 0 in the range's order), then the
  // whole range to device 1, and returns the counts of that move.
  emuTestCounts move_to_device_1(std::size_t pages, bool scattered) {
    Context ctx(two_device_options(2));
    TestArrays arrays(ctx);
    auto data = arrays.make<std::uint64_t>(pages * kPageSize / 8);
    fill(data.data(), pages * kPageSize, 6);
    if (!scattered) {
      EXPECT_EQ(ctx.migrate_to_device(data.data(), pages * kPageSize, ctx.device_owner(0)).migrated, pages);
    }
    for (std::size_t page = pages; scattered && page-- > 0;) {
      EXPECT_EQ(ctx.migrate_to_device(data.data() + page * kPageSize / 8, kPageSize, ctx.device_owner(0)).migrated,
                1u);
    }
    const emuTestCounts before = emuTestGetCounts();
    EXPECT_EQ(ctx.migrate_to_device(data.data(), pages * kPageSize, ctx.device_owner(1)).migrated, pages);
    emuTestCounts after = emuTestGetCounts();
    after.peer_direct -= before.peer_direct;
    after.peer_staged -= before.peer_staged;
    after.kernels -= before.kernels;
    expect_pattern(data.data(), pages * kPageSize, 6);
    return after;
  }
};

TEST_F(EmulatedPeerAccess, PeerCopiesGoDirect) {
  const emuTestCounts moved = move_to_device_1(16, false);
  EXPECT_EQ(moved.peer_staged, 0u) << "a copy went through host memory";
  EXPECT_GT(moved.peer_direct, 0u);
}

// Scattered pages take the gather/scatter kernel, which may read a peer's
// memory only with access enabled (else an illegal address, a sticky error).
TEST_F(EmulatedPeerAccess, TheCopyKernelReadsAPeerWithAccessEnabled) {
  const emuTestCounts moved = move_to_device_1(32, true);
  EXPECT_GT(moved.kernels, 0u) << "32 scattered runs from device 0 were copied by DMA, not the kernel";
  EXPECT_EQ(moved.peer_staged, 0u);
}

// Where the runtime says device 1 cannot reach device 0, nothing is enabled:
// the copies go through host memory, and no kernel reads the peer.
TEST_F(EmulatedPeerAccess, WithoutPeerSupportCopiesAreStagedAndNoKernelReadsThePeer) {
  emuTestSetPeerCapable(1, 0, 0);
  const emuTestCounts moved = move_to_device_1(32, true);
  EXPECT_EQ(moved.kernels, 0u);
  EXPECT_EQ(moved.peer_direct, 0u);
  EXPECT_GT(moved.peer_staged, 0u);
}

}  // namespace
}  // namespace uhmm::test

namespace uhmm::detail {
namespace {

// Holds a stream's queue until the test opens it (a host function that waits
// on nothing the runtime does).
struct Gate {
  std::mutex mutex;
  std::condition_variable opened_cv;
  bool opened = false;
  static void wait(void* user) {
    auto* self = static_cast<Gate*>(user);
    std::unique_lock lock(self->mutex);
    self->opened_cv.wait(lock, [&] { return self->opened; });
  }
  void open() {
    std::lock_guard lock(mutex);
    opened = true;
    opened_cv.notify_all();
  }
};

// Both emulated devices' backends from one probe.
struct TwoBackends {
  BackendProbe probe = probe_backend("emulated", UHMM_TEST_EMULATED_PLUGIN_DIR);
  std::unique_ptr<Backend> device[2];
  TwoBackends() {
    for (int d = 0; d < 2 && probe.available(); ++d) {
      char why[256] = {};
      device[d].reset(probe.plugin->create_backend(d, 8 * kChunkSize, why, sizeof why));
      EXPECT_NE(device[d], nullptr) << why;
    }
  }
  bool ok() const { return device[0] != nullptr && device[1] != nullptr; }
};

std::uint64_t first_word(const void* page) { return *static_cast<const std::uint64_t*>(page); }

// Issue 16, defect 5: a backend knew only its own pinned allocations, so
// memory device 0's backend pinned (a context's staging pool, portable) was
// staged again by device 1's: copied into device 1's staging at the call
// instead of read in place by the DMA. With device 1's stream held, a page
// written after copy_to_device returned shows which one happened.
TEST(EmulatedPluginDefects, AnotherDevicesPinnedMemoryIsReadInPlaceNotStagedAgain) {
  ASSERT_TRUE(kTwoDevices);
  TwoBackends backends;
  ASSERT_TRUE(backends.ok()) << backends.probe.why;
  Backend& owner = *backends.device[0];
  Backend& other = *backends.device[1];
  void* pinned = nullptr;
  void* back = nullptr;
  ASSERT_TRUE(owner.allocate_host(kPageSize, &pinned));
  ASSERT_TRUE(other.allocate_host(kPageSize, &back));
  DeviceAddress chunk = 0;
  StreamId stream = 0;
  ASSERT_TRUE(other.allocate_chunk(&chunk));
  ASSERT_TRUE(other.create_stream(&stream));
  *static_cast<std::uint64_t*>(pinned) = 1;
  Gate gate;
  ASSERT_EQ(emuLaunchHostFunc(static_cast<emuStream_t>(other.native_stream(stream)), &Gate::wait, &gate),
            emuSuccess);
  const HostToDevicePage to{pinned, chunk};
  ASSERT_TRUE(other.copy_to_device(stream, {&to, 1}, nullptr));
  *static_cast<std::uint64_t*>(pinned) = 2;  // before the DMA runs
  gate.open();
  ASSERT_TRUE(other.synchronize(stream));
  const DeviceToHostPage from{chunk, back};
  ASSERT_TRUE(other.copy_to_host(stream, {&from, 1}, nullptr));
  ASSERT_TRUE(other.synchronize(stream));
  EXPECT_EQ(first_word(back), 2u) << "device 1 staged device 0's pinned page at the call";
  other.destroy_stream(stream);
  other.free_chunk(chunk);
  other.free_host(back);
  owner.free_host(pinned);
}

}  // namespace
}  // namespace uhmm::detail
