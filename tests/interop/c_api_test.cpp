// The C API (uhmm/uhmm.h) over the default context: every call's success,
// every bad argument's error code (and that it changed nothing), the
// per-thread last error, streams and devices, attributes, reset.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "context_core.hpp"
#include "mm.hpp"
#include "test_support.hpp"
#include "uhmm/default_context.hpp"
#include "uhmm/uhmm.h"

namespace uhmm::test {
namespace {

constexpr std::size_t kBytes = 4 * MiB;

// Two emulated devices, on a fresh default context per test.
class CApi : public ::testing::Test {
 protected:
  void SetUp() override {
    ::setenv("UHMM_BACKEND", "cpu", 1);
    ::setenv("UHMM_DEVICES", "2", 1);
    ::setenv("UHMM_DEVICE_POOL", "64M", 1);
    ASSERT_EQ(uhmmDeviceReset(), uhmmSuccess);
    uhmmGetLastError();
    ASSERT_EQ(uhmmSetDevice(0), uhmmSuccess);
  }
  void TearDown() override { EXPECT_EQ(uhmmDeviceReset(), uhmmSuccess); }

  static std::size_t live_ranges() { return detail::core(default_context()).ranges.overlapping(0, UINTPTR_MAX).size(); }
  static std::size_t on(Residency r, const void* p, std::size_t bytes) {
    return count(default_context().residency(p, bytes), r);
  }
};

TEST_F(CApi, AllocateWriteAdvisePrefetchReadBackFree) {
  void* p = nullptr;
  ASSERT_EQ(uhmmMallocManaged(&p, kBytes, uhmmMemAttachGlobal), uhmmSuccess);
  ASSERT_NE(p, nullptr);
  fill(p, kBytes, 7);
  ASSERT_EQ(uhmmMemAdvise(p, kBytes, uhmmMemAdviseSetPreferredLocation, 1), uhmmSuccess);
  ASSERT_EQ(uhmmMemPrefetchAsync(p, kBytes, 1, nullptr), uhmmSuccess);
  ASSERT_EQ(uhmmStreamSynchronize(nullptr), uhmmSuccess);
  EXPECT_EQ(on(Residency::Device, p, kBytes), kBytes / kPageSize);
  EXPECT_EQ(default_context().residency(p, kPageSize)[0].device.owner, default_context().device_owner(1));
  ASSERT_EQ(uhmmMemPrefetchAsync(p, kBytes, uhmmCpuDeviceId, nullptr), uhmmSuccess);
  ASSERT_EQ(uhmmDeviceSynchronize(), uhmmSuccess);
  EXPECT_EQ(on(Residency::System, p, kBytes), kBytes / kPageSize);
  expect_pattern(p, kBytes, 7);
  EXPECT_EQ(uhmmFree(p), uhmmSuccess);
  EXPECT_EQ(uhmmGetLastError(), uhmmSuccess);
}

TEST_F(CApi, BadAllocationsReturnErrorsAndLeaveThePointer) {
  void* p = &p;
  EXPECT_EQ(uhmmMallocManaged(&p, 0, uhmmMemAttachGlobal), uhmmErrorInvalidValue);
  EXPECT_EQ(uhmmMallocManaged(&p, kBytes, 0), uhmmErrorInvalidValue);
  EXPECT_EQ(uhmmMallocManaged(&p, kBytes, 0x10), uhmmErrorInvalidValue);
  EXPECT_EQ(uhmmMallocManaged(&p, kBytes, uhmmMemAttachHost), uhmmErrorNotSupported);
  EXPECT_EQ(uhmmMallocManaged(nullptr, kBytes, uhmmMemAttachGlobal), uhmmErrorInvalidValue);
  EXPECT_EQ(uhmmMallocManaged(&p, ~std::size_t{0}, uhmmMemAttachGlobal), uhmmErrorInvalidValue);  // overflows
  EXPECT_EQ(uhmmMallocManaged(&p, std::size_t{1} << 41, uhmmMemAttachGlobal), uhmmErrorInvalidValue);  // > 1 TiB
  EXPECT_EQ(p, static_cast<void*>(&p));
  EXPECT_EQ(live_ranges(), 0u);
}

TEST_F(CApi, DoubleFreeAndForeignPointersAreInvalidValues) {
  void* p = nullptr;
  ASSERT_EQ(uhmmMallocManaged(&p, kBytes, uhmmMemAttachGlobal), uhmmSuccess);
  int local = 0;
  EXPECT_EQ(uhmmFree(&local), uhmmErrorInvalidValue);
  EXPECT_EQ(uhmmFree(static_cast<char*>(p) + kPageSize), uhmmErrorInvalidValue);
  EXPECT_EQ(uhmmFree(p), uhmmSuccess);
  EXPECT_EQ(uhmmFree(p), uhmmErrorInvalidValue);
  EXPECT_EQ(uhmmFree(nullptr), uhmmSuccess);  // as cudaFree(0)
}

TEST_F(CApi, LastErrorIsPerThreadAndGetResetsIt) {
  int local = 0;
  EXPECT_EQ(uhmmFree(&local), uhmmErrorInvalidValue);
  EXPECT_NE(std::strlen(uhmmGetLastErrorMessage()), 0u);
  std::thread([] { EXPECT_EQ(uhmmPeekAtLastError(), uhmmSuccess); }).join();
  EXPECT_EQ(uhmmPeekAtLastError(), uhmmErrorInvalidValue);
  void* p = nullptr;
  ASSERT_EQ(uhmmMallocManaged(&p, kBytes, uhmmMemAttachGlobal), uhmmSuccess);  // success keeps it
  EXPECT_EQ(uhmmGetLastError(), uhmmErrorInvalidValue);
  EXPECT_EQ(uhmmGetLastError(), uhmmSuccess);
  EXPECT_EQ(uhmmFree(p), uhmmSuccess);
}

TEST_F(CApi, ErrorNamesAndStrings) {
  EXPECT_STREQ(uhmmGetErrorName(uhmmSuccess), "uhmmSuccess");
  EXPECT_STREQ(uhmmGetErrorName(uhmmErrorInvalidDevice), "uhmmErrorInvalidDevice");
  EXPECT_STREQ(uhmmGetErrorString(uhmmErrorMemoryAllocation), "out of memory");
  EXPECT_STREQ(uhmmGetErrorName(static_cast<uhmmError_t>(5)), "unrecognized error code");
}

TEST_F(CApi, BadSpansAndDevicesChangeNothing) {
  void* p = nullptr;
  ASSERT_EQ(uhmmMallocManaged(&p, kBytes, uhmmMemAttachGlobal), uhmmSuccess);
  fill(p, kBytes, 3);
  EXPECT_EQ(uhmmMemPrefetchAsync(p, 0, 0, nullptr), uhmmErrorInvalidValue);
  EXPECT_EQ(uhmmMemPrefetchAsync(nullptr, kBytes, 0, nullptr), uhmmErrorInvalidValue);
  EXPECT_EQ(uhmmMemPrefetchAsync(p, ~std::size_t{0} - 8, 0, nullptr), uhmmErrorInvalidValue);
  EXPECT_EQ(uhmmMemPrefetchAsync(p, 2 * kBytes, 0, nullptr), uhmmErrorInvalidValue);  // past the range
  EXPECT_EQ(uhmmMemPrefetchAsync(p, kBytes, 2, nullptr), uhmmErrorInvalidDevice);
  EXPECT_EQ(uhmmMemPrefetchAsync(p, kBytes, -7, nullptr), uhmmErrorInvalidDevice);
  EXPECT_EQ(uhmmMemAdvise(p, kBytes, static_cast<uhmmMemoryAdvise>(7), 0), uhmmErrorInvalidValue);
  EXPECT_EQ(uhmmMemAdvise(p, kBytes, uhmmMemAdviseSetPreferredLocation, 5), uhmmErrorInvalidDevice);
  EXPECT_EQ(uhmmMemAdvise(p, kBytes, uhmmMemAdviseSetAccessedBy, uhmmCpuDeviceId), uhmmErrorNotSupported);
  int local = 0;
  EXPECT_EQ(uhmmMemAdvise(&local, sizeof local, uhmmMemAdviseSetReadMostly, 0), uhmmErrorInvalidValue);
  EXPECT_EQ(uhmmSetDevice(2), uhmmErrorInvalidDevice);
  EXPECT_EQ(uhmmSetDevice(-1), uhmmErrorInvalidDevice);
  ASSERT_EQ(uhmmDeviceSynchronize(), uhmmSuccess);
  EXPECT_EQ(on(Residency::System, p, kBytes), kBytes / kPageSize);
  EXPECT_EQ(default_context().advice(p), RangeAdvice{});
  expect_pattern(p, kBytes, 3);
  int device = -1;
  EXPECT_EQ(uhmmGetDevice(&device), uhmmSuccess);
  EXPECT_EQ(device, 0);
  EXPECT_EQ(uhmmFree(p), uhmmSuccess);
}

TEST_F(CApi, UnalignedSpansCoverTheirPages) {
  void* p = nullptr;
  ASSERT_EQ(uhmmMallocManaged(&p, kBytes, uhmmMemAttachGlobal), uhmmSuccess);
  char* c = static_cast<char*>(p);
  ASSERT_EQ(uhmmMemPrefetchAsync(c + 100, kPageSize, 0, nullptr), uhmmSuccess);  // touches pages 0 and 1
  ASSERT_EQ(uhmmStreamSynchronize(nullptr), uhmmSuccess);
  EXPECT_EQ(on(Residency::Device, p, kBytes), 2u);
  EXPECT_EQ(uhmmFree(p), uhmmSuccess);
}

TEST_F(CApi, LocationVariantsAsCuda13) {
  void* p = nullptr;
  ASSERT_EQ(uhmmMallocManaged(&p, kBytes, uhmmMemAttachGlobal), uhmmSuccess);
  const uhmmMemLocation device1{uhmmMemLocationTypeDevice, 1}, host{uhmmMemLocationTypeHost, 0};
  ASSERT_EQ(uhmmMemAdvise_v2(p, kBytes, uhmmMemAdviseSetPreferredLocation, device1), uhmmSuccess);
  EXPECT_EQ(default_context().advice(p).preferred, Location::device(default_context().device_owner(1)));
  ASSERT_EQ(uhmmMemPrefetchAsync_v2(p, kBytes, device1, 0, nullptr), uhmmSuccess);
  ASSERT_EQ(uhmmDeviceSynchronize(), uhmmSuccess);
  EXPECT_EQ(on(Residency::Device, p, kBytes), kBytes / kPageSize);
  ASSERT_EQ(uhmmMemPrefetchAsync_v2(p, kBytes, host, 0, nullptr), uhmmSuccess);
  ASSERT_EQ(uhmmDeviceSynchronize(), uhmmSuccess);
  EXPECT_EQ(on(Residency::System, p, kBytes), kBytes / kPageSize);
  EXPECT_EQ(uhmmMemPrefetchAsync_v2(p, kBytes, host, 1, nullptr), uhmmErrorInvalidValue);
  EXPECT_EQ(uhmmMemPrefetchAsync_v2(p, kBytes, uhmmMemLocation{uhmmMemLocationTypeHostNuma, 0}, 0, nullptr),
            uhmmErrorNotSupported);
  EXPECT_EQ(uhmmMemAdvise_v2(p, kBytes, uhmmMemAdviseSetPreferredLocation, uhmmMemLocation{uhmmMemLocationTypeInvalid, 0}),
            uhmmErrorInvalidValue);
  EXPECT_EQ(uhmmMemAdvise_v2(p, kBytes, uhmmMemAdviseSetPreferredLocation, uhmmMemLocation{uhmmMemLocationTypeDevice, 9}),
            uhmmErrorInvalidDevice);
  EXPECT_EQ(uhmmFree(p), uhmmSuccess);
}

TEST_F(CApi, AttributesAnswerWhatTheAdviceAndPrefetchesSet) {
  void* p = nullptr;
  ASSERT_EQ(uhmmMallocManaged(&p, kBytes, uhmmMemAttachGlobal), uhmmSuccess);
  int value = 42;
  ASSERT_EQ(uhmmMemRangeGetAttribute(&value, sizeof value, uhmmMemRangeAttributeReadMostly, p, kBytes), uhmmSuccess);
  EXPECT_EQ(value, 0);
  ASSERT_EQ(uhmmMemAdvise(p, kBytes, uhmmMemAdviseSetReadMostly, 0), uhmmSuccess);
  ASSERT_EQ(uhmmMemRangeGetAttribute(&value, sizeof value, uhmmMemRangeAttributeReadMostly, p, kBytes), uhmmSuccess);
  EXPECT_EQ(value, 1);

  ASSERT_EQ(uhmmMemRangeGetAttribute(&value, sizeof value, uhmmMemRangeAttributePreferredLocation, p, kBytes),
            uhmmSuccess);
  EXPECT_EQ(value, uhmmInvalidDeviceId);
  ASSERT_EQ(uhmmMemAdvise(p, kBytes / 2, uhmmMemAdviseSetPreferredLocation, uhmmCpuDeviceId), uhmmSuccess);
  ASSERT_EQ(uhmmMemRangeGetAttribute(&value, sizeof value, uhmmMemRangeAttributePreferredLocation, p, kBytes / 2),
            uhmmSuccess);
  EXPECT_EQ(value, uhmmCpuDeviceId);
  ASSERT_EQ(uhmmMemRangeGetAttribute(&value, sizeof value, uhmmMemRangeAttributePreferredLocation, p, kBytes),
            uhmmSuccess);
  EXPECT_EQ(value, uhmmInvalidDeviceId);  // half of it has none

  int devices[3] = {7, 7, 7};
  ASSERT_EQ(uhmmMemAdvise(p, kBytes, uhmmMemAdviseSetAccessedBy, 1), uhmmSuccess);
  ASSERT_EQ(uhmmMemRangeGetAttribute(devices, sizeof devices, uhmmMemRangeAttributeAccessedBy, p, kBytes),
            uhmmSuccess);
  EXPECT_EQ(devices[0], 1);
  EXPECT_EQ(devices[1], uhmmInvalidDeviceId);
  EXPECT_EQ(devices[2], uhmmInvalidDeviceId);

  ASSERT_EQ(uhmmMemRangeGetAttribute(&value, sizeof value, uhmmMemRangeAttributeLastPrefetchLocation, p, kBytes),
            uhmmSuccess);
  EXPECT_EQ(value, uhmmInvalidDeviceId);  // never prefetched
  ASSERT_EQ(uhmmMemPrefetchAsync(p, kBytes, 1, nullptr), uhmmSuccess);
  ASSERT_EQ(uhmmMemPrefetchAsync(p, kPageSize, 0, nullptr), uhmmSuccess);
  ASSERT_EQ(uhmmDeviceSynchronize(), uhmmSuccess);
  char* c = static_cast<char*>(p);
  ASSERT_EQ(uhmmMemRangeGetAttribute(&value, sizeof value, uhmmMemRangeAttributeLastPrefetchLocation, c + kPageSize,
                                     kBytes - kPageSize),
            uhmmSuccess);
  EXPECT_EQ(value, 1);
  ASSERT_EQ(uhmmMemRangeGetAttribute(&value, sizeof value, uhmmMemRangeAttributeLastPrefetchLocation, p, kBytes),
            uhmmSuccess);
  EXPECT_EQ(value, uhmmInvalidDeviceId);  // page 0 went elsewhere last

  value = 42;
  EXPECT_EQ(uhmmMemRangeGetAttribute(&value, 2, uhmmMemRangeAttributeReadMostly, p, kBytes), uhmmErrorInvalidValue);
  EXPECT_EQ(uhmmMemRangeGetAttribute(&value, sizeof value, static_cast<uhmmMemRangeAttribute>(0), p, kBytes),
            uhmmErrorInvalidValue);
  EXPECT_EQ(uhmmMemRangeGetAttribute(nullptr, sizeof value, uhmmMemRangeAttributeReadMostly, p, kBytes),
            uhmmErrorInvalidValue);
  EXPECT_EQ(uhmmMemRangeGetAttribute(&value, sizeof value, uhmmMemRangeAttributeReadMostly, &value, 4),
            uhmmErrorInvalidValue);
  EXPECT_EQ(value, 42);
  EXPECT_EQ(uhmmFree(p), uhmmSuccess);
}

TEST_F(CApi, StreamsOrderPrefetchesAndBadHandlesAreErrors) {
  uhmmStream_t s = nullptr;
  ASSERT_EQ(uhmmStreamCreate(&s), uhmmSuccess);
  void* p = nullptr;
  ASSERT_EQ(uhmmMallocManaged(&p, kBytes, uhmmMemAttachGlobal), uhmmSuccess);
  fill(p, kBytes, 11);
  for (int round = 0; round < 4; ++round) {
    ASSERT_EQ(uhmmMemPrefetchAsync(p, kBytes, round % 2, s), uhmmSuccess);
    ASSERT_EQ(uhmmMemPrefetchAsync(p, kBytes, uhmmCpuDeviceId, s), uhmmSuccess);
  }
  ASSERT_EQ(uhmmMemPrefetchAsync(p, kBytes, 1, s), uhmmSuccess);
  ASSERT_EQ(uhmmStreamSynchronize(s), uhmmSuccess);
  EXPECT_EQ(on(Residency::Device, p, kBytes), kBytes / kPageSize);  // the last one queued won
  expect_pattern(p, kBytes, 11);
  ASSERT_EQ(uhmmStreamDestroy(s), uhmmSuccess);
  EXPECT_EQ(uhmmStreamDestroy(s), uhmmErrorInvalidResourceHandle);
  EXPECT_EQ(uhmmStreamSynchronize(s), uhmmErrorInvalidResourceHandle);
  EXPECT_EQ(uhmmMemPrefetchAsync(p, kBytes, 0, s), uhmmErrorInvalidResourceHandle);
  EXPECT_EQ(uhmmStreamDestroy(nullptr), uhmmErrorInvalidResourceHandle);
  EXPECT_EQ(uhmmStreamCreate(nullptr), uhmmErrorInvalidValue);
  EXPECT_EQ(uhmmFree(p), uhmmSuccess);
}

TEST_F(CApi, AFailedPrefetchSurfacesAtSynchronize) {
  // A pool of one chunk without eviction cannot take 4 MiB.
  ::setenv("UHMM_DEVICE_POOL", "2M", 1);
  ::setenv("UHMM_EVICT", "0", 1);
  ASSERT_EQ(uhmmDeviceReset(), uhmmSuccess);
  void* p = nullptr;
  ASSERT_EQ(uhmmMallocManaged(&p, kBytes, uhmmMemAttachGlobal), uhmmSuccess);
  fill(p, kBytes, 5);
  ASSERT_EQ(uhmmMemPrefetchAsync(p, kBytes, 0, nullptr), uhmmSuccess);
  EXPECT_EQ(uhmmStreamSynchronize(nullptr), uhmmErrorMemoryAllocation);
  EXPECT_NE(std::strstr(uhmmGetLastErrorMessage(), "prefetch"), nullptr) << uhmmGetLastErrorMessage();
  EXPECT_EQ(uhmmStreamSynchronize(nullptr), uhmmSuccess);  // reported once
  expect_pattern(p, kBytes, 5);
  EXPECT_EQ(uhmmFree(p), uhmmSuccess);
  ::unsetenv("UHMM_EVICT");
}

TEST_F(CApi, DevicesAreCountedAndCurrentPerThread) {
  int n = 0;
  ASSERT_EQ(uhmmGetDeviceCount(&n), uhmmSuccess);
  EXPECT_EQ(n, 2);
  EXPECT_EQ(uhmmGetDeviceCount(nullptr), uhmmErrorInvalidValue);
  ASSERT_EQ(uhmmSetDevice(1), uhmmSuccess);
  std::thread([] {
    int d = -1;
    EXPECT_EQ(uhmmGetDevice(&d), uhmmSuccess);
    EXPECT_EQ(d, 0);
  }).join();
  // The default stream of device 1 and a stream created now both belong to it.
  uhmmStream_t s = nullptr;
  ASSERT_EQ(uhmmStreamCreate(&s), uhmmSuccess);
  void* p = nullptr;
  ASSERT_EQ(uhmmMallocManaged(&p, kBytes, uhmmMemAttachGlobal), uhmmSuccess);
  ASSERT_EQ(uhmmMemPrefetchAsync(p, kBytes, 1, s), uhmmSuccess);
  EXPECT_EQ(uhmmStreamDestroy(s), uhmmSuccess);
  EXPECT_EQ(on(Residency::Device, p, kBytes), kBytes / kPageSize);
  EXPECT_EQ(uhmmFree(p), uhmmSuccess);
}

TEST_F(CApi, ResetFreesEverythingAndTheNextCallStartsAgain) {
  void* p = nullptr;
  ASSERT_EQ(uhmmMallocManaged(&p, kBytes, uhmmMemAttachGlobal), uhmmSuccess);
  uhmmStream_t s = nullptr;
  ASSERT_EQ(uhmmStreamCreate(&s), uhmmSuccess);
  ASSERT_EQ(uhmmDeviceReset(), uhmmSuccess);
  EXPECT_EQ(uhmmStreamSynchronize(s), uhmmErrorInvalidResourceHandle);
  EXPECT_EQ(uhmmFree(p), uhmmErrorInvalidValue);
  EXPECT_EQ(live_ranges(), 0u);
}

TEST_F(CApi, AContextThatCannotStartIsAnInitializationError) {
  ::setenv("UHMM_BACKEND", "no-such-backend", 1);
  ASSERT_EQ(uhmmDeviceReset(), uhmmSuccess);
  void* p = nullptr;
  EXPECT_EQ(uhmmMallocManaged(&p, kBytes, uhmmMemAttachGlobal), uhmmErrorInitializationError);
  EXPECT_NE(std::strstr(uhmmGetLastErrorMessage(), "UHMM_BACKEND"), nullptr) << uhmmGetLastErrorMessage();
  ::setenv("UHMM_BACKEND", "cpu", 1);
  EXPECT_EQ(uhmmMallocManaged(&p, kBytes, uhmmMemAttachGlobal), uhmmSuccess);  // tries again
  EXPECT_EQ(uhmmFree(p), uhmmSuccess);
}

TEST_F(CApi, ManyThreadsAllocatePrefetchAndFree) {
  constexpr int kThreads = 4, kRounds = 8;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([t] {
      uhmmStream_t s = nullptr;
      ASSERT_EQ(uhmmStreamCreate(&s), uhmmSuccess);
      for (int r = 0; r < kRounds; ++r) {
        void* p = nullptr;
        ASSERT_EQ(uhmmMallocManaged(&p, MiB, uhmmMemAttachGlobal), uhmmSuccess);
        const auto seed = static_cast<std::uint64_t>(t * 100 + r);
        fill(p, MiB, seed);
        ASSERT_EQ(uhmmMemPrefetchAsync(p, MiB, r % 2, s), uhmmSuccess);
        ASSERT_EQ(uhmmStreamSynchronize(s), uhmmSuccess);
        expect_pattern(p, MiB, seed);
        ASSERT_EQ(uhmmFree(p), uhmmSuccess);
      }
      ASSERT_EQ(uhmmStreamDestroy(s), uhmmSuccess);
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(live_ranges(), 0u);
}

}  // namespace
}  // namespace uhmm::test
