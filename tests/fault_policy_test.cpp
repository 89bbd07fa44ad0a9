// The CPU-fault policy while a context runs: fault-ahead on and off, the
// density prefetch threshold (UHMM_PREFETCH_THRESHOLD), set through the API
// from one fault to the next; a bad value changes nothing.
#include <gtest/gtest.h>

#include "test_support.hpp"
#include "uhmm/uhmm.hpp"

namespace {

using namespace uhmm;
using namespace uhmm::test;

constexpr std::size_t MiB = std::size_t{1} << 20;

class FaultPolicyTest : public ::testing::Test {
 protected:
  Context ctx{cpu_options(16 * MiB, /*fault_ahead=*/true)};
  unsigned char* block = nullptr;

  void SetUp() override {
    block = static_cast<unsigned char*>(ctx.allocate(kBlockSize));
    for (std::size_t p = 0; p < kPagesPerBlock; ++p) block[p * kPageSize] = static_cast<unsigned char>(p);
    ASSERT_EQ(ctx.migrate_to_device(block, kBlockSize).migrated, kPagesPerBlock);
  }
  void TearDown() override { ctx.free(block); }

  // Reads page p (a CPU fault when it is on the device); returns the pages now on the host.
  std::size_t read_page(std::size_t p) {
    EXPECT_EQ(static_cast<volatile unsigned char*>(block)[p * kPageSize], static_cast<unsigned char>(p));
    return count(ctx.residency(block, kBlockSize), Residency::System);
  }
};

TEST_F(FaultPolicyTest, DefaultsComeFromTheOptions) {
  EXPECT_TRUE(ctx.fault_ahead());
  EXPECT_EQ(ctx.prefetch_threshold(), 0u);
  EXPECT_EQ(read_page(10), kPagesPerBlock);  // threshold 0: the whole block
}

TEST_F(FaultPolicyTest, At51PercentASequentialScanBringsBackDoublingParts) {
  ctx.set_prefetch_threshold(51);
  EXPECT_EQ(read_page(0), 1u);
  EXPECT_EQ(read_page(1), 2u);
  EXPECT_EQ(read_page(2), 4u);
  EXPECT_EQ(read_page(4), 8u);
  EXPECT_EQ(read_page(8), 16u);
  EXPECT_EQ(read_page(16), 32u);
  EXPECT_EQ(read_page(32), 64u);
  for (std::size_t p = 0; p < kPagesPerBlock; ++p) read_page(p);  // the rest, checked
  EXPECT_EQ(count(ctx.residency(block, kBlockSize), Residency::System), kPagesPerBlock);
  EXPECT_EQ(ctx.counters().pages_to_host, kPagesPerBlock);
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
}

TEST_F(FaultPolicyTest, ChangesApplyFromTheNextFault) {
  ctx.set_prefetch_threshold(100);
  EXPECT_EQ(read_page(100), 1u);
  ctx.set_fault_ahead(false);
  EXPECT_FALSE(ctx.fault_ahead());
  ctx.set_prefetch_threshold(0);  // no effect while fault-ahead is off
  EXPECT_EQ(read_page(200), 2u);
  ctx.set_fault_ahead(true);
  EXPECT_EQ(read_page(300), kPagesPerBlock);
  EXPECT_EQ(ctx.counters().pages_fault_ahead, kPagesPerBlock - 3);
}

TEST_F(FaultPolicyTest, AThresholdAbove100IsRefusedAndChangesNothing) {
  ctx.set_prefetch_threshold(51);
  try {
    ctx.set_prefetch_threshold(101);
    FAIL() << "101% was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("set_prefetch_threshold"), std::string::npos) << e.what();
  }
  EXPECT_EQ(ctx.prefetch_threshold(), 51u);
  EXPECT_EQ(read_page(0), 1u);
}

}  // namespace
