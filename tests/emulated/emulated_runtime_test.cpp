// The emulated GPU runtime itself (driver/gpu/emulated/): the vendor behaviours
// the GPU plugin depends on, checked through its emu* calls. Each test ends by
// releasing what it blocked, and nothing here decides on timing: a test that
// needs two things to overlap makes each wait for the other.
#include "emulated_runtime.hpp"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <gtest/gtest.h>

#include "uhmm/device_span.hpp"
#include "uhmm/launch.hpp"
#include "uhmm/page_copy.hpp"

namespace {

constexpr std::size_t kPage = 4096;

// A host function that blocks its stream until the gate opens.
struct Gate {
  std::atomic<bool> open{false};
  std::atomic<bool> reached{false};
  static void wait(void* user) {
    auto* g = static_cast<Gate*>(user);
    g->reached = true;
    while (!g->open.load()) std::this_thread::yield();
  }
};

// A kernel that waits for a word of mapped pinned memory, then sets another.
struct WaitThenSet {
  std::uint64_t wait_for;  // address of an atomic word (pinned)
  std::uint64_t set;       // address of an atomic word (pinned)
  void operator()(std::size_t) const {
    if (wait_for != 0) {
      auto* w = reinterpret_cast<std::atomic<std::uint64_t>*>(
          UHMM_DEVICE_ADDRESS(static_cast<std::uintptr_t>(wait_for)));
      while (w->load() == 0) std::this_thread::yield();
    }
    reinterpret_cast<std::atomic<std::uint64_t>*>(UHMM_DEVICE_ADDRESS(static_cast<std::uintptr_t>(set)))
        ->store(1);
  }
};

// Copies one page with the same body as the gather/scatter kernel.
struct CopyOnePage {
  std::uint64_t dst, src;
  void operator()(std::size_t word) const { uhmm::kernels::copy_page(dst, src, word, kPage / 8); }
};

std::uint64_t address(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }

class EmulatedRuntime : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(emuSetDevice(0), emuSuccess);
    ASSERT_EQ(emuStreamCreateWithFlags(&a_, emuStreamNonBlocking), emuSuccess);
    ASSERT_EQ(emuStreamCreateWithFlags(&b_, emuStreamNonBlocking), emuSuccess);
    ASSERT_EQ(emuHostAlloc(&pinned_, 4 * kPage, emuHostAllocPortable | emuHostAllocMapped), emuSuccess);
    std::memset(pinned_, 0, 4 * kPage);
    ASSERT_EQ(emuMalloc(&device_, 4 * kPage), emuSuccess);
  }
  void TearDown() override {
    emuTestClearStickyError(0);
    (void)emuStreamDestroy(a_);
    (void)emuStreamDestroy(b_);
    (void)emuFree(device_);
    (void)emuFreeHost(pinned_);
  }
  auto* word(std::size_t i) const { return static_cast<std::atomic<std::uint64_t>*>(pinned_) + i; }

  emuStream_t a_ = nullptr, b_ = nullptr;
  void* pinned_ = nullptr;
  void* device_ = nullptr;
};

TEST_F(EmulatedRuntime, TheHostCannotTouchDeviceMemory) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(std::printf("%d\n", static_cast<int>(*static_cast<volatile char*>(device_))), "");
}

TEST_F(EmulatedRuntime, StreamsRunConcurrentlyWithEachOther) {
  // a's kernel waits for b's: on serialized streams this would never finish.
  const WaitThenSet first{address(word(0)), address(word(1))};
  const WaitThenSet second{0, address(word(0))};
  uhmm::launch(a_, 1, first);
  ASSERT_EQ(emuGetLastError(), emuSuccess);
  uhmm::launch(b_, 1, second);
  ASSERT_EQ(emuStreamSynchronize(a_), emuSuccess);
  ASSERT_EQ(emuStreamSynchronize(b_), emuSuccess);
  EXPECT_EQ(word(1)->load(), 1u);
}

TEST_F(EmulatedRuntime, QueuedWorkRunsAfterTheCallReturnsAndQueriesSayNotReady) {
  Gate gate;
  emuEvent_t event = nullptr;
  ASSERT_EQ(emuEventCreateWithFlags(&event, emuEventDisableTiming), emuSuccess);
  ASSERT_EQ(emuLaunchHostFunc(a_, &Gate::wait, &gate), emuSuccess);
  ASSERT_EQ(emuMemsetAsync(device_, 7, kPage, a_), emuSuccess);
  ASSERT_EQ(emuEventRecord(event, a_), emuSuccess);
  // The host got here while the stream is held: the calls were asynchronous.
  EXPECT_EQ(emuStreamQuery(a_), emuErrorNotReady);
  EXPECT_EQ(emuEventQuery(event), emuErrorNotReady);
  EXPECT_EQ(emuGetLastError(), emuSuccess);  // not ready is no error
  gate.open = true;
  ASSERT_EQ(emuEventSynchronize(event), emuSuccess);
  EXPECT_EQ(emuEventQuery(event), emuSuccess);
  EXPECT_EQ(emuStreamQuery(a_), emuSuccess);
  ASSERT_EQ(emuMemcpyAsync(pinned_, device_, kPage, emuMemcpyDefault, a_), emuSuccess);
  ASSERT_EQ(emuStreamSynchronize(a_), emuSuccess);
  EXPECT_EQ(static_cast<unsigned char*>(pinned_)[kPage - 1], 7);
  EXPECT_EQ(emuEventDestroy(event), emuSuccess);
}

TEST_F(EmulatedRuntime, AnEventWaitOrdersAnotherStreamAfterTheRecordedPoint) {
  Gate gate;
  emuEvent_t event = nullptr;
  ASSERT_EQ(emuEventCreateWithFlags(&event, emuEventDisableTiming), emuSuccess);
  ASSERT_EQ(emuLaunchHostFunc(a_, &Gate::wait, &gate), emuSuccess);
  ASSERT_EQ(emuMemsetAsync(device_, 9, kPage, a_), emuSuccess);
  ASSERT_EQ(emuEventRecord(event, a_), emuSuccess);
  ASSERT_EQ(emuStreamWaitEvent(b_, event, 0), emuSuccess);
  ASSERT_EQ(emuMemcpyAsync(pinned_, device_, kPage, emuMemcpyDefault, b_), emuSuccess);
  ASSERT_EQ(emuEventRecord(event, a_), emuSuccess);  // a later record does not change the wait queued above
  EXPECT_EQ(emuStreamQuery(b_), emuErrorNotReady);
  gate.open = true;
  ASSERT_EQ(emuStreamSynchronize(b_), emuSuccess);
  EXPECT_EQ(static_cast<unsigned char*>(pinned_)[0], 9);
  EXPECT_EQ(emuEventDestroy(event), emuSuccess);
}

TEST_F(EmulatedRuntime, TheNullStreamWaitsForBlockingStreamsButNotForNonBlockingOnes) {
  emuStream_t blocking = nullptr;
  ASSERT_EQ(emuStreamCreateWithFlags(&blocking, emuStreamDefault), emuSuccess);
  Gate held_blocking, held_non_blocking;
  ASSERT_EQ(emuLaunchHostFunc(blocking, &Gate::wait, &held_blocking), emuSuccess);
  while (!held_blocking.reached) std::this_thread::yield();
  ASSERT_EQ(emuMemsetAsync(device_, 1, kPage, nullptr), emuSuccess);
  EXPECT_EQ(emuStreamQuery(nullptr), emuErrorNotReady);  // behind the held blocking stream
  // A non-blocking stream's work runs meanwhile.
  ASSERT_EQ(emuMemsetAsync(static_cast<char*>(device_) + kPage, 2, kPage, a_), emuSuccess);
  ASSERT_EQ(emuStreamSynchronize(a_), emuSuccess);
  held_blocking.open = true;
  ASSERT_EQ(emuStreamSynchronize(nullptr), emuSuccess);
  ASSERT_EQ(emuStreamDestroy(blocking), emuSuccess);
  (void)held_non_blocking;
}

TEST_F(EmulatedRuntime, HostFunctionsMustNotCallTheRuntime) {
  struct Probe {
    emuError_t seen = emuSuccess;
    static void run(void* user) {
      void* p = nullptr;
      static_cast<Probe*>(user)->seen = emuMalloc(&p, 256);
    }
  } probe;
  ASSERT_EQ(emuLaunchHostFunc(a_, &Probe::run, &probe), emuSuccess);
  ASSERT_EQ(emuStreamSynchronize(a_), emuSuccess);
  EXPECT_EQ(probe.seen, emuErrorNotPermitted);
}

TEST_F(EmulatedRuntime, AKernelTrapIsStickyAndSurfacesAtTheNextSynchronize) {
  // A device_span over a table whose entry is 0: device code traps.
  auto* table = static_cast<std::uint64_t*>(pinned_) + 100;
  table[0] = 0;
  const uhmm::DevicePageTable pages{table, 1, 0, kPage};
  struct Touch {
    uhmm::device_span<std::uint64_t> span;
    void operator()(std::size_t) const { span[0] = 1; }
  };
  Gate gate;  // holds the stream so that the kernel cannot have run before the check below
  ASSERT_EQ(emuLaunchHostFunc(a_, &Gate::wait, &gate), emuSuccess);
  uhmm::launch(a_, 1, Touch{uhmm::device_span<std::uint64_t>(pages)});
  EXPECT_EQ(emuGetLastError(), emuSuccess);  // the launch itself succeeded
  gate.open = true;
  EXPECT_EQ(emuStreamSynchronize(a_), emuErrorLaunchFailure);
  // Sticky: every later call fails, and the last error stays.
  void* p = nullptr;
  EXPECT_EQ(emuMalloc(&p, 256), emuErrorLaunchFailure);
  EXPECT_EQ(emuStreamSynchronize(b_), emuErrorLaunchFailure);
  EXPECT_EQ(emuGetLastError(), emuErrorLaunchFailure);
  EXPECT_EQ(emuGetLastError(), emuErrorLaunchFailure);
}

TEST_F(EmulatedRuntime, AKernelReadingPageableHostMemoryIsAnIllegalAddress) {
  std::vector<std::uint64_t> pageable(2 * kPage / 8);
  const auto src = (address(pageable.data()) + kPage - 1) & ~std::uint64_t{kPage - 1};
  uhmm::launch(a_, kPage / 8, CopyOnePage{address(device_), src});
  EXPECT_EQ(emuStreamSynchronize(a_), emuErrorIllegalAddress);
  // Pinned memory is reachable (after the reset a test hook gives).
  emuTestClearStickyError(0);
  static_cast<std::uint64_t*>(pinned_)[5] = 77;
  uhmm::launch(b_, kPage / 8, CopyOnePage{address(device_), address(pinned_)});
  ASSERT_EQ(emuMemcpyAsync(static_cast<char*>(pinned_) + kPage, device_, kPage, emuMemcpyDefault, b_),
            emuSuccess);
  ASSERT_EQ(emuStreamSynchronize(b_), emuSuccess);
  EXPECT_EQ(static_cast<std::uint64_t*>(pinned_)[kPage / 8 + 5], 77u);
}

TEST_F(EmulatedRuntime, AFailureOfQueuedWorkIsReportedOnceAtTheNextSynchronize) {
  emuTestFailNextOperation(a_, emuErrorInvalidValue, 0);
  ASSERT_EQ(emuMemsetAsync(device_, 0, kPage, a_), emuSuccess);
  EXPECT_EQ(emuStreamSynchronize(a_), emuErrorInvalidValue);
  EXPECT_EQ(emuStreamSynchronize(a_), emuSuccess);
  EXPECT_EQ(emuGetLastError(), emuErrorInvalidValue);
  EXPECT_EQ(emuGetLastError(), emuSuccess);
}

TEST_F(EmulatedRuntime, InvalidArgumentsFailAtTheCallAndSetTheLastError) {
  char host[64] = {};
  // Past the end of the allocation.
  EXPECT_EQ(emuMemcpyAsync(static_cast<char*>(device_) + 4 * kPage - 8, host, 64, emuMemcpyDefault, a_),
            emuErrorInvalidValue);
  EXPECT_EQ(emuGetLastError(), emuErrorInvalidValue);
  EXPECT_EQ(emuGetLastError(), emuSuccess);
  EXPECT_EQ(emuMemsetAsync(host, 0, 64, a_), emuErrorInvalidValue);  // not device memory
  EXPECT_EQ(emuStreamSynchronize(reinterpret_cast<emuStream_t>(host)), emuErrorInvalidResourceHandle);
  EXPECT_EQ(emuSetDevice(7), emuErrorInvalidDevice);
  EXPECT_EQ(emuFree(host), emuErrorInvalidValue);
  EXPECT_EQ(emuFreeHost(host), emuErrorInvalidValue);
  (void)emuGetLastError();
  ASSERT_EQ(emuStreamSynchronize(a_), emuSuccess);
}

TEST_F(EmulatedRuntime, AllocationsFailWithOutOfMemoryAtTheDeviceLimit) {
  std::size_t free_before = 0, total = 0;
  ASSERT_EQ(emuMemGetInfo(&free_before, &total), emuSuccess);
  emuTestSetDeviceLimit(0, (total - free_before) + (8 << 20));  // 8 MiB left
  void* p = nullptr;
  EXPECT_EQ(emuMalloc(&p, 16 << 20), emuErrorMemoryAllocation);
  EXPECT_EQ(emuGetLastError(), emuErrorMemoryAllocation);
  ASSERT_EQ(emuMalloc(&p, 4 << 20), emuSuccess);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % (2 << 20), 0u);
  std::size_t free_now = 0;
  ASSERT_EQ(emuMemGetInfo(&free_now, &total), emuSuccess);
  EXPECT_EQ(free_now, std::size_t{4} << 20);
  EXPECT_EQ(emuFree(p), emuSuccess);
  emuTestSetDeviceLimit(0, total);
}

TEST_F(EmulatedRuntime, APageableSourceIsStagedAtTheCall) {
  Gate gate;
  ASSERT_EQ(emuLaunchHostFunc(a_, &Gate::wait, &gate), emuSuccess);
  std::vector<unsigned char> pageable(kPage, 5);
  ASSERT_EQ(emuMemcpyAsync(device_, pageable.data(), kPage, emuMemcpyDefault, a_), emuSuccess);
  pageable.assign(kPage, 6);  // reused before the copy ran: the copy still moves what the call saw
  gate.open = true;
  ASSERT_EQ(emuMemcpyAsync(pageable.data(), device_, kPage, emuMemcpyDefault, a_), emuSuccess);
  // A pageable destination: the call returned once the copy was done.
  EXPECT_EQ(pageable[kPage - 1], 5);
}

}  // namespace
