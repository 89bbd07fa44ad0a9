// The device page pool: growth, exhaustion, whole-chunk allocation, free-list
// reuse, injection, and consistency under random use.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "../../driver/cpu/cpu_backend.hpp"
#include "../../driver/page_pool.hpp"

namespace uhmm::detail {
namespace {

constexpr auto kChunkPages = static_cast<DevicePageIndex>(kPagesPerChunk);

TEST(PagePool, GrowsOneChunkAtATimeOnDemand) {
  CpuBackend backend(4 * kChunkSize);
  PagePool pool(backend, 4 * kPagesPerChunk);
  EXPECT_EQ(pool.chunks(), 0u);
  EXPECT_EQ(backend.chunks_in_use(), 0u);
  DevicePageIndex p = 0;
  ASSERT_TRUE(pool.allocate_page(&p));
  EXPECT_EQ(pool.chunks(), 1u);
  for (std::size_t i = 1; i < kPagesPerChunk; ++i) ASSERT_TRUE(pool.allocate_page(&p));
  EXPECT_EQ(pool.chunks(), 1u);
  ASSERT_TRUE(pool.allocate_page(&p));
  EXPECT_EQ(pool.chunks(), 2u);
  EXPECT_EQ(p / kPagesPerChunk, 1u);
  EXPECT_EQ(pool.pages_in_use(), kPagesPerChunk + 1);
  EXPECT_TRUE(pool.validate());
}

TEST(PagePool, IndexIsChunkTimesPagesPerChunkPlusSlotAndAddressFollows) {
  CpuBackend backend(2 * kChunkSize);
  PagePool pool(backend, 2 * kPagesPerChunk);
  DevicePageIndex first = 0, second = 0;
  ASSERT_TRUE(pool.allocate_page(&first));
  ASSERT_TRUE(pool.allocate_page(&second));
  EXPECT_EQ(first, 0u);
  EXPECT_EQ(second, 1u);
  EXPECT_EQ(pool.address_of(second), pool.address_of(first) + kPageSize);
  EXPECT_EQ(pool.address_of(first) % kChunkSize, 0u);
  EXPECT_EQ(pool.address_of(7), 0u) << "a page not in use has no address";
}

TEST(PagePool, ExhaustionIsOutOfMemoryAndFreeingMakesRoomAgain) {
  CpuBackend backend(kChunkSize);
  PagePool pool(backend, 100);  // capacity below one chunk: the rest of the chunk is unused
  std::vector<DevicePageIndex> pages(100);
  for (auto& p : pages) ASSERT_TRUE(pool.allocate_page(&p));
  DevicePageIndex extra = 0;
  const Status full = pool.allocate_page(&extra);
  EXPECT_EQ(full.code, Errc::out_of_memory);
  EXPECT_NE(full.message.find("100 of 100"), std::string::npos) << full.message;
  pool.free_page(pages[42]);
  ASSERT_TRUE(pool.allocate_page(&extra));
  EXPECT_EQ(extra, pages[42]) << "the free list hands back the page just freed";
  EXPECT_TRUE(pool.validate());
}

TEST(PagePool, BackendOutOfMemoryIsReportedAsOutOfMemory) {
  CpuBackend backend(kChunkSize);      // one chunk of device memory...
  PagePool pool(backend, 4 * kPagesPerChunk);  // ...under a pool that believes in four
  DevicePageIndex p = 0;
  for (std::size_t i = 0; i < kPagesPerChunk; ++i) ASSERT_TRUE(pool.allocate_page(&p));
  EXPECT_EQ(pool.allocate_page(&p).code, Errc::out_of_memory);
  EXPECT_TRUE(pool.validate());
}

TEST(PagePool, FreedPagesAreReusedBeforeTheFreeListGrowsTheNextChunk) {
  CpuBackend backend(2 * kChunkSize);
  PagePool pool(backend, 2 * kPagesPerChunk);
  std::vector<DevicePageIndex> pages(10);
  for (auto& p : pages) ASSERT_TRUE(pool.allocate_page(&p));
  const std::set<DevicePageIndex> freed{pages[2], pages[5], pages[7]};
  for (auto p : freed) pool.free_page(p);
  std::set<DevicePageIndex> again;
  for (int i = 0; i < 3; ++i) {
    DevicePageIndex p = 0;
    ASSERT_TRUE(pool.allocate_page(&p));
    again.insert(p);
  }
  EXPECT_EQ(again, freed);
  EXPECT_EQ(pool.chunks(), 1u);
}

TEST(PagePool, WholeChunkAllocationTakesAnEntirelyFreeChunk) {
  CpuBackend backend(2 * kChunkSize);
  PagePool pool(backend, 2 * kPagesPerChunk);
  DevicePageIndex single = 0, first = 0;
  ASSERT_TRUE(pool.allocate_page(&single));  // chunk 0 is now partly used
  ASSERT_TRUE(pool.allocate_chunk(&first));
  EXPECT_EQ(first, kChunkPages) << "chunk 0 is not whole; the pool grew chunk 1";
  EXPECT_EQ(pool.pages_in_use(), kPagesPerChunk + 1);
  for (DevicePageIndex j = 0; j < kChunkPages; ++j) EXPECT_TRUE(pool.in_use(first + j));
  // Single pages of a compound chunk are freed one by one.
  for (DevicePageIndex j = 0; j < kChunkPages; ++j) pool.free_page(first + j);
  EXPECT_EQ(pool.free_chunks(), 1u);
  DevicePageIndex again = 0;
  ASSERT_TRUE(pool.allocate_chunk(&again));
  EXPECT_EQ(again, first);
  EXPECT_TRUE(pool.validate());
}

TEST(PagePool, FragmentationLeavesNoWholeChunkEvenWithFreePages) {
  CpuBackend backend(2 * kChunkSize);
  PagePool pool(backend, 2 * kPagesPerChunk);
  std::vector<DevicePageIndex> pages(2 * kPagesPerChunk);
  for (auto& p : pages) ASSERT_TRUE(pool.allocate_page(&p));
  // Free every other page: half the pool is free, no chunk is whole.
  for (std::size_t i = 0; i < pages.size(); i += 2) pool.free_page(pages[i]);
  DevicePageIndex first = 0;
  EXPECT_EQ(pool.allocate_chunk(&first).code, Errc::out_of_memory);
  DevicePageIndex p = 0;
  EXPECT_TRUE(pool.allocate_page(&p)) << "single pages are still there";
  EXPECT_TRUE(pool.validate());
}

TEST(PagePool, SinglePagesPreferPartlyUsedChunksToKeepWholeChunksFree) {
  CpuBackend backend(2 * kChunkSize);
  PagePool pool(backend, 2 * kPagesPerChunk);
  DevicePageIndex chunk0 = 0, chunk1 = 0;
  ASSERT_TRUE(pool.allocate_chunk(&chunk0));
  ASSERT_TRUE(pool.allocate_chunk(&chunk1));
  pool.free_page(chunk1 + 3);                                  // chunk 1: partly used
  for (DevicePageIndex j = 0; j < kChunkPages; ++j) pool.free_page(chunk0 + j);  // chunk 0: whole
  DevicePageIndex p = 0;
  ASSERT_TRUE(pool.allocate_page(&p));
  EXPECT_EQ(p, chunk1 + 3);
  EXPECT_EQ(pool.free_chunks(), 1u);
}

TEST(PagePool, InjectedAllocationFailureStartsAfterTheGivenNumberOfPages) {
  CpuBackend backend(4 * kChunkSize);
  PagePool pool(backend, 4 * kPagesPerChunk);
  pool.set_alloc_pages_left(3);
  DevicePageIndex p = 0;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(pool.allocate_page(&p));
  const Status injected = pool.allocate_page(&p);
  EXPECT_EQ(injected.code, Errc::out_of_memory);
  EXPECT_NE(injected.message.find("injected"), std::string::npos);
  EXPECT_EQ(pool.allocate_chunk(&p).code, Errc::out_of_memory);
  pool.set_alloc_pages_left(kPagesPerChunk - 1);
  EXPECT_EQ(pool.allocate_chunk(&p).code, Errc::out_of_memory) << "a chunk counts as 512 pages";
  EXPECT_EQ(pool.alloc_pages_left(), static_cast<std::int64_t>(kPagesPerChunk - 1));
  pool.set_alloc_pages_left(-1);
  EXPECT_TRUE(pool.allocate_chunk(&p));
  EXPECT_EQ(pool.pages_in_use(), 3 + kPagesPerChunk);
}

TEST(PagePool, DoubleFreeAndUnknownPagesAreCountedAndIgnored) {
  CpuBackend backend(kChunkSize);
  PagePool pool(backend, kPagesPerChunk);
  DevicePageIndex p = 0;
  ASSERT_TRUE(pool.allocate_page(&p));
  pool.free_page(p);
  pool.free_page(p);
  pool.free_page(1'000'000);
  EXPECT_EQ(pool.invalid_frees(), 2u);
  EXPECT_EQ(pool.pages_in_use(), 0u);
  EXPECT_TRUE(pool.validate());
}

TEST(PagePool, DestructionReturnsEveryChunkToTheBackend) {
  CpuBackend backend(3 * kChunkSize);
  {
    PagePool pool(backend, 3 * kPagesPerChunk);
    DevicePageIndex p = 0;
    ASSERT_TRUE(pool.allocate_chunk(&p));
    ASSERT_TRUE(pool.allocate_page(&p));
    EXPECT_EQ(backend.chunks_in_use(), 2u);
    pool.free_page(p);
  }
  EXPECT_EQ(backend.chunks_in_use(), 0u);
}

TEST(PagePool, ValidateHoldsAfterSeededRandomAllocationsAndFrees) {
  for (unsigned seed : {1u, 2u, 3u, 42u}) {
    CpuBackend backend(4 * kChunkSize);
    PagePool pool(backend, 3 * kPagesPerChunk + 100);
    std::mt19937 rng(seed);
    std::vector<DevicePageIndex> live;
    for (int step = 0; step < 5000; ++step) {
      const auto op = rng() % 10;
      if (op < 5) {
        DevicePageIndex p = 0;
        if (pool.allocate_page(&p)) live.push_back(p);
      } else if (op < 6) {
        DevicePageIndex first = 0;
        if (pool.allocate_chunk(&first))
          for (DevicePageIndex j = 0; j < kChunkPages; ++j) live.push_back(first + j);
      } else if (!live.empty()) {
        const std::size_t k = rng() % live.size();
        pool.free_page(live[k]);
        live[k] = live.back();
        live.pop_back();
      }
      ASSERT_EQ(pool.pages_in_use(), live.size()) << "seed " << seed << " step " << step;
      if (step % 97 == 0) {
        ASSERT_TRUE(pool.validate()) << pool.validate().message;
      }
    }
    std::sort(live.begin(), live.end());
    EXPECT_TRUE(std::adjacent_find(live.begin(), live.end()) == live.end()) << "a page was handed out twice";
    EXPECT_TRUE(pool.validate());
    EXPECT_LE(pool.pages_in_use(), pool.capacity_pages());
    EXPECT_EQ(pool.invalid_frees(), 0u);
  }
}

TEST(PagePool, ConcurrentAllocationsNeverHandOutAPageTwice) {
  CpuBackend backend(8 * kChunkSize);
  PagePool pool(backend, 8 * kPagesPerChunk);
  constexpr int kThreads = 4;
  std::vector<std::vector<DevicePageIndex>> got(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(t));
      std::vector<DevicePageIndex> mine;
      for (int i = 0; i < 3000; ++i) {
        DevicePageIndex p = 0;
        if (rng() % 3 != 0 || mine.empty()) {
          if (pool.allocate_page(&p)) mine.push_back(p);
        } else {
          pool.free_page(mine.back());
          mine.pop_back();
        }
      }
      got[static_cast<std::size_t>(t)] = mine;
    });
  }
  for (auto& th : threads) th.join();
  std::vector<DevicePageIndex> all;
  for (auto& v : got) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  EXPECT_TRUE(std::adjacent_find(all.begin(), all.end()) == all.end());
  EXPECT_EQ(pool.pages_in_use(), all.size());
  EXPECT_TRUE(pool.validate());
}

// Issue 16, defect 8: a lowered limit gives the chunks left entirely free
// back to the backend (its device memory), highest first, down to the chunks
// the limit needs; a partly used chunk stays. The pool grows into the numbers
// given back when the limit rises again.
TEST(PagePool, ReleaseFreeChunksGivesBackEmptyChunksBeyondTheLimit) {
  CpuBackend backend(4 * kChunkSize);
  PagePool pool(backend, 4 * kPagesPerChunk);
  std::vector<DevicePageIndex> pages(3 * kPagesPerChunk + 1);
  for (auto& p : pages) ASSERT_TRUE(pool.allocate_page(&p));
  ASSERT_EQ(pool.chunks(), 4u);
  EXPECT_EQ(pool.release_free_chunks(), 0u) << "nothing is limited";
  // Chunks 1 and 3 entirely free, chunk 2 all but its first page.
  for (std::size_t i = kPagesPerChunk; i < 3 * kPagesPerChunk + 1; ++i)
    if (i != 2 * kPagesPerChunk) pool.free_page(pages[i]);
  pool.set_limit_pages(kPagesPerChunk + 1);
  EXPECT_EQ(pool.release_free_chunks(), 2u);
  EXPECT_EQ(pool.chunks(), 2u);
  EXPECT_EQ(backend.chunks_in_use(), 2u);
  EXPECT_TRUE(pool.validate());
  pool.set_limit_pages(4 * kPagesPerChunk);
  DevicePageIndex whole = 0;
  ASSERT_TRUE(pool.allocate_chunk(&whole));
  EXPECT_EQ(whole, kChunkPages) << "the lowest number given back is backed again";
  EXPECT_EQ(backend.chunks_in_use(), 3u);
  EXPECT_TRUE(pool.validate());
}

}  // namespace
}  // namespace uhmm::detail
