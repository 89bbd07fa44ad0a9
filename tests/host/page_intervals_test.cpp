// PageIntervals (host/page_intervals.hpp): a set of pages kept as sorted,
// disjoint, non-adjacent [first, end) intervals — the parts of a range the
// application unmapped. Its contract: adds merge what overlaps or touches,
// intersects/covers answer for a page span, complement gives the rest of
// [0, npages). The structure shows through covers() (one interval must hold
// the whole span) and complement() (no empty or adjacent pieces).
#include <gtest/gtest.h>

#include <cstddef>
#include <utility>
#include <vector>

#include "page_intervals.hpp"

namespace uhmm::test {
namespace {

using detail::PageIntervals;
using Runs = std::vector<std::pair<std::size_t, std::size_t>>;

TEST(PageIntervals, AnEmptySetHoldsNothingAndItsComplementIsEverything) {
  PageIntervals set;
  EXPECT_TRUE(set.empty());
  EXPECT_FALSE(set.intersects(0, 1));
  EXPECT_FALSE(set.covers(0, 1));
  EXPECT_EQ(set.complement(10), (Runs{{0, 10}}));
  EXPECT_EQ(set.complement(0), Runs{});
}

TEST(PageIntervals, AnEmptyOrInvertedAddChangesNothing) {
  PageIntervals set;
  set.add(5, 5);
  set.add(7, 3);
  EXPECT_TRUE(set.empty());
  EXPECT_EQ(set.complement(10), (Runs{{0, 10}}));
}

TEST(PageIntervals, AnEmptySpanIsCoveredButIntersectsNothing) {
  PageIntervals set;
  set.add(0, 10);
  // No page of [5, 5) is in the set, and every one of them is.
  EXPECT_FALSE(set.intersects(5, 5));
  EXPECT_FALSE(set.intersects(20, 20));
  EXPECT_TRUE(set.covers(5, 5));
  EXPECT_TRUE(set.covers(20, 20));
}

TEST(PageIntervals, BoundariesAreHalfOpen) {
  PageIntervals set;
  set.add(512, 1024);  // one 2 MiB block of pages
  EXPECT_FALSE(set.intersects(0, 512));
  EXPECT_TRUE(set.intersects(0, 513));
  EXPECT_TRUE(set.intersects(1023, 2048));
  EXPECT_FALSE(set.intersects(1024, 2048));
  EXPECT_TRUE(set.covers(512, 1024));
  EXPECT_FALSE(set.covers(511, 1024));
  EXPECT_FALSE(set.covers(512, 1025));
  EXPECT_EQ(set.complement(2048), (Runs{{0, 512}, {1024, 2048}}));
}

TEST(PageIntervals, AdjacentAddsMergeIntoOneInterval) {
  PageIntervals set;
  set.add(0, 512);
  set.add(512, 1024);  // touches the first on its end
  set.add(1536, 2048);
  set.add(1024, 1536);  // fills the gap: one interval [0, 2048)
  EXPECT_TRUE(set.covers(0, 2048));
  EXPECT_EQ(set.complement(4096), (Runs{{2048, 4096}}));
}

TEST(PageIntervals, OverlappingAndContainedAddsMerge) {
  PageIntervals set;
  set.add(10, 20);
  set.add(15, 30);  // overlaps the end
  set.add(5, 12);   // overlaps the start
  set.add(8, 25);   // inside
  EXPECT_TRUE(set.covers(5, 30));
  EXPECT_EQ(set.complement(40), (Runs{{0, 5}, {30, 40}}));
}

TEST(PageIntervals, AnAddBridgingSeveralIntervalsMergesThemAll) {
  PageIntervals set;
  for (std::size_t i = 0; i < 8; ++i) set.add(i * 100, i * 100 + 10);
  set.add(105, 505);  // meets [100, 110) .. [500, 510)
  EXPECT_TRUE(set.covers(100, 510));
  EXPECT_EQ(set.complement(800),
            (Runs{{10, 100}, {510, 600}, {610, 700}, {710, 800}}));
}

TEST(PageIntervals, AddsInAnyOrderGiveTheSameSortedSet) {
  PageIntervals forward;
  PageIntervals backward;
  for (std::size_t i = 0; i < 6; ++i) forward.add(i * 1024, i * 1024 + 512);
  for (std::size_t i = 6; i-- > 0;) backward.add(i * 1024, i * 1024 + 512);
  EXPECT_EQ(forward.complement(6 * 1024), backward.complement(6 * 1024));
  EXPECT_EQ(forward.complement(6 * 1024).size(), 6u);
}

TEST(PageIntervals, CoversNeedsOneIntervalHoldingTheWholeSpan) {
  PageIntervals set;
  set.add(0, 10);
  set.add(11, 20);  // page 10 is missing
  EXPECT_FALSE(set.covers(0, 20));
  EXPECT_TRUE(set.intersects(0, 20));
  EXPECT_FALSE(set.intersects(10, 11));
}

TEST(PageIntervals, TheComplementOfAFullSetIsEmpty) {
  PageIntervals set;
  set.add(0, 1024);
  EXPECT_EQ(set.complement(1024), Runs{});
  EXPECT_EQ(set.complement(512), Runs{});  // the set reaches past npages
}

TEST(PageIntervals, TheComplementStaysInsideZeroToNpages) {
  PageIntervals set;
  set.add(2, 4);
  set.add(10, 12);  // past npages
  set.add(20, 22);  // past npages
  // Only [0, 2) and [4, 6) are not in the set inside [0, 6): no interval
  // reaching past npages, none inverted.
  EXPECT_EQ(set.complement(6), (Runs{{0, 2}, {4, 6}}));
  EXPECT_EQ(set.complement(11), (Runs{{0, 2}, {4, 10}}));
  EXPECT_EQ(set.complement(1), (Runs{{0, 1}}));
}

}  // namespace
}  // namespace uhmm::test
