// The GPU plugin's device pool, launch-path stalls and probing on the
// emulated runtime (issue 16, defects 3, 7 and 8): each test makes the
// runtime show the vendor rule the plugin broke (device memory allocated,
// contexts created, gpuFree called, a gpuMalloc in flight).
#include <gtest/gtest.h>

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../../driver/backend_probe.hpp"
#include "emulated_runtime.hpp"
#include "test_support.hpp"
#include "uhmm/uhmm.hpp"

namespace uhmm::detail {
namespace {

constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;

// The emulated plugin's backend on device 0 (the emulated device has 1 GiB).
class EmulatedGpuPool : public ::testing::Test {
 protected:
  void SetUp() override {
    probe_ = probe_backend("emulated", UHMM_TEST_EMULATED_PLUGIN_DIR);
    ASSERT_TRUE(probe_.available()) << probe_.why;
    used_before_ = emuTestDeviceUsed(0);
  }
  void TearDown() override {
    emuTestSetDeviceLimit(0, SIZE_MAX);
    emuTestSetLargeAlignment(SIZE_MAX);
    emuTestSetMallocHook(nullptr, nullptr);
  }
  std::unique_ptr<Backend> make(std::uint64_t pool_bytes) {
    char why[256] = {};
    std::unique_ptr<Backend> backend(probe_.plugin->create_backend(0, pool_bytes, why, sizeof why));
    EXPECT_NE(backend, nullptr) << why;
    return backend;
  }
  std::uint64_t used() const { return emuTestDeviceUsed(0) - used_before_; }

  BackendProbe probe_;
  std::uint64_t used_before_ = 0;
};

// Defect 10: the CUDA plugin carries CUDA's static runtime, which a driver
// older than it refuses (cudaErrorInsufficientDriver): auto then quietly took
// the cpu backend. The probe now says the GPUs are unusable and why, and
// uhmm-info and auto's log say it aloud (uhmm_info_driver_too_old_Emulated).
TEST(EmulatedGpuPluginProbe, ADriverOlderThanTheRuntimeIsReportedAsSuch) {
  emuTestSetDriverTooOld(1);
  const BackendProbe probe = probe_backend("emulated", UHMM_TEST_EMULATED_PLUGIN_DIR);
  emuTestSetDriverTooOld(0);
  EXPECT_FALSE(probe.available());
  EXPECT_TRUE(probe.driver_too_old);
  EXPECT_NE(probe.why.find("NOT used"), std::string::npos) << probe.why;
  EXPECT_NE(probe.why.find("version 12040"), std::string::npos) << probe.why;
  EXPECT_NE(probe.why.find("version 13000"), std::string::npos) << probe.why;
  EXPECT_TRUE(probe_backend("emulated", UHMM_TEST_EMULATED_PLUGIN_DIR).available());
}

// Defect 10 (the plugin's side): a device the copy kernels have no image for
// (the HIP plugin's module load failing) loses the kernel path, nothing else:
// scattered batches go by DMA.
TEST_F(EmulatedGpuPool, WithoutAKernelImageScatteredCopiesTakeDma) {
  emuTestSetKernelImage(0);
  auto backend = make(4 * kChunkSize);
  emuTestSetKernelImage(1);
  ASSERT_NE(backend, nullptr);
  EXPECT_EQ(backend->info().capabilities & kCapCopyKernels, 0u);
  DeviceAddress chunk = 0;
  StreamId stream = 0;
  void* pinned = nullptr;
  ASSERT_TRUE(backend->allocate_chunk(&chunk));
  ASSERT_TRUE(backend->create_stream(&stream));
  ASSERT_TRUE(backend->allocate_host(32 * kPageSize, &pinned));
  std::vector<HostToDevicePage> pages;
  for (std::size_t i = 0; i < 16; ++i)  // every other device page: 16 runs
    pages.push_back({static_cast<std::byte*>(pinned) + i * kPageSize, chunk + 2 * i * kPageSize});
  const emuTestCounts before = emuTestGetCounts();
  BatchResult result;
  ASSERT_TRUE(backend->copy_to_device(stream, pages, &result));
  ASSERT_TRUE(backend->synchronize(stream));
  EXPECT_TRUE(result.status) << result.status.message;
  EXPECT_EQ(result.pages_done, 16u);
  EXPECT_EQ(emuTestGetCounts().kernels, before.kernels);
  EXPECT_EQ(emuTestGetCounts().copies - before.copies, 16u);
  backend->free_host(pinned);
  backend->destroy_stream(stream);
  backend->free_chunk(chunk);
}

// Defect 8: every slab was allocated one chunk larger than its chunks.
TEST_F(EmulatedGpuPool, ASlabIsAllocatedExactly) {
  auto backend = make(8 * kChunkSize);
  ASSERT_NE(backend, nullptr);
  DeviceAddress chunk = 0;
  ASSERT_TRUE(backend->allocate_chunk(&chunk));
  EXPECT_EQ(chunk % kChunkSize, 0u);
  EXPECT_EQ(used(), 8 * kChunkSize);
  backend->free_chunk(chunk);
  backend.reset();
  EXPECT_EQ(used(), 0u);
}

// Defect 8: near a full device the single-chunk fallback asked for two chunks
// (4 MiB per 2 MiB chunk), so the last 2 MiB of a device were never used.
TEST_F(EmulatedGpuPool, TheNearFullFallbackSpendsOneChunkPerChunk) {
  emuTestSetDeviceLimit(0, used_before_ + kChunkSize);
  auto backend = make(8 * kChunkSize);
  ASSERT_NE(backend, nullptr);
  DeviceAddress chunk = 0;
  const Status s = backend->allocate_chunk(&chunk);
  ASSERT_TRUE(s) << s.message;
  EXPECT_EQ(chunk % kChunkSize, 0u);
  EXPECT_EQ(used(), kChunkSize);
  DeviceAddress more = 0;
  EXPECT_EQ(backend->allocate_chunk(&more).code, Errc::out_of_memory);
}

// Where the runtime aligns large allocations below a chunk, the slab is
// allocated again one chunk larger and its chunks are still aligned.
TEST_F(EmulatedGpuPool, AnUnalignedSlabIsAllocatedOneChunkLarger) {
  emuTestSetLargeAlignment(256);
  ASSERT_EQ(emuSetDevice(0), emuSuccess);
  void* small = nullptr;
  ASSERT_EQ(emuMalloc(&small, 256), emuSuccess);  // the next allocation starts 256 B into the device
  auto backend = make(4 * kChunkSize);
  ASSERT_NE(backend, nullptr);
  for (int k = 0; k < 4; ++k) {
    DeviceAddress chunk = 0;
    ASSERT_TRUE(backend->allocate_chunk(&chunk));
    EXPECT_EQ(chunk % kChunkSize, 0u);
  }
  EXPECT_EQ(used(), 256 + 5 * kChunkSize);
  backend.reset();
  ASSERT_EQ(emuFree(small), emuSuccess);
}

// Defect 7: allocate_chunk held the chunk mutex across gpuMalloc, and every
// copy's page check takes it: a copy to a chunk already handed out waited for
// an allocation it has nothing to do with. The hook holds a gpuMalloc in
// flight until a copy on another thread has been queued.
struct CopyDuringMalloc {
  Backend* backend = nullptr;
  StreamId stream = 0;
  HostToDevicePage page{};
  std::mutex mutex;
  std::condition_variable changed;
  bool copied = false;
  bool copy_ok = false;
  bool saw_copy_in_flight = false;
  std::thread copier;  // joined by the test: it may wait for the allocation to end
  static void hook(void* user) {
    auto* self = static_cast<CopyDuringMalloc*>(user);
    emuTestSetMallocHook(nullptr, nullptr);  // once
    self->copier = std::thread([self] {
      const bool ok = static_cast<bool>(self->backend->copy_to_device(self->stream, {&self->page, 1}, nullptr));
      std::lock_guard lock(self->mutex);
      self->copied = true;
      self->copy_ok = ok;
      self->changed.notify_all();
    });
    {
      // A deadlock detector, not a timing assertion: the copy takes
      // microseconds unless it waits for this very allocation.
      std::unique_lock lock(self->mutex);
      self->saw_copy_in_flight = self->changed.wait_for(lock, std::chrono::seconds(20), [&] { return self->copied; });
    }
  }
};

TEST_F(EmulatedGpuPool, ACopysPageCheckDoesNotWaitForAnAllocationInFlight) {
  emuTestSetDeviceLimit(0, used_before_ + 2 * kChunkSize);  // the first slab is a single chunk
  auto backend = make(8 * kChunkSize);
  ASSERT_NE(backend, nullptr);
  DeviceAddress first = 0;
  ASSERT_TRUE(backend->allocate_chunk(&first));
  emuTestSetDeviceLimit(0, SIZE_MAX);
  CopyDuringMalloc job;
  job.backend = backend.get();
  ASSERT_TRUE(backend->create_stream(&job.stream));
  void* pinned = nullptr;
  ASSERT_TRUE(backend->allocate_host(kPageSize, &pinned));
  job.page = {pinned, first};
  emuTestSetMallocHook(&CopyDuringMalloc::hook, &job);
  DeviceAddress second = 0;
  const Status grown = backend->allocate_chunk(&second);  // grows: gpuMalloc runs the hook
  if (job.copier.joinable()) job.copier.join();
  ASSERT_TRUE(grown) << grown.message;
  EXPECT_TRUE(job.saw_copy_in_flight) << "the copy waited for the allocation";
  EXPECT_TRUE(job.copy_ok);
  ASSERT_TRUE(backend->synchronize(job.stream));
  backend->free_host(pinned);
  backend->destroy_stream(job.stream);
}

}  // namespace
}  // namespace uhmm::detail

namespace uhmm::test {
namespace {

struct AddOneEverywhere {
  device_span<std::uint64_t> x;
  UHMM_HOST_DEVICE void operator()(std::size_t i) const { x[i] += 1; }
};

// Defect 7: a launch whose page tables outgrew its stream's buffer freed the
// old one there, and gpuFree may synchronize the whole device (the emulated
// runtime's does): the launch waited for every other stream's work.
TEST(EmulatedGpuLaunchPath, GrowingTheTableBufferFreesNothingInTheLaunch) {
  ContextOptions o;
  o.backend = "emulated";
  o.plugin_dir = UHMM_TEST_EMULATED_PLUGIN_DIR;
  o.device_pool_bytes = 64 * MiB;
  o.fault_mode = test_fault_mode();
  Context ctx(o);
  TestArrays arrays(ctx);
  const auto add_one = [](const LaunchStream& stream, device_span<std::uint64_t> span) {
    launch(stream, span.size(), AddOneEverywhere{span});
  };
  auto small = arrays.make<std::uint64_t>(kPageSize / 8);
  ctx.launch_device(add_one, small);  // the launch stream and its table buffer
  auto large = arrays.make<std::uint64_t>(256 * kPageSize / 8);
  const emuTestCounts before = emuTestGetCounts();
  ctx.launch_device(add_one, large);  // its tables outgrow the buffer
  EXPECT_EQ(emuTestGetCounts().frees, before.frees);
  EXPECT_EQ(large[7], 1u);
  EXPECT_EQ(small[7], 1u);
}

// Defect 8: the pool never gave device memory back. A lowered limit evicts
// the pages, and the chunks left free go back to the backend, which returns
// a slab all of whose chunks came back (gpuFree): the device's allocated bytes
// fall. Raising the limit grows the pool into them again.
TEST(EmulatedGpuPoolLimit, ALoweredLimitGivesDeviceMemoryBack) {
  ContextOptions o = emulated_options();
  o.device_pool_bytes = 8 * MiB;  // one slab of four chunks
  Context ctx(o);
  TestArrays arrays(ctx);
  auto data = arrays.make<std::uint64_t>(8 * MiB / 8);
  fill(data.data(), 8 * MiB, 5);
  const OwnerId owner = ctx.device_owner(0);
  const std::size_t before = emuTestDeviceUsed(0);
  ASSERT_EQ(ctx.migrate_to_device(data.data(), 8 * MiB, owner).migrated, 8 * MiB / kPageSize);
  const std::size_t full = emuTestDeviceUsed(0);
  EXPECT_GE(full, before + 8 * MiB);
  EXPECT_EQ(ctx.set_device_pool_limit(owner, 0), 8 * MiB / kPageSize);
  EXPECT_EQ(emuTestDeviceUsed(0), full - 8 * MiB) << "the evicted pool still holds its device memory";
  ctx.set_device_pool_limit(owner, 8 * MiB);
  ASSERT_EQ(ctx.migrate_to_device(data.data(), 8 * MiB, owner).migrated, 8 * MiB / kPageSize);
  EXPECT_EQ(emuTestDeviceUsed(0), full);
  expect_pattern(data.data(), 8 * MiB, 5);
}

}  // namespace
}  // namespace uhmm::test
