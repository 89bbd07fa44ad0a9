// The density prefetcher (host/policy/density_prefetch.hpp): which part of a block a
// CPU fault brings back, for the thresholds that bound it and UVM's 51%.
#include <gtest/gtest.h>

#include <vector>

#include "density_prefetch.hpp"

namespace {

using namespace uhmm;
using namespace uhmm::detail;

BlockPages pages(std::initializer_list<std::size_t> list) {
  BlockPages b;
  for (std::size_t p : list) b.set(p);
  return b;
}

BlockPages span_of(std::size_t lo, std::size_t n) {
  BlockPages b;
  for (std::size_t p = lo; p < lo + n; ++p) b.set(p);
  return b;
}

BlockPages region(const BlockPages& on_host, std::vector<std::size_t> faulting, unsigned threshold) {
  BlockPages occupied = on_host;
  for (std::size_t p : faulting)
    if (p < kPagesPerBlock) occupied.set(p);
  return density_prefetch_region(occupied, faulting, threshold);
}

TEST(DensityPrefetch, ThresholdZeroTakesTheWholeBlockAnd100TheFaultingPageAlone) {
  EXPECT_EQ(region({}, {300}, 0), BlockPages().set());
  EXPECT_EQ(region(span_of(0, 511), {511}, 100), pages({511}));  // 100% is never exceeded
  EXPECT_EQ(region({}, {7, 9}, 100), pages({7, 9}));
}

TEST(DensityPrefetch, ASequentialScanDoublesWhatEachFaultBringsAt51Percent) {
  // Pages [0, n) on the host, the scan faults at n: the region is the aligned
  // node that the host pages plus n fill past 51%.
  EXPECT_EQ(region({}, {0}, 51), pages({0}));                 // 1 of 2 is 50%: not past 51
  EXPECT_EQ(region(span_of(0, 1), {1}, 51), span_of(0, 2));   // 2 of 4 is 50%
  EXPECT_EQ(region(span_of(0, 2), {2}, 51), span_of(0, 4));   // 3 of 4
  EXPECT_EQ(region(span_of(0, 4), {4}, 51), span_of(0, 8));   // 5 of 8
  EXPECT_EQ(region(span_of(0, 8), {8}, 51), span_of(0, 16));  // 9 of 16
  EXPECT_EQ(region(span_of(0, 32), {32}, 51), span_of(0, 64));  // 33 of 64 = 51.6%
  // 65 of 128 is 50.8%: page 64 comes alone; at 65, 66 of 128 pass 51%.
  EXPECT_EQ(region(span_of(0, 64), {64}, 51), pages({64}));
  EXPECT_EQ(region(span_of(0, 65), {65}, 51), span_of(0, 128));
  EXPECT_EQ(region(span_of(0, 256), {256}, 51), pages({256}));
}

TEST(DensityPrefetch, ScatteredFaultsBringLittle) {
  const BlockPages r = region(pages({0, 100, 200}), {300, 400}, 51);
  EXPECT_EQ(r, pages({300, 400}));
}

TEST(DensityPrefetch, EachFaultingPageGetsItsOwnRegion) {
  // Dense near 64, sparse near 400.
  const BlockPages r = region(span_of(64, 3), {67, 401}, 51);
  EXPECT_EQ(r, span_of(64, 4) | pages({401}));
}

TEST(DensityPrefetch, PagesPastTheBlockAreIgnored) {
  EXPECT_EQ(region({}, {kPagesPerBlock}, 0), BlockPages());
}

}  // namespace
