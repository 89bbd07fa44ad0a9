// The GPU plugin's copy engine on the emulated runtime (issue 16: part 3 and
// defect 2), reached through a Context's own backend: the staging pipeline
// (unpinned host pages through the stream's pinned buffers, filled and
// drained by the calling thread while the DMA of another buffer-full runs),
// under injected latency, and a copy whose source page faults.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <numeric>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "uhmm/uhmm.hpp"
#include "uhmm/hooks.hpp"

#include "emulated_runtime.hpp"
#include "host_pages.hpp"
#include "test_support.hpp"

namespace uhmm::test {
namespace {

constexpr std::size_t kWords = kPageSize / 8;
constexpr std::size_t kStagedPart = 256;  // pages per staging buffer (GpuBackendOptions::staging_pages)

// Word w of page `page` as HostPages::fill_all(seed) writes it.
std::uint64_t pattern(std::uint64_t seed, std::size_t page, std::size_t word) { return HostPages::word(seed + page, word); }

// Runs `work` on a thread of its own. A deadlock (a host function blocked on
// work that waits for the runtime thread it holds) hangs on every run: it
// fails the test here, naming itself, instead of at ctest's timeout.
template <class F>
void without_deadlock(const char* what, F&& work) {
  auto done = std::async(std::launch::async, std::forward<F>(work));
  if (done.wait_for(std::chrono::seconds(60)) == std::future_status::timeout) {
    std::fprintf(stderr, "%s: no progress in 60 s: deadlocked\n", what);
    std::fflush(stderr);
    std::_Exit(1);  // the stuck threads cannot be joined
  }
  done.get();
}

class EmulatedCopyEngine : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(backend_.create_stream(&stream_));
    for (DeviceAddress& chunk : chunks_) ASSERT_TRUE(backend_.allocate_chunk(&chunk));
  }
  void TearDown() override {
    emuTestSetDelay(0, 1);
    backend_.destroy_stream(stream_);
    for (DeviceAddress chunk : chunks_) backend_.free_chunk(chunk);
  }
  // Device page i of the test's chunks, in `order` (a permutation scatters them).
  DeviceAddress device_page(std::size_t i) const {
    return chunks_[i / kPagesPerChunk] + (i % kPagesPerChunk) * kPageSize;
  }
  // Copies `in` to device pages order[i], then back to `out`; checks nothing.
  void round_trip(const HostPages& in, const HostPages& out, const std::vector<std::size_t>& order) {
    std::vector<HostToDevicePage> down;
    std::vector<DeviceToHostPage> up;
    for (std::size_t i = 0; i < order.size(); ++i) {
      down.push_back({in.page(i), device_page(order[i])});
      up.push_back({device_page(order[i]), out.page(i)});
    }
    BatchResult to_device, to_host;
    Status s = backend_.copy_to_device(stream_, down, &to_device);
    ASSERT_TRUE(s) << s.message;
    ASSERT_TRUE(backend_.copy_to_host(stream_, up, &to_host));
    ASSERT_TRUE(backend_.synchronize(stream_));
    EXPECT_TRUE(to_device.status) << to_device.status.message;
    EXPECT_EQ(to_device.pages_done, order.size());
    EXPECT_TRUE(to_host.status) << to_host.status.message;
    EXPECT_EQ(to_host.pages_done, order.size());
  }

  Context ctx_{emulated_options()};
  Backend& backend_ = uhmm::hooks::backend(ctx_, ctx_.device_owner(0));
  StreamId stream_ = 0;
  DeviceAddress chunks_[4] = {};  // 2048 device pages
};

// Issue 16, defect 2: the source page is a managed page that lives on the
// device, so reading it faults, and serving the fault migrates it back with
// a copy_to_host on the context's own stream. Filled by a stream host
// function, the fault blocked the runtime thread that the service's copy
// needs next (the host functions of every stream share it): deadlock. Filled
// by the calling thread, the fault is served like any other.
TEST_F(EmulatedCopyEngine, ACopyFromAManagedPageOnTheDeviceDoesNotBlockTheRuntimeThread) {
  constexpr std::size_t n = 4;
  auto* managed = static_cast<std::uint64_t*>(ctx_.allocate(n * kPageSize));
  for (std::size_t i = 0; i < n * kWords; ++i) managed[i] = pattern(9, i / kWords, i % kWords);
  const MigrationResult moved = ctx_.migrate_to_device(managed, n * kPageSize);
  ASSERT_EQ(moved.migrated, n) << moved.status.message;

  std::vector<HostToDevicePage> down;
  for (std::size_t i = 0; i < n; ++i) down.push_back({managed + i * kWords, device_page(i)});
  BatchResult to_device;
  without_deadlock("copy_to_device from managed pages on the device", [&] {
    const Status s = backend_.copy_to_device(stream_, down, &to_device);
    EXPECT_TRUE(s) << s.message;
    EXPECT_TRUE(backend_.synchronize(stream_));
  });
  EXPECT_TRUE(to_device.status) << to_device.status.message;
  EXPECT_EQ(to_device.pages_done, n);

  HostPages out(backend_, n, false);
  std::vector<DeviceToHostPage> up;
  for (std::size_t i = 0; i < n; ++i) up.push_back({device_page(i), out.page(i)});
  ASSERT_TRUE(backend_.copy_to_host(stream_, up, nullptr));
  ASSERT_TRUE(backend_.synchronize(stream_));
  EXPECT_EQ(out.first_wrong(9), n);
  ctx_.free(managed);
}

// Issue 16, part 3: every batch here is 8 buffer-fulls, so each staging
// buffer is refilled (to the device) and drained (to the host) 4 times per
// batch, with every queued operation delayed at random. Refilling a buffer
// before the DMA that reads it ran, or draining it before the DMA that writes
// it did, would move another buffer-full's data: the check is exact, page by
// page. The sources are overwritten as soon as the copy returns: staged
// sources may be reused then.
TEST_F(EmulatedCopyEngine, StagedBatchesArriveExactlyUnderInjectedLatency) {
  constexpr std::size_t n = 8 * kStagedPart;
  std::vector<std::size_t> contiguous(n), scattered(n);
  std::iota(contiguous.begin(), contiguous.end(), std::size_t{0});
  for (std::size_t i = 0; i < n; ++i) scattered[i] = (i * 769) % n;  // 769 is prime to 2048: a permutation
  HostPages in(backend_, n, false), out(backend_, n, false);
  for (unsigned round = 0; round < 4; ++round) {
    emuTestSetDelay(300, 11 + round);
    const std::uint64_t seed = 100 + round;
    in.fill_all(seed);
    std::vector<HostToDevicePage> down;
    const auto& order = round % 2 == 0 ? contiguous : scattered;  // DMA runs, or the gather/scatter kernel
    for (std::size_t i = 0; i < n; ++i) down.push_back({in.page(i), device_page(order[i])});
    BatchResult to_device;
    ASSERT_TRUE(backend_.copy_to_device(stream_, down, &to_device));
    in.fill_all(seed + 1'000'000);  // reused at once
    std::vector<DeviceToHostPage> up;
    for (std::size_t i = 0; i < n; ++i) up.push_back({device_page(order[i]), out.page(i)});
    BatchResult to_host;
    ASSERT_TRUE(backend_.copy_to_host(stream_, up, &to_host));
    ASSERT_TRUE(backend_.synchronize(stream_));
    EXPECT_TRUE(to_device.status) << to_device.status.message;
    EXPECT_TRUE(to_host.status) << to_host.status.message;
    EXPECT_EQ(to_host.pages_done, n);
    EXPECT_EQ(out.first_wrong(seed), n) << "round " << round;
  }
}

// Pinned pages in a batch go straight to and from their final place; the
// unpinned ones of the same batch through staging; both arrive.
TEST_F(EmulatedCopyEngine, MixedPinnedAndPageableBatchesArriveExactly) {
  constexpr std::size_t n = 3 * kStagedPart;
  emuTestSetDelay(200, 5);
  HostPages pinned_in(backend_, n, true), pageable_in(backend_, n, false);
  HostPages pinned_out(backend_, n, true), pageable_out(backend_, n, false);
  for (std::size_t i = 0; i < n; ++i) {
    pinned_in.fill(i, 1 + i);
    pageable_in.fill(i, 1'000'000 + i);
  }
  std::vector<HostToDevicePage> down;
  std::vector<DeviceToHostPage> up;
  for (std::size_t i = 0; i < n; ++i) {
    // Alternating runs of 3 pinned and 3 pageable pages.
    const bool pinned = (i / 3) % 2 == 0;
    down.push_back({pinned ? pinned_in.page(i) : pageable_in.page(i), device_page(i)});
    up.push_back({device_page(i), pinned ? pinned_out.page(i) : pageable_out.page(i)});
  }
  BatchResult to_device, to_host;
  ASSERT_TRUE(backend_.copy_to_device(stream_, down, &to_device));
  ASSERT_TRUE(backend_.copy_to_host(stream_, up, &to_host));
  ASSERT_TRUE(backend_.synchronize(stream_));
  EXPECT_EQ(to_device.pages_done, n);
  EXPECT_EQ(to_host.pages_done, n);
  for (std::size_t i = 0; i < n; ++i) {
    const bool pinned = (i / 3) % 2 == 0;
    const HostPages& out = pinned ? pinned_out : pageable_out;
    for (std::size_t w = 0; w < kWords; w += 97)
      ASSERT_EQ(out.page(i)[w], pattern(pinned ? 1 : 1'000'000, i, w)) << "page " << i;
  }
}

// The pipeline overlaps: with the stream held by a host function, a batch of
// as many buffer-fulls as there are staging buffers is filled and queued
// whole, and the call returns before any of its DMA ran.
TEST_F(EmulatedCopyEngine, TheCallerFillsTheNextBufferWhileTheStreamHasNotRunTheLast) {
  constexpr std::size_t n = 2 * kStagedPart;
  struct Gate {
    std::atomic<bool> open{false};
    static void wait(void* user) {
      while (!static_cast<Gate*>(user)->open.load()) std::this_thread::yield();
    }
  } gate;
  HostPages in(backend_, n, false), out(backend_, n, false);
  in.fill_all(77);
  std::vector<HostToDevicePage> down;
  std::vector<DeviceToHostPage> up;
  for (std::size_t i = 0; i < n; ++i) {
    down.push_back({in.page(i), device_page(i)});
    up.push_back({device_page(i), out.page(i)});
  }
  auto* native = static_cast<emuStream_t>(backend_.native_stream(stream_));
  ASSERT_EQ(emuLaunchHostFunc(native, &Gate::wait, &gate), emuSuccess);
  BatchResult to_device;
  ASSERT_TRUE(backend_.copy_to_device(stream_, down, &to_device));
  EXPECT_EQ(emuStreamQuery(native), emuErrorNotReady);  // nothing of it ran yet
  gate.open = true;
  ASSERT_TRUE(backend_.copy_to_host(stream_, up, nullptr));
  ASSERT_TRUE(backend_.synchronize(stream_));
  EXPECT_EQ(to_device.pages_done, n);
  EXPECT_EQ(out.first_wrong(77), n);
}

// A DMA of a staged batch fails on the stream (a non-sticky error): the
// synchronize reports it, and so does the batch's result, with no page
// counted. Its result was once written by a host function queued behind the
// failed copy, which ran anyway and said every page arrived.
TEST_F(EmulatedCopyEngine, AFailedDmaFailsItsBatchResult) {
  constexpr std::size_t n = 3 * kStagedPart;
  HostPages in(backend_, n, false);
  std::vector<HostToDevicePage> down;
  for (std::size_t i = 0; i < n; ++i) {
    in.fill(i, 5 + i);
    down.push_back({in.page(i), device_page(i)});
  }
  auto* native = static_cast<emuStream_t>(backend_.native_stream(stream_));
  emuTestFailNextOperation(native, emuErrorLaunchFailure, 0);
  BatchResult to_device{Status::ok(), 99};
  ASSERT_TRUE(backend_.copy_to_device(stream_, down, &to_device));
  EXPECT_FALSE(backend_.synchronize(stream_));
  EXPECT_EQ(to_device.status.code, Errc::device_error) << to_device.status.message;
  EXPECT_EQ(to_device.pages_done, 0u);
  // The error was reported once: the stream works again.
  BatchResult again;
  ASSERT_TRUE(backend_.copy_to_device(stream_, down, &again));
  ASSERT_TRUE(backend_.synchronize(stream_));
  EXPECT_EQ(again.pages_done, n);
}

}  // namespace
}  // namespace uhmm::test
