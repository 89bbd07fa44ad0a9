// managed_memory_resource and managed_allocator: containers in managed
// memory, size classes and alignment, reuse, large allocations, bad input,
// concurrent use, and data that survives migrations.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <memory_resource>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "context_core.hpp"
#include "mm.hpp"
#include "test_support.hpp"
#include "uhmm/default_context.hpp"
#include "uhmm/managed_memory_resource.hpp"
#include "uhmm/uhmm.h"

namespace uhmm::test {
namespace {

class ManagedResource : public ::testing::Test {
 protected:
  std::size_t live_ranges() const { return detail::core(ctx).ranges.overlapping(0, UINTPTR_MAX).size(); }
  Context ctx{cpu_options()};
  managed_memory_resource resource{ctx};

  // The managed range holding p, or throws when there is none.
  void* range_of(const void* p) const {
    const auto span = detail::core(ctx).ranges.find(p);
    return span ? span.range().base() : nullptr;
  }
};

TEST_F(ManagedResource, AVectorLivesInManagedMemoryAndSurvivesMigration) {
  std::vector<std::uint64_t, managed_allocator<std::uint64_t>> v{managed_allocator<std::uint64_t>(resource)};
  for (std::uint64_t i = 0; i < 100'000; ++i) v.push_back(pattern(1, i));
  void* range = range_of(v.data());
  ASSERT_NE(range, nullptr);
  EXPECT_TRUE(resource.owns_range(range));
  const std::size_t bytes = ctx.range_size(range);
  EXPECT_EQ(ctx.migrate_to_device(range, bytes).failed, 0u);
  for (std::uint64_t i = 0; i < v.size(); ++i) ASSERT_EQ(v[i], pattern(1, i)) << i;  // faults back
  EXPECT_TRUE(ctx.validate());
}

TEST_F(ManagedResource, PmrContainersShareArenas) {
  std::pmr::vector<std::pmr::string> names(&resource);
  for (int i = 0; i < 1000; ++i) names.emplace_back("name number " + std::to_string(i) + " long enough to allocate");
  std::pmr::map<int, int> squares(&resource);
  for (int i = 0; i < 1000; ++i) squares[i] = i * i;
  std::set<void*> ranges;
  for (const auto& n : names) ranges.insert(range_of(n.data()));
  for (const auto& [k, v] : squares) ranges.insert(range_of(&v));
  EXPECT_EQ(ranges.size(), 1u) << "2000 small objects share one arena";
  EXPECT_FALSE(ranges.contains(nullptr));
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(squares[i], i * i);
  EXPECT_EQ(names[999], "name number 999 long enough to allocate");
}

TEST_F(ManagedResource, FreedSlotsAreReused) {
  std::vector<void*> first;
  for (int i = 0; i < 64; ++i) first.push_back(resource.allocate(48, 16));
  for (void* p : first) resource.deallocate(p, 48, 16);
  std::set<void*> again;
  for (int i = 0; i < 64; ++i) again.insert(resource.allocate(48, 16));
  EXPECT_EQ(again, std::set<void*>(first.begin(), first.end()));
  for (void* p : again) resource.deallocate(p, 48, 16);
}

TEST_F(ManagedResource, EverySizeAndAlignmentGetsDistinctAlignedWritableMemory) {
  std::vector<std::tuple<void*, std::size_t, std::size_t>> live;
  for (std::size_t align = 1; align <= kPageSize; align *= 2)
    for (std::size_t bytes : {std::size_t{1}, std::size_t{17}, std::size_t{100}, std::size_t{1000},
                              std::size_t{5000}, std::size_t{70'000}, managed_memory_resource::kLargeAllocation,
                              managed_memory_resource::kLargeAllocation + 1}) {
      void* p = resource.allocate(bytes, align);
      ASSERT_EQ(reinterpret_cast<std::uintptr_t>(p) % align, 0u) << bytes << " aligned " << align;
      std::memset(p, static_cast<int>(live.size()), bytes);
      live.emplace_back(p, bytes, align);
    }
  for (std::size_t i = 0; i < live.size(); ++i) {
    const auto& [p, bytes, align] = live[i];
    const auto* c = static_cast<const unsigned char*>(p);
    for (std::size_t k = 0; k < bytes; ++k) ASSERT_EQ(c[k], static_cast<unsigned char>(i)) << "allocation " << i;
  }
  void* big = resource.allocate(100, kBlockSize);  // beyond a page: a range of its own
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(big) % kBlockSize, 0u);
  EXPECT_TRUE(resource.owns_range(big));
  resource.deallocate(big, 100, kBlockSize);
  for (const auto& [p, bytes, align] : live) resource.deallocate(p, bytes, align);
}

TEST_F(ManagedResource, LargeAllocationsAreRangesOfTheirOwn) {
  const std::size_t bytes = managed_memory_resource::kLargeAllocation + 1;
  void* a = resource.allocate(bytes);
  void* b = resource.allocate(bytes);
  EXPECT_EQ(range_of(a), a);
  EXPECT_EQ(range_of(b), b);
  EXPECT_TRUE(resource.owns_range(a));
  const std::size_t before = live_ranges();
  resource.deallocate(a, bytes);
  EXPECT_EQ(live_ranges(), before - 1);
  EXPECT_FALSE(resource.owns_range(a));
  resource.deallocate(b, bytes);
}

TEST_F(ManagedResource, BadInputIsAnErrorOrIgnoredAndChangesNothing) {
  EXPECT_THROW((void)resource.allocate(64, 3), Error);
  EXPECT_THROW((void)resource.allocate(64, 2 * kBlockSize), Error);
  EXPECT_THROW(managed_allocator<int>(resource).allocate(~std::size_t{0} / 2), std::bad_array_new_length);
  void* p = resource.allocate(64);
  resource.deallocate(p, 64);
  resource.deallocate(p, 64);  // a double free: logged, ignored
  int local = 0;
  resource.deallocate(&local, sizeof local);  // not its memory: logged, ignored
  resource.deallocate(static_cast<char*>(p) + 8, 64);  // not a slot
  void* q = resource.allocate(64);
  void* r = resource.allocate(64);
  EXPECT_NE(q, r) << "the double free did not list the slot twice";
  resource.deallocate(q, 64);
  resource.deallocate(r, 64);
  EXPECT_TRUE(ctx.validate());
}

TEST_F(ManagedResource, AnEmptySlabGivesItsPagesBack) {
  // Two slabs of one class; emptying the second discards its pages.
  constexpr std::size_t kSlot = 4096;
  std::vector<void*> slots;
  for (int i = 0; i < 128; ++i) {  // 64 per 256 KiB slab
    slots.push_back(resource.allocate(kSlot));
    std::memset(slots.back(), 1, kSlot);
  }
  const std::size_t before = ctx.counters().pages_discarded_by_call;
  for (std::size_t i = 64; i < slots.size(); ++i) resource.deallocate(slots[i], kSlot);
  EXPECT_EQ(ctx.counters().pages_discarded_by_call - before, 64u);
  for (std::size_t i = 0; i < 64; ++i) resource.deallocate(slots[i], kSlot);
  EXPECT_EQ(ctx.counters().pages_discarded_by_call - before, 64u) << "the class's last slab stays";
}

TEST_F(ManagedResource, ManyThreadsAllocateAndFreeConcurrently) {
  constexpr int kThreads = 4, kRounds = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      std::vector<std::pair<std::uint64_t*, std::size_t>> mine;
      for (int r = 0; r < kRounds; ++r) {
        const std::size_t words = 1 + static_cast<std::size_t>((r * 7 + t) % 300);
        auto* p = static_cast<std::uint64_t*>(resource.allocate(words * 8, 8));
        for (std::size_t i = 0; i < words; ++i) p[i] = pattern(static_cast<std::uint64_t>(t), i + words);
        mine.emplace_back(p, words);
        if (r % 3 == 2) {  // free an older one, checking nobody wrote into it
          auto [q, n] = mine[mine.size() / 2];
          for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(q[i], pattern(static_cast<std::uint64_t>(t), i + n));
          resource.deallocate(q, n * 8, 8);
          mine.erase(mine.begin() + static_cast<std::ptrdiff_t>(mine.size() / 2));
        }
      }
      for (auto [q, n] : mine) {
        for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(q[i], pattern(static_cast<std::uint64_t>(t), i + n));
        resource.deallocate(q, n * 8, 8);
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_TRUE(ctx.validate());
}

TEST_F(ManagedResource, ReleaseFreesEveryRange) {
  const std::size_t before = live_ranges();
  for (int i = 0; i < 10; ++i) (void)resource.allocate(100);
  (void)resource.allocate(managed_memory_resource::kLargeAllocation * 2);
  EXPECT_EQ(live_ranges(), before + 2);
  resource.release();
  EXPECT_EQ(live_ranges(), before);
}

TEST(DefaultManagedResource, TheDefaultAllocatorUsesTheDefaultContext) {
  ::setenv("UHMM_BACKEND", "cpu", 1);
  ASSERT_EQ(uhmmDeviceReset(), uhmmSuccess);
  {
    std::vector<int, managed_allocator<int>> v(1000, 7);
    EXPECT_TRUE(detail::core(default_context()).ranges.find(v.data()));
    EXPECT_EQ(managed_allocator<int>(), managed_allocator<long>());
    void* base = detail::core(default_context()).ranges.find(v.data()).range().base();
    EXPECT_EQ(uhmmFree(base), uhmmErrorInvalidValue) << "the resource's arena is not the C API's to free";
  }
  EXPECT_EQ(uhmmDeviceReset(), uhmmSuccess);
}

}  // namespace
}  // namespace uhmm::test
