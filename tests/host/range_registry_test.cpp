// RangeRegistry and RangeSpan (host/range_registry.*): the managed ranges of
// a context by address and id, where every user span is validated. The
// contract: resolve() turns a good span into (range, first page, count) held
// open as an operation, and any bad one into a uhmm::Error of the right code
// with nothing held; find/find_by_id/size_of/overlapping look ranges up,
// half-open at their ends; remove() and retire() drop one; a range allocated
// in a hole another range's owner unmapped is found there, and a live range
// wins over a dead one starting at the same address. Readers run while other
// threads add and remove ranges.
//
// The ranges here have addresses only: the mechanism below maps nothing (the
// registry never touches range memory), so ranges can be placed side by side
// and inside each other's holes.
#include <gtest/gtest.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "range_registry.hpp"
#include "uhmm/error.hpp"

namespace uhmm::test {
namespace {

using detail::ManagedRange;
using detail::RangeRegistry;
using detail::RangeSpan;

constexpr std::uintptr_t kBase = std::uintptr_t{0x6000} << 32;  // never mapped: only compared
constexpr std::size_t kBlockBytes = kBlockSize;

class AddressOnlyMapping final : public detail::RangeMapping {
 public:
  AddressOnlyMapping(std::uintptr_t base, std::size_t bytes) {
    base_ = reinterpret_cast<std::byte*>(base);
    bytes_ = bytes;
  }
};

// A mechanism whose ranges are addresses alone; nothing else is called.
class AddressOnlyMechanism final : public detail::FaultMechanism {
 public:
  std::uintptr_t next_base = kBase;
  const char* name() const noexcept override { return "address-only"; }
  std::unique_ptr<detail::RangeMapping> map_range(std::size_t bytes) override {
    return std::make_unique<AddressOnlyMapping>(next_base, bytes);
  }
  int poll_fd() const noexcept override { return -1; }
  std::size_t read_faults(detail::FaultEvent*, std::size_t) noexcept override { return 0; }
  int install_zeros(ManagedRange&, std::size_t, std::size_t) noexcept override { return ENOSYS; }
  int install_copy(ManagedRange&, std::size_t, std::size_t, const std::byte*, std::size_t*) noexcept override {
    return ENOSYS;
  }
  int write_protect(ManagedRange&, std::size_t, std::size_t, bool) noexcept override { return ENOSYS; }
  int drop(ManagedRange&, std::size_t, std::size_t) noexcept override { return ENOSYS; }
  bool has_poison() const noexcept override { return false; }
  int poison(ManagedRange&, std::size_t, std::size_t) noexcept override { return ENOSYS; }
  int wake(std::uintptr_t, std::size_t) noexcept override { return ENOSYS; }
};

void* at(std::uintptr_t addr) { return reinterpret_cast<void*>(addr); }

class RangeRegistryTest : public ::testing::Test {
 protected:
  std::shared_ptr<ManagedRange> add(std::uint32_t id, std::uintptr_t base, std::size_t bytes) {
    mechanism_.next_base = base;
    auto range = std::make_shared<ManagedRange>(id, bytes, mechanism_);
    registry_.add(range);
    return range;
  }
  // The code of the uhmm::Error resolve throws, Errc::ok if none.
  Errc resolve_error(std::uintptr_t p, std::size_t bytes) {
    try {
      (void)registry_.resolve(at(p), bytes, "test");
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("test: "), std::string::npos) << e.what();  // names the call
      return e.code();
    }
    return Errc::ok;
  }

  AddressOnlyMechanism mechanism_;
  RangeRegistry registry_;
};

TEST_F(RangeRegistryTest, ResolveGivesTheRangeFirstPageAndCountAndHoldsItOpen) {
  auto range = add(1, kBase, 2 * kBlockBytes);
  {
    RangeSpan span = registry_.resolve(at(kBase + kBlockBytes - kPageSize), 2 * kPageSize, "test");
    ASSERT_TRUE(span);
    EXPECT_EQ(&span.range(), range.get());
    EXPECT_EQ(span.first(), kPagesPerBlock - 1);  // across the block boundary
    EXPECT_EQ(span.count(), 2u);
    EXPECT_EQ(span.end(), kPagesPerBlock + 1);
    EXPECT_FALSE(range->idle());
  }
  EXPECT_TRUE(range->idle());
  RangeSpan whole = registry_.resolve(at(kBase), 2 * kBlockBytes, "test");
  EXPECT_EQ(whole.first(), 0u);
  EXPECT_EQ(whole.count(), 2 * kPagesPerBlock);
  RangeSpan last = registry_.resolve(at(kBase + 2 * kBlockBytes - kPageSize), kPageSize, "test");
  EXPECT_EQ(last.first(), 2 * kPagesPerBlock - 1);
}

TEST_F(RangeRegistryTest, MovingASpanMovesItsHoldAndAssigningEndsTheOldOne) {
  auto a = add(1, kBase, kBlockBytes);
  auto b = add(2, kBase + kBlockBytes, kBlockBytes);
  RangeSpan span = registry_.resolve(at(kBase), kPageSize, "test");
  RangeSpan moved(std::move(span));
  EXPECT_FALSE(a->idle());
  moved = registry_.resolve(at(kBase + kBlockBytes), kPageSize, "test");
  EXPECT_TRUE(a->idle());
  EXPECT_FALSE(b->idle());
  moved = RangeSpan{};
  EXPECT_TRUE(b->idle());
  EXPECT_FALSE(moved);
}

TEST_F(RangeRegistryTest, BadSpansAreRefusedWithTheirCodeAndHoldNothing) {
  auto range = add(1, kBase, kBlockBytes);
  EXPECT_EQ(resolve_error(0, kPageSize), Errc::invalid_argument);
  EXPECT_EQ(resolve_error(kBase, 0), Errc::zero_length);
  EXPECT_EQ(resolve_error(kBase + 1, kPageSize), Errc::not_aligned);
  EXPECT_EQ(resolve_error(kBase, kPageSize + 1), Errc::not_aligned);
  EXPECT_EQ(resolve_error(kBase - kPageSize, kPageSize), Errc::out_of_range);  // before it
  EXPECT_EQ(resolve_error(kBase + kBlockBytes, kPageSize), Errc::out_of_range);  // just past its end
  EXPECT_EQ(resolve_error(kBase, kBlockBytes + kPageSize), Errc::out_of_range);  // runs past its end
  EXPECT_EQ(resolve_error(kBase + kPageSize, ~std::size_t{0} & ~(kPageSize - 1)), Errc::out_of_range);
  EXPECT_TRUE(range->idle());
}

TEST_F(RangeRegistryTest, ASpanRunningIntoTheNextRangeCrossesRanges) {
  add(1, kBase, kBlockBytes);
  add(2, kBase + kBlockBytes, kBlockBytes);  // adjacent
  EXPECT_EQ(resolve_error(kBase + kBlockBytes - kPageSize, 2 * kPageSize), Errc::crosses_ranges);
  EXPECT_EQ(resolve_error(kBase, 2 * kBlockBytes), Errc::crosses_ranges);
  add(3, kBase + 3 * kBlockBytes, kBlockBytes);  // a gap before it
  EXPECT_EQ(resolve_error(kBase + kBlockBytes, 2 * kBlockBytes), Errc::out_of_range);
  EXPECT_EQ(resolve_error(kBase + kBlockBytes, 3 * kBlockBytes), Errc::crosses_ranges);
}

TEST_F(RangeRegistryTest, UnmappedPagesAreOutOfRange) {
  auto range = add(1, kBase, 3 * kBlockBytes);
  range->mark_unmapped(kPagesPerBlock, 2 * kPagesPerBlock);  // the middle block
  EXPECT_EQ(resolve_error(kBase + kBlockBytes, kPageSize), Errc::out_of_range);
  EXPECT_EQ(resolve_error(kBase, 3 * kBlockBytes), Errc::out_of_range);
  EXPECT_EQ(resolve_error(kBase + kBlockBytes - kPageSize, kPageSize), Errc::ok);
  EXPECT_EQ(resolve_error(kBase + 2 * kBlockBytes, kPageSize), Errc::ok);
  // find() names the range whose hole it is (its callers check the page).
  RangeSpan hole = registry_.find(at(kBase + kBlockBytes));
  ASSERT_TRUE(hole);
  EXPECT_EQ(&hole.range(), range.get());
  EXPECT_TRUE(hole.range().any_unmapped(hole.first(), hole.end()));
  hole = RangeSpan{};
  EXPECT_TRUE(range->idle());
}

TEST_F(RangeRegistryTest, ARangeInAnotherRangesHoleIsFoundThere) {
  auto outer = add(1, kBase, 3 * kBlockBytes);
  outer->mark_unmapped(kPagesPerBlock, 2 * kPagesPerBlock);
  auto inner = add(2, kBase + kBlockBytes, kBlockBytes);  // allocated in the hole
  RangeSpan span = registry_.resolve(at(kBase + kBlockBytes + kPageSize), kPageSize, "test");
  EXPECT_EQ(&span.range(), inner.get());
  EXPECT_EQ(span.first(), 1u);
  EXPECT_EQ(&registry_.find(at(kBase + 2 * kBlockBytes - 1)).range(), inner.get());
  EXPECT_EQ(&registry_.find(at(kBase + 2 * kBlockBytes)).range(), outer.get());  // past the hole
  EXPECT_EQ(&registry_.find(at(kBase)).range(), outer.get());
  EXPECT_EQ(registry_.size_of(at(kBase + kBlockBytes), "test"), kBlockBytes);
}

TEST_F(RangeRegistryTest, ALiveRangeWinsOverADeadOneStartingAtTheSameAddress) {
  auto old_range = add(1, kBase, 2 * kBlockBytes);
  old_range->mark_unmapped(0, kPagesPerBlock);  // its first block is gone
  auto fresh = add(2, kBase, kBlockBytes);      // and a new range lives there
  EXPECT_EQ(registry_.size_of(at(kBase), "test"), kBlockBytes);
  EXPECT_EQ(&registry_.find(at(kBase)).range(), fresh.get());
  EXPECT_EQ(&registry_.find(at(kBase + kBlockBytes)).range(), old_range.get());
  EXPECT_EQ(registry_.remove(at(kBase), "test"), fresh);
  EXPECT_TRUE(registry_.find_by_id(1));
  EXPECT_FALSE(registry_.find_by_id(2));
}

TEST_F(RangeRegistryTest, FindIsHalfOpenAndNeverThrows) {
  auto range = add(7, kBase, kBlockBytes);
  RangeSpan inside = registry_.find(at(kBase + kBlockBytes - 1));
  ASSERT_TRUE(inside);
  EXPECT_EQ(inside.first(), kPagesPerBlock - 1);
  EXPECT_EQ(inside.count(), 1u);
  EXPECT_FALSE(registry_.find(at(kBase + kBlockBytes)));
  EXPECT_FALSE(registry_.find(at(kBase - 1)));
  EXPECT_FALSE(registry_.find(nullptr));
  RangeSpan by_id = registry_.find_by_id(7);
  ASSERT_TRUE(by_id);
  EXPECT_EQ(by_id.count(), kPagesPerBlock);
  EXPECT_FALSE(registry_.find_by_id(8));
}

TEST_F(RangeRegistryTest, SizeOfNeedsTheStartOfALiveRange) {
  add(1, kBase, 2 * kBlockBytes);
  EXPECT_EQ(registry_.size_of(at(kBase), "test"), 2 * kBlockBytes);
  try {
    (void)registry_.size_of(at(kBase + kPageSize), "test");
    ADD_FAILURE() << "an inner address has no size";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::unknown_range);
  }
  try {
    (void)registry_.size_of(nullptr, "test");
    ADD_FAILURE() << "null has no size";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument);
  }
}

TEST_F(RangeRegistryTest, RemoveRefusesAnythingButTheStartOfALiveRangeAndChangesNothing) {
  auto range = add(1, kBase, 2 * kBlockBytes);
  try {
    (void)registry_.remove(at(kBase + kBlockBytes), "test");
    ADD_FAILURE() << "removed by an inner address";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::unknown_range);
    EXPECT_NE(std::string(e.what()).find("does not start it"), std::string::npos) << e.what();
  }
  try {
    (void)registry_.remove(at(kBase + 4 * kBlockBytes), "test");
    ADD_FAILURE() << "removed what is not there";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::unknown_range);
    EXPECT_NE(std::string(e.what()).find("is not a live managed range"), std::string::npos) << e.what();
  }
  try {
    (void)registry_.remove(nullptr, "test");
    ADD_FAILURE() << "removed null";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument);
  }
  EXPECT_TRUE(registry_.find_by_id(1));
  EXPECT_EQ(registry_.remove(at(kBase), "test"), range);
  EXPECT_FALSE(registry_.find_by_id(1));
  EXPECT_FALSE(registry_.find(at(kBase)));
  EXPECT_EQ(resolve_error(kBase, kPageSize), Errc::out_of_range);
  EXPECT_TRUE(registry_.all().empty());
}

TEST_F(RangeRegistryTest, RetireDropsARangeOnce) {
  auto range = add(1, kBase, kBlockBytes);
  auto other = add(2, kBase + kBlockBytes, kBlockBytes);
  EXPECT_TRUE(registry_.retire(*range));
  EXPECT_FALSE(registry_.retire(*range));
  EXPECT_FALSE(registry_.find(at(kBase)));
  EXPECT_FALSE(registry_.find_by_id(1));
  EXPECT_EQ(registry_.all(), (std::vector<std::shared_ptr<ManagedRange>>{other}));
}

TEST_F(RangeRegistryTest, OverlappingIsHalfOpenOnBothSides) {
  auto a = add(1, kBase, kBlockBytes);
  auto big = add(2, kBase + 4 * kBlockBytes, 8 * kBlockBytes);  // the largest: bounds the walk down
  auto c = add(3, kBase + 20 * kBlockBytes, kBlockBytes);
  using Ranges = std::vector<std::shared_ptr<ManagedRange>>;
  EXPECT_EQ(registry_.overlapping(kBase, kBase + kBlockBytes), (Ranges{a}));
  EXPECT_EQ(registry_.overlapping(kBase + kBlockBytes, kBase + 4 * kBlockBytes), Ranges{});  // between
  EXPECT_EQ(registry_.overlapping(kBase + kBlockBytes - 1, kBase + 4 * kBlockBytes + 1), (Ranges{big, a}));
  EXPECT_EQ(registry_.overlapping(kBase + 11 * kBlockBytes, kBase + 11 * kBlockBytes + 1), (Ranges{big}));
  EXPECT_EQ(registry_.overlapping(kBase + 12 * kBlockBytes, kBase + 20 * kBlockBytes), Ranges{});
  EXPECT_EQ(registry_.overlapping(0, ~std::uintptr_t{0}), (Ranges{c, big, a}));
  EXPECT_EQ(registry_.overlapping(kBase, kBase), Ranges{});
}

TEST_F(RangeRegistryTest, LookupsRunWhileOtherRangesComeAndGo) {
  // One range stays; two threads add and remove ranges around it while two
  // others resolve and find in it: every lookup of the fixed range succeeds.
  auto fixed = add(1, kBase, kBlockBytes);
  AddressOnlyMechanism mechanisms[2];
  std::atomic<bool> stop{false};
  std::atomic<unsigned> misses{0};
  auto churn = [&](unsigned t) {
    for (std::uint32_t i = 0; i < 200; ++i) {
      const std::uintptr_t base = kBase + (2 + 2 * t + (i % 2) * 8) * kBlockBytes;
      mechanisms[t].next_base = base;
      registry_.add(std::make_shared<ManagedRange>(100 + 1000 * t + i, kBlockBytes, mechanisms[t]));
      (void)registry_.overlapping(kBase, kBase + 32 * kBlockBytes);
      auto removed = registry_.remove(at(base), "test");
      removed->wait_idle();
    }
  };
  auto lookups = [&] {
    while (!stop.load()) {
      if (registry_.find(at(kBase + kPageSize)).first() != 1) misses.fetch_add(1);
      if (registry_.resolve(at(kBase), kBlockBytes, "test").count() != kPagesPerBlock) misses.fetch_add(1);
      (void)registry_.find(at(kBase + 2 * kBlockBytes));  // a churning range, or none
      (void)registry_.all();
    }
  };
  std::thread l1(lookups), l2(lookups);
  std::thread c1(churn, 0u), c2(churn, 1u);
  c1.join();
  c2.join();
  stop = true;
  l1.join();
  l2.join();
  EXPECT_EQ(misses.load(), 0u);
  EXPECT_TRUE(fixed->idle());
  EXPECT_EQ(registry_.all().size(), 1u);
}

}  // namespace
}  // namespace uhmm::test
