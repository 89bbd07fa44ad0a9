// A huge, sparsely used range costs what was used, not its size: allocating
// and freeing 1 TiB with two pages touched walks two blocks of the mirror
// table and never maps the rest of it (checked with mincore, not a clock).
#include <gtest/gtest.h>

#include "context_core.hpp"
#include "mm.hpp"
#include "test_support.hpp"

namespace uhmm::test {
namespace {

constexpr std::size_t kTiB = std::size_t{1} << 40;

TEST(SparseRange, FreeingATebibyteRangeWithTwoPagesTouchedVisitsOnlyTheirBlocks) {
  Context ctx(cpu_options(8 * MiB));
  auto* p = static_cast<std::byte*>(ctx.allocate(kTiB));
  std::byte* last = p + kTiB - kPageSize;
  static_cast<volatile std::byte*>(p)[0] = std::byte{1};
  static_cast<volatile std::byte*>(last)[0] = std::byte{2};
  // Both pages through uhmm in both fault modes (in signal mode a first
  // touch does not fault: never-touched pages are open).
  ASSERT_EQ(ctx.migrate_to_device(p, kPageSize).migrated, 1u);
  ASSERT_EQ(ctx.migrate_to_device(last, kPageSize).migrated, 1u);
  {
    detail::RangeSpan span = detail::core(ctx).ranges.find(p);
    ASSERT_TRUE(span);
    auto& table = span.range().table();
    EXPECT_EQ(table.touched_blocks(), 2u);
    // Walks of the table (the release that free does, a validation) read
    // the touched blocks' entries alone: a few pages of a 2 GiB table.
    EXPECT_EQ(detail::core(ctx).release_device_pages(span.range()), 2u);
    EXPECT_TRUE(ctx.validate());
    EXPECT_LE(table.resident_entry_pages(), 4u);
    EXPECT_EQ(table.touched_blocks(), 2u);
  }
  ctx.free(p);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
}

}  // namespace
}  // namespace uhmm::test
