// AdviceTable and AdviceCursor (host/advice_table.*): a range's advice kept
// as sorted, disjoint runs of advised pages, no two adjacent runs with equal
// advice, none without advice. The contract: update() applies a change to
// every page of [first, end), advised or not, splitting and merging runs;
// get() and runs() read it back (runs clipped to the span asked); empty()
// says whether any page has advice; the cursor reads runs in page order.
// Thread safe: readers run while changes are made.
#include <gtest/gtest.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

#include "advice_table.hpp"

namespace uhmm::test {
namespace {

using detail::AdviceCursor;
using detail::AdviceTable;

constexpr std::size_t kBlock = kPagesPerBlock;

void set_read_mostly(RangeAdvice& a) { a.read_mostly = true; }
void unset_read_mostly(RangeAdvice& a) { a.read_mostly = false; }
auto prefer(OwnerId owner) {
  return [owner](RangeAdvice& a) { a.preferred = Location::device(owner); };
}
auto accessed_by(OwnerId owner) {
  return [owner](RangeAdvice& a) { a.accessed_by |= std::uint64_t{1} << (owner - 1); };
}

struct Piece {
  std::size_t first, end;
  bool read_mostly;
  friend bool operator==(const Piece&, const Piece&) = default;
};

// The runs of [first, end) as (first, end, read_mostly), the preferred
// location and accessed_by checked to be unset.
std::vector<Piece> read_mostly_runs(const AdviceTable& t, std::size_t first, std::size_t end) {
  std::vector<Piece> out;
  for (const auto& r : t.runs(first, end)) out.push_back({r.first, r.end, r.advice.read_mostly});
  return out;
}

TEST(AdviceTable, ANewTableHasNoAdvice) {
  AdviceTable t;
  EXPECT_TRUE(t.empty());
  EXPECT_EQ(t.get(0), RangeAdvice{});
  EXPECT_EQ(t.get(~std::size_t{0}), RangeAdvice{});
  EXPECT_TRUE(t.runs(0, ~std::size_t{0}).empty());
}

TEST(AdviceTable, AnEmptyOrInvertedUpdateChangesNothing) {
  AdviceTable t;
  t.update(10, 10, set_read_mostly);
  t.update(10, 5, set_read_mostly);
  EXPECT_TRUE(t.empty());
  EXPECT_TRUE(t.runs(0, 100).empty());
}

TEST(AdviceTable, AnUpdateAdvisesExactlyItsPages) {
  AdviceTable t;
  t.update(kBlock, 2 * kBlock, set_read_mostly);  // one whole 2 MiB block
  EXPECT_FALSE(t.empty());
  EXPECT_FALSE(t.get(kBlock - 1).read_mostly);
  EXPECT_TRUE(t.get(kBlock).read_mostly);
  EXPECT_TRUE(t.get(2 * kBlock - 1).read_mostly);
  EXPECT_FALSE(t.get(2 * kBlock).read_mostly);
  EXPECT_EQ(read_mostly_runs(t, 0, 4 * kBlock), (std::vector<Piece>{{kBlock, 2 * kBlock, true}}));
}

TEST(AdviceTable, RunsAreClippedToTheSpanAsked) {
  AdviceTable t;
  t.update(100, 200, set_read_mostly);
  EXPECT_EQ(read_mostly_runs(t, 150, 160), (std::vector<Piece>{{150, 160, true}}));
  EXPECT_EQ(read_mostly_runs(t, 0, 101), (std::vector<Piece>{{100, 101, true}}));
  EXPECT_EQ(read_mostly_runs(t, 199, 300), (std::vector<Piece>{{199, 200, true}}));
  EXPECT_TRUE(t.runs(0, 100).empty());
  EXPECT_TRUE(t.runs(200, 300).empty());
  EXPECT_TRUE(t.runs(150, 150).empty());  // an empty span has no runs, not an empty one
  EXPECT_TRUE(t.runs(160, 150).empty());  // nor an inverted one
}

TEST(AdviceTable, AnUpdateInsideARunSplitsItInThree) {
  AdviceTable t;
  t.update(0, 3 * kBlock, set_read_mostly);
  t.update(kBlock, 2 * kBlock, prefer(1));
  const auto runs = t.runs(0, 3 * kBlock);
  ASSERT_EQ(runs.size(), 3u);
  EXPECT_EQ(runs[0].end, kBlock);
  EXPECT_EQ(runs[1].first, kBlock);
  EXPECT_EQ(runs[1].end, 2 * kBlock);
  EXPECT_EQ(runs[1].advice.preferred, Location::device(1));
  EXPECT_TRUE(runs[1].advice.read_mostly);  // the change adds to what was there
  EXPECT_EQ(runs[2].first, 2 * kBlock);
  EXPECT_EQ(runs[0].advice, runs[2].advice);
  EXPECT_EQ(runs[0].advice.preferred.kind, Location::Kind::none);
}

TEST(AdviceTable, AnUpdateOverGapsAndRunsChangesEveryPage) {
  AdviceTable t;
  t.update(10, 20, prefer(2));
  t.update(30, 40, prefer(3));
  t.update(5, 45, accessed_by(4));  // gaps [5,10) [20,30) [40,45) and both runs
  const auto runs = t.runs(0, 100);
  ASSERT_EQ(runs.size(), 5u);
  const std::size_t bounds[][2] = {{5, 10}, {10, 20}, {20, 30}, {30, 40}, {40, 45}};
  for (std::size_t i = 0; i < runs.size(); ++i) {
    EXPECT_EQ(runs[i].first, bounds[i][0]);
    EXPECT_EQ(runs[i].end, bounds[i][1]);
    EXPECT_TRUE(runs[i].advice.accessed_by_device(4));
  }
  EXPECT_EQ(runs[1].advice.preferred, Location::device(2));
  EXPECT_EQ(runs[3].advice.preferred, Location::device(3));
  EXPECT_EQ(runs[2].advice.preferred.kind, Location::Kind::none);
}

TEST(AdviceTable, AdjacentRunsWithEqualAdviceMerge) {
  AdviceTable t;
  t.update(0, kBlock, set_read_mostly);
  t.update(2 * kBlock, 3 * kBlock, set_read_mostly);
  t.update(kBlock, 2 * kBlock, set_read_mostly);  // fills the gap between equals
  EXPECT_EQ(read_mostly_runs(t, 0, 4 * kBlock), (std::vector<Piece>{{0, 3 * kBlock, true}}));
  t.update(3 * kBlock, 4 * kBlock, set_read_mostly);  // touches the end
  EXPECT_EQ(read_mostly_runs(t, 0, 4 * kBlock), (std::vector<Piece>{{0, 4 * kBlock, true}}));
}

TEST(AdviceTable, ChangesThatRestoreEqualAdviceMergeTheSplitBack) {
  AdviceTable t;
  t.update(0, 300, set_read_mostly);
  t.update(100, 200, prefer(1));
  t.update(100, 200, [](RangeAdvice& a) { a.preferred = {}; });
  EXPECT_EQ(read_mostly_runs(t, 0, 300), (std::vector<Piece>{{0, 300, true}}));
}

TEST(AdviceTable, ClearingAdviceDropsItsRunsAndEmptiesTheTable) {
  AdviceTable t;
  t.update(0, 100, set_read_mostly);
  t.update(200, 300, set_read_mostly);
  t.update(50, 250, unset_read_mostly);
  EXPECT_EQ(read_mostly_runs(t, 0, 400), (std::vector<Piece>{{0, 50, true}, {250, 300, true}}));
  EXPECT_FALSE(t.get(50).read_mostly);
  EXPECT_FALSE(t.empty());
  t.update(0, 400, unset_read_mostly);
  EXPECT_TRUE(t.empty());
  EXPECT_TRUE(t.runs(0, 400).empty());
  EXPECT_EQ(t.get(0), RangeAdvice{});
}

TEST(AdviceTable, AnUpdateThatGivesNoAdviceToUnadvisedPagesAddsNothing) {
  AdviceTable t;
  t.update(0, 100, unset_read_mostly);
  EXPECT_TRUE(t.empty());
}

TEST(AdviceTable, ManySmallRunsSplitAndMergeCorrectly) {
  // Every other page advised, then the whole span changed: each run and each
  // gap becomes its own piece (more than the room reserved up front).
  AdviceTable t;
  for (std::size_t p = 0; p < 64; p += 2) t.update(p, p + 1, set_read_mostly);
  t.update(0, 64, prefer(5));
  const auto runs = t.runs(0, 64);
  ASSERT_EQ(runs.size(), 64u);
  for (std::size_t p = 0; p < 64; ++p) {
    EXPECT_EQ(runs[p].first, p);
    EXPECT_EQ(runs[p].advice.read_mostly, p % 2 == 0);
    EXPECT_EQ(runs[p].advice.preferred, Location::device(5));
  }
  t.update(0, 64, set_read_mostly);  // now all equal: one run
  EXPECT_EQ(t.runs(0, 64).size(), 1u);
}

TEST(AdviceCursor, ReadsEachPagesAdviceInAscendingOrder) {
  AdviceTable t;
  t.update(kBlock - 2, kBlock + 2, set_read_mostly);  // across a block boundary
  t.update(kBlock + 5, kBlock + 6, prefer(7));
  AdviceCursor cursor(t.runs(kBlock, 2 * kBlock));
  for (std::size_t p = kBlock; p < 2 * kBlock; ++p) {
    EXPECT_EQ(cursor.at(p).read_mostly, p < kBlock + 2) << p;
    EXPECT_EQ(cursor.at(p).preferred == Location::device(7), p == kBlock + 5) << p;
  }
  AdviceCursor none({});
  EXPECT_EQ(none.at(0), RangeAdvice{});
}

TEST(AdviceTable, ReadersSeeEveryPageBeforeOrAfterEachChangeWhileWritersChangeIt) {
  // Two writers toggle read_mostly over overlapping spans, each setting bit
  // 1 or 2 of accessed_by with it; readers check every run they see is
  // well formed (sorted, disjoint, advised) and every page's advice is one
  // a writer could have left.
  AdviceTable t;
  std::atomic<bool> stop{false};
  auto writer = [&](OwnerId owner, std::size_t first, std::size_t end) {
    for (int i = 0; i < 300; ++i) {
      t.update(first, end, [&](RangeAdvice& a) {
        a.read_mostly = !a.read_mostly;
        a.accessed_by ^= std::uint64_t{1} << (owner - 1);
      });
    }
  };
  std::atomic<unsigned> bad{0};
  auto reader = [&] {
    while (!stop.load()) {
      const auto runs = t.runs(0, 3 * kBlock);
      for (std::size_t i = 0; i < runs.size(); ++i) {
        if (runs[i].first >= runs[i].end || runs[i].advice == RangeAdvice{} || runs[i].advice.accessed_by > 3 ||
            (i > 0 && runs[i - 1].end > runs[i].first))
          bad.fetch_add(1);
      }
      (void)t.get(kBlock);
      (void)t.empty();
    }
  };
  std::thread r1(reader), r2(reader);
  std::thread w1(writer, OwnerId{1}, 0, 2 * kBlock);
  std::thread w2(writer, OwnerId{2}, kBlock, 3 * kBlock);
  w1.join();
  w2.join();
  stop = true;
  r1.join();
  r2.join();
  EXPECT_EQ(bad.load(), 0u);
  // 300 toggles each (even): every page is back where it started.
  EXPECT_TRUE(t.empty());
  EXPECT_TRUE(t.runs(0, 3 * kBlock).empty());
}

}  // namespace
}  // namespace uhmm::test
