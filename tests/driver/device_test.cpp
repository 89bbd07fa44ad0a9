// DeviceImpl, the driver's half of migration: alloc-and-copy with partial
// failure, compound runs and their fallback, device-to-device sources,
// copy_to_ram, page_free; and open_devices.
#include <gtest/gtest.h>
#include <unistd.h>

#include <sys/mman.h>

#include <atomic>
#include <cstring>
#include <map>
#include <thread>
#include <vector>

#include "../../driver/cpu/cpu_backend.hpp"
#include "../../driver/device.hpp"
#include "uhmm/detail/device.hpp"

namespace uhmm::detail {
namespace {

constexpr std::size_t kWords = kPageSize / 8;

std::uint64_t* words(DeviceAddress a) { return reinterpret_cast<std::uint64_t*>(static_cast<std::uintptr_t>(a)); }

void fill(std::uint64_t* page, std::uint64_t seed) {
  for (std::size_t w = 0; w < kWords; ++w) page[w] = seed * 1'000'003 + w;
}
bool has(const std::uint64_t* page, std::uint64_t seed) {
  for (std::size_t w = 0; w < kWords; ++w)
    if (page[w] != seed * 1'000'003 + w) return false;
  return true;
}
bool is_zero(const std::uint64_t* page) {
  for (std::size_t w = 0; w < kWords; ++w)
    if (page[w] != 0) return false;
  return true;
}

// A stand-in for a managed range: 2 MiB-aligned host pages plus src/dst arrays.
class Range {
 public:
  explicit Range(std::size_t pages) : pages_(pages), src_(pages, 0), dst_(pages, 0) {
    const std::size_t bytes = pages * kPageSize + kBlockSize;
    raw_ = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT_NE(raw_, MAP_FAILED);
    raw_bytes_ = bytes;
    const auto a = reinterpret_cast<std::uintptr_t>(raw_);
    base_ = reinterpret_cast<std::byte*>((a + kBlockSize - 1) / kBlockSize * kBlockSize);
  }
  ~Range() { munmap(raw_, raw_bytes_); }
  Range(const Range&) = delete;
  Range& operator=(const Range&) = delete;

  std::uint64_t* page(std::size_t i) const { return reinterpret_cast<std::uint64_t*>(base_ + i * kPageSize); }
  // Selects page i as a populated host page (with data) or a never-populated one.
  void select_host(std::size_t i, std::uint64_t seed) {
    fill(page(i), seed);
    src_[i] = MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE | MIGRATE_PFN_WRITE;
  }
  void select_empty(std::size_t i) { src_[i] = MIGRATE_PFN_MIGRATE; }
  void select_device(std::size_t i, DevicePage p) { src_[i] = migrate_pfn_device(p) | MIGRATE_PFN_MIGRATE; }
  void mark_compound(std::size_t i) { src_[i] |= MIGRATE_PFN_COMPOUND; }

  MigrateVma vma() {
    MigrateVma args;
    args.start = base_;
    args.end = base_ + pages_ * kPageSize;
    args.src = src_.data();
    args.dst = dst_.data();
    return args;
  }
  std::uint64_t dst(std::size_t i) const { return dst_[i]; }
  bool migrated(std::size_t i) const { return (dst_[i] & MIGRATE_PFN_VALID) != 0; }
  DevicePageIndex index(std::size_t i) const { return migrate_pfn_to_device_page(dst_[i]).index; }

 private:
  std::size_t pages_;
  void* raw_ = nullptr;
  std::size_t raw_bytes_ = 0;
  std::byte* base_ = nullptr;
  std::vector<std::uint64_t> src_, dst_;
};

std::unique_ptr<DeviceImpl> make_device(std::size_t pool_pages, OwnerId owner = 1, PagemapLookup lookup = {}) {
  const std::size_t memory = (pool_pages + kPagesPerChunk - 1) / kPagesPerChunk * kChunkSize;
  return std::make_unique<DeviceImpl>(std::make_unique<CpuBackend>(memory), pool_pages, owner, std::move(lookup));
}

TEST(DeviceAllocAndCopy, CopiesHostPagesAndZeroFillsNeverPopulatedOnes) {
  auto device = make_device(kPagesPerChunk);
  // Leave garbage in device pages first: reused pages must not leak it (invariant 4).
  std::vector<DevicePageIndex> dirty(16);
  for (auto& p : dirty) {
    ASSERT_TRUE(device->pool().allocate_page(&p));
    std::memset(words(device->address_of(p)), 0x5a, kPageSize);
  }
  device->pool().free_pages(dirty);

  Range range(8);
  for (std::size_t i = 0; i < 6; ++i) range.select_host(i, i + 1);
  range.select_empty(6);
  range.select_empty(7);
  MigrateVma args = range.vma();
  const Status status = device->alloc_and_copy(args);
  ASSERT_TRUE(status) << status.message;
  EXPECT_EQ(device->pages_in_use(), 8u);
  for (std::size_t i = 0; i < 8; ++i) {
    ASSERT_TRUE(range.migrated(i)) << i;
    EXPECT_EQ(migrate_pfn_to_device_page(range.dst(i)).owner, 1u);
    EXPECT_EQ(range.dst(i) & MIGRATE_PFN_WRITE, i < 6 ? MIGRATE_PFN_WRITE : 0u);
    const std::uint64_t* on_device = words(device->address_of(range.index(i)));
    EXPECT_TRUE(i < 6 ? has(on_device, i + 1) : is_zero(on_device)) << i;
  }
  EXPECT_TRUE(device->validate());
}

TEST(DeviceAllocAndCopy, LeavesUnselectedPagesAlone) {
  auto device = make_device(kPagesPerChunk);
  Range range(4);
  range.select_host(1, 9);
  MigrateVma args = range.vma();
  ASSERT_TRUE(device->alloc_and_copy(args));
  EXPECT_FALSE(range.migrated(0));
  EXPECT_TRUE(range.migrated(1));
  EXPECT_FALSE(range.migrated(2));
  EXPECT_EQ(device->pages_in_use(), 1u);
}

TEST(DeviceAllocAndCopy, InjectedCopyFailureMigratesExactlyThePagesBeforeK) {
  auto device = make_device(kPagesPerChunk);
  FaultInjection inj;
  inj.copy_fail_at_page = 4;
  device->set_fault_injection(inj);
  Range range(10);
  for (std::size_t i = 0; i < 10; ++i) range.select_host(i, 50 + i);
  MigrateVma args = range.vma();
  const Status status = device->alloc_and_copy(args);
  EXPECT_EQ(status.code, Errc::device_error);
  EXPECT_EQ(status.message, "injected copy failure at page 4");
  for (std::size_t i = 0; i < 10; ++i) {
    EXPECT_EQ(range.migrated(i), i < 4) << i;
    if (i < 4) {
      EXPECT_TRUE(has(words(device->address_of(range.index(i))), 50 + i));
    }
  }
  EXPECT_EQ(device->pages_in_use(), 4u) << "failed pages went back to the pool";
  EXPECT_TRUE(device->validate());
}

TEST(DeviceAllocAndCopy, InjectedAllocationFailureIsOutOfMemoryForTheRest) {
  auto device = make_device(kPagesPerChunk);
  FaultInjection inj;
  inj.alloc_pages_left = 3;
  device->set_fault_injection(inj);
  Range range(6);
  for (std::size_t i = 0; i < 6; ++i) range.select_host(i, i);
  MigrateVma args = range.vma();
  const Status status = device->alloc_and_copy(args);
  EXPECT_EQ(status.code, Errc::out_of_memory);
  std::size_t moved = 0;
  for (std::size_t i = 0; i < 6; ++i) moved += range.migrated(i) ? 1 : 0;
  EXPECT_EQ(moved, 3u);
  EXPECT_TRUE(range.migrated(0) && range.migrated(1) && range.migrated(2));
  EXPECT_EQ(device->pages_in_use(), 3u);
}

TEST(DeviceAllocAndCopy, PoolExhaustionMovesWhatFitsAndReportsOutOfMemory) {
  auto device = make_device(4);
  Range range(6);
  for (std::size_t i = 0; i < 6; ++i) range.select_host(i, i);
  MigrateVma args = range.vma();
  EXPECT_EQ(device->alloc_and_copy(args).code, Errc::out_of_memory);
  EXPECT_EQ(device->pages_in_use(), 4u);
  EXPECT_FALSE(range.migrated(4));
  EXPECT_FALSE(range.migrated(5));
}

TEST(DeviceAllocAndCopy, CompoundRunMovesIntoOneWholeChunk) {
  auto device = make_device(2 * kPagesPerChunk);
  Range range(kPagesPerChunk);
  for (std::size_t i = 0; i < kPagesPerChunk; ++i) {
    if (i % 3 == 0)
      range.select_empty(i);
    else
      range.select_host(i, i);
  }
  range.mark_compound(0);
  MigrateVma args = range.vma();
  ASSERT_TRUE(device->alloc_and_copy(args));
  EXPECT_NE(range.dst(0) & MIGRATE_PFN_COMPOUND, 0u);
  const DevicePageIndex first = range.index(0);
  EXPECT_EQ(first % kPagesPerChunk, 0u);
  for (std::size_t i = 0; i < kPagesPerChunk; ++i) {
    ASSERT_EQ(range.index(i), first + i);
    if (i > 0) {
      EXPECT_EQ(range.dst(i) & MIGRATE_PFN_COMPOUND, 0u);
    }
    const std::uint64_t* on_device = words(device->address_of(range.index(i)));
    EXPECT_TRUE(i % 3 == 0 ? is_zero(on_device) : has(on_device, i)) << i;
  }
  EXPECT_EQ(device->pages_in_use(), kPagesPerChunk);
}

TEST(DeviceAllocAndCopy, CompoundRunFallsBackToSinglePagesWhenNoChunkIsWhole) {
  auto device = make_device(2 * kPagesPerChunk);
  // Fragment the whole pool: every other page used, 512 free, no chunk whole.
  std::vector<DevicePageIndex> all(2 * kPagesPerChunk);
  for (auto& p : all) ASSERT_TRUE(device->pool().allocate_page(&p));
  for (std::size_t i = 0; i < all.size(); i += 2) device->pool().free_page(all[i]);
  ASSERT_EQ(device->pool().free_chunks(), 0u);

  Range range(kPagesPerChunk);
  for (std::size_t i = 0; i < kPagesPerChunk; ++i) range.select_host(i, 7 * i);
  range.mark_compound(0);
  MigrateVma args = range.vma();
  ASSERT_TRUE(device->alloc_and_copy(args));
  EXPECT_EQ(range.dst(0) & MIGRATE_PFN_COMPOUND, 0u) << "not one unit: no COMPOUND on the head";
  for (std::size_t i = 0; i < kPagesPerChunk; ++i) {
    ASSERT_TRUE(range.migrated(i)) << i;
    EXPECT_TRUE(has(words(device->address_of(range.index(i))), 7 * i)) << i;
  }
  EXPECT_EQ(device->pages_in_use(), 2 * kPagesPerChunk);
  EXPECT_TRUE(device->validate());
}

TEST(DeviceAllocAndCopy, CompoundRunWithAFailedCopyKeepsThePagesDoneWithoutCompound) {
  auto device = make_device(2 * kPagesPerChunk);
  FaultInjection inj;
  inj.copy_fail_at_page = 100;
  device->set_fault_injection(inj);
  Range range(kPagesPerChunk);
  for (std::size_t i = 0; i < kPagesPerChunk; ++i) range.select_host(i, i);
  range.mark_compound(0);
  MigrateVma args = range.vma();
  EXPECT_EQ(device->alloc_and_copy(args).code, Errc::device_error);
  EXPECT_EQ(range.dst(0) & MIGRATE_PFN_COMPOUND, 0u);
  for (std::size_t i = 0; i < kPagesPerChunk; ++i) EXPECT_EQ(range.migrated(i), i < 100) << i;
  EXPECT_EQ(device->pages_in_use(), 100u);
  EXPECT_TRUE(device->validate());
}

TEST(DeviceAllocAndCopy, CompoundFlagOnAnIncompleteRunMovesSinglePages) {
  auto device = make_device(2 * kPagesPerChunk);
  Range range(kPagesPerChunk);
  for (std::size_t i = 0; i < kPagesPerChunk; ++i)
    if (i != 300) range.select_host(i, i);  // page 300 not selected: not a whole run
  range.mark_compound(0);
  MigrateVma args = range.vma();
  ASSERT_TRUE(device->alloc_and_copy(args));
  EXPECT_EQ(range.dst(0) & MIGRATE_PFN_COMPOUND, 0u);
  EXPECT_FALSE(range.migrated(300));
  EXPECT_EQ(device->pages_in_use(), kPagesPerChunk - 1);
}

TEST(DeviceAllocAndCopy, DeviceSourcesAreCopiedDeviceToDeviceThroughTheLookup) {
  std::map<OwnerId, DevicePagemap*> devices;
  const PagemapLookup lookup = [&](OwnerId o) -> DevicePagemap* {
    const auto it = devices.find(o);
    return it == devices.end() ? nullptr : it->second;
  };
  auto a = make_device(kPagesPerChunk, 1, lookup);
  auto b = make_device(kPagesPerChunk, 2, lookup);
  devices[1] = a.get();
  devices[2] = b.get();

  Range range(3);
  for (std::size_t i = 0; i < 3; ++i) range.select_host(i, 30 + i);
  MigrateVma to_a = range.vma();
  ASSERT_TRUE(a->alloc_and_copy(to_a));
  const DevicePageIndex on_a[] = {range.index(0), range.index(1), range.index(2)};

  Range again(3);  // same pages, now on device 1, moving to device 2
  for (std::size_t i = 0; i < 2; ++i) again.select_device(i, {1, on_a[i]});
  again.select_device(2, {9, 0});  // an owner nobody knows
  MigrateVma to_b = again.vma();
  const Status status = b->alloc_and_copy(to_b);
  EXPECT_EQ(status.code, Errc::invalid_argument);
  for (std::size_t i = 0; i < 2; ++i) {
    ASSERT_TRUE(again.migrated(i));
    EXPECT_EQ(migrate_pfn_to_device_page(again.dst(i)).owner, 2u);
    EXPECT_TRUE(has(words(b->address_of(again.index(i))), 30 + i));
  }
  EXPECT_FALSE(again.migrated(2));
  EXPECT_EQ(b->pages_in_use(), 2u);
  EXPECT_EQ(a->pages_in_use(), 3u) << "the source pages are host/'s to free";
}

TEST(DeviceAllocAndCopy, BadArgumentsAreRejectedWithoutTouchingThePool) {
  auto device = make_device(kPagesPerChunk);
  MigrateVma empty;
  EXPECT_EQ(device->alloc_and_copy(empty).code, Errc::invalid_argument);
  Range range(2);
  range.select_host(0, 1);
  MigrateVma unaligned = range.vma();
  unaligned.start = static_cast<std::byte*>(unaligned.start) + 8;
  EXPECT_EQ(device->alloc_and_copy(unaligned).code, Errc::invalid_argument);
  EXPECT_EQ(device->pages_in_use(), 0u);
}

TEST(DeviceCopyToRam, BringsPagesBackInOrder) {
  auto device = make_device(kPagesPerChunk);
  Range range(4);
  for (std::size_t i = 0; i < 4; ++i) range.select_host(i, 70 + i);
  MigrateVma args = range.vma();
  ASSERT_TRUE(device->alloc_and_copy(args));
  Range back(4);
  const DevicePageIndex pages[] = {range.index(3), range.index(0)};
  std::byte* const dst[] = {reinterpret_cast<std::byte*>(back.page(0)), reinterpret_cast<std::byte*>(back.page(1))};
  const BatchResult r = device->copy_to_ram(pages, dst);
  ASSERT_TRUE(r.status) << r.status.message;
  EXPECT_EQ(r.pages_done, 2u);
  EXPECT_TRUE(has(back.page(0), 73));
  EXPECT_TRUE(has(back.page(1), 70));
}

TEST(DeviceCopyToRam, StopsAtAPageNotInUseAndAtAnInjectedFailure) {
  auto device = make_device(kPagesPerChunk);
  Range range(4);
  for (std::size_t i = 0; i < 4; ++i) range.select_host(i, i + 1);
  MigrateVma args = range.vma();
  ASSERT_TRUE(device->alloc_and_copy(args));
  Range back(4);
  std::byte* const dst[] = {reinterpret_cast<std::byte*>(back.page(0)), reinterpret_cast<std::byte*>(back.page(1)),
                            reinterpret_cast<std::byte*>(back.page(2))};
  const DevicePageIndex with_hole[] = {range.index(0), 400, range.index(1)};
  BatchResult r = device->copy_to_ram(with_hole, dst);
  EXPECT_EQ(r.status.code, Errc::invalid_argument);
  EXPECT_NE(r.status.message.find("not in use"), std::string::npos) << r.status.message;
  EXPECT_EQ(r.pages_done, 1u);
  EXPECT_TRUE(has(back.page(0), 1));

  FaultInjection inj;
  inj.copy_fail_at_page = 2;
  device->set_fault_injection(inj);
  const DevicePageIndex three[] = {range.index(1), range.index(2), range.index(3)};
  r = device->copy_to_ram(three, dst);
  EXPECT_EQ(r.status.code, Errc::device_error);
  EXPECT_EQ(r.pages_done, 2u);
  EXPECT_TRUE(has(back.page(1), 3));

  const DevicePageIndex one[] = {range.index(0)};
  EXPECT_EQ(device->copy_to_ram(one, dst).status.code, Errc::invalid_argument) << "sizes differ";
}

TEST(DevicePageFree, ReturnsPagesToThePoolForReuse) {
  auto device = make_device(kPagesPerChunk);
  Range range(3);
  for (std::size_t i = 0; i < 3; ++i) range.select_host(i, i);
  MigrateVma args = range.vma();
  ASSERT_TRUE(device->alloc_and_copy(args));
  const DevicePageIndex pages[] = {range.index(0), range.index(1), range.index(2)};
  device->page_free(pages);
  EXPECT_EQ(device->pages_in_use(), 0u);
  EXPECT_EQ(device->address_of(pages[0]), 0u);
  EXPECT_TRUE(device->validate());
}

TEST(DeviceConcurrency, ThreadsMigrateBringBackAndFreeTheirOwnRangesAtOnce) {
  auto device = make_device(4 * kPagesPerChunk);
  constexpr int kThreads = 4;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 15; ++round) {
        Range range(64);
        const std::uint64_t seed = static_cast<std::uint64_t>(t * 10'000 + round * 100);
        for (std::size_t i = 0; i < 64; ++i) range.select_host(i, seed + i);
        MigrateVma args = range.vma();
        if (!device->alloc_and_copy(args)) ++failures;
        std::vector<DevicePageIndex> pages(64);
        std::vector<std::byte*> dst(64);
        Range back(64);
        for (std::size_t i = 0; i < 64; ++i) {
          pages[i] = range.index(i);
          dst[i] = reinterpret_cast<std::byte*>(back.page(i));
        }
        const BatchResult r = device->copy_to_ram(pages, dst);
        if (!r.status || r.pages_done != 64) ++failures;
        for (std::size_t i = 0; i < 64; ++i)
          if (!has(back.page(i), seed + i)) ++failures;
        device->page_free(pages);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(device->pages_in_use(), 0u);
  EXPECT_TRUE(device->validate());
}

TEST(DeviceConstruction, RefusesOwnerZeroAndANullBackend) {
  EXPECT_THROW(make_device(16, kNoOwner), Error);
  EXPECT_THROW(DeviceImpl(nullptr, 16, 1, {}), Error);
}

TEST(OpenDevices, CpuBackendOpensTheRequestedDevicesNumberedFromOne) {
  ContextOptions options;
  options.backend = "cpu";
  options.devices = 2;
  options.device_pool_bytes = 3 * kChunkSize;
  auto devices = open_devices(options, {});
  ASSERT_EQ(devices.size(), 2u);
  for (std::size_t d = 0; d < 2; ++d) {
    EXPECT_EQ(devices[d]->owner(), d + 1);
    EXPECT_EQ(devices[d]->capacity_pages(), 3 * kPagesPerChunk);
    EXPECT_EQ(devices[d]->info().backend, "cpu");
    EXPECT_NE(devices[d]->info().capabilities & kCapHostKernels, 0u);
  }
  EXPECT_NE(devices[0]->info().name, devices[1]->info().name);
}

TEST(OpenDevices, AutoChoosesTheCpuBackendInThisBuild) {
  ContextOptions options;
  options.device_pool_bytes = kChunkSize;
  auto devices = open_devices(options, {});
  ASSERT_EQ(devices.size(), 1u);
  EXPECT_EQ(devices[0]->info().backend, "cpu");
}

TEST(OpenDevices, GpuBackendsWithoutAGpuAreRefusedSayingWhy) {
  if (::access("/dev/nvidiactl", F_OK) == 0 || ::access("/dev/kfd", F_OK) == 0)
    GTEST_SKIP() << "a GPU driver's device node is here";
  for (const char* name : {"cuda", "hip"}) {
    ContextOptions options;
    options.backend = name;
    try {
      open_devices(options, {});
      FAIL() << name;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::device_error);
      const std::string what = e.what();
      EXPECT_NE(what.find(std::string("backend '") + name + "' (UHMM_BACKEND) is not available"), std::string::npos)
          << what;
      // The plugin is missing (this test binary is not beside libuhmm.so) or its runtime found no device.
      EXPECT_NE(what.find("plugin"), std::string::npos) << what;
    }
  }
}

TEST(OpenDevices, UnknownBackendAndBadCountsAreInvalidArguments) {
  ContextOptions options;
  options.backend = "vulkan";
  try {
    open_devices(options, {});
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("'vulkan'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("auto, cpu"), std::string::npos) << e.what();
  }
  options.backend = "cpu";
  options.devices = 0;
  EXPECT_THROW(open_devices(options, {}), Error);
  options.devices = 1;
  options.device_pool_bytes = 100;
  EXPECT_THROW(open_devices(options, {}), Error);
}

}  // namespace
}  // namespace uhmm::detail
