// PageBounces (host/page_bounces.*): thrashing detection. Its contract: a
// page that comes back to the host `bounces` times within `window_ms` of its
// first bounce is detected, then cools down for `cooldown_ms` (record says
// cooling, cooling() says how long ago it last came back), after which its
// history starts again; the millisecond clock may wrap; each page, and each
// 2 MiB block, keeps its own history. Pages of different blocks are recorded
// from different threads at once (each thread holding its block, as the
// fault service's block mutex does), histories allocated on first bounce.
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

#include "page_bounces.hpp"

namespace uhmm::test {
namespace {

using detail::PageBounces;
using Verdict = detail::PageBounces::Verdict;

detail::ThrashingSettings settings(unsigned bounces, unsigned window_ms, unsigned cooldown_ms) {
  detail::ThrashingSettings s;
  s.bounces = bounces;
  s.window_ms = window_ms;
  s.cooldown_ms = cooldown_ms;
  return s;
}

TEST(PageBounces, APageThatNeverBouncedIsNotCooling) {
  PageBounces b(4);
  const auto s = settings(3, 50, 500);
  std::uint32_t back = 12345;
  EXPECT_FALSE(b.cooling(0, 0, s, &back));
  EXPECT_FALSE(b.cooling(4 * kPagesPerBlock - 1, 1000, s));
  EXPECT_EQ(back, 12345u);  // untouched when not cooling
}

TEST(PageBounces, TheNthBounceWithinTheWindowIsDetected) {
  PageBounces b(1);
  const auto s = settings(3, 50, 500);
  EXPECT_EQ(b.record(7, 1000, s), Verdict::calm);
  EXPECT_EQ(b.record(7, 1010, s), Verdict::calm);
  EXPECT_FALSE(b.cooling(7, 1020, s));
  EXPECT_EQ(b.record(7, 1049, s), Verdict::detected);  // 49 ms after the first
  EXPECT_TRUE(b.cooling(7, 1049, s));
}

TEST(PageBounces, BouncesSpreadBeyondTheWindowStartItAgain) {
  PageBounces b(1);
  const auto s = settings(3, 50, 500);
  EXPECT_EQ(b.record(0, 1000, s), Verdict::calm);
  EXPECT_EQ(b.record(0, 1040, s), Verdict::calm);
  EXPECT_EQ(b.record(0, 1050, s), Verdict::calm);  // 50 ms after the first: a new window, one bounce
  EXPECT_EQ(b.record(0, 1060, s), Verdict::calm);
  EXPECT_EQ(b.record(0, 1070, s), Verdict::detected);
}

TEST(PageBounces, ACoolingPageStaysCoolingUntilTheCooldownEndsThenStartsAgain) {
  PageBounces b(1);
  const auto s = settings(2, 50, 500);
  EXPECT_EQ(b.record(3, 0, s), Verdict::calm);
  EXPECT_EQ(b.record(3, 10, s), Verdict::detected);  // cooling from 10 ms to 510 ms
  EXPECT_EQ(b.record(3, 20, s), Verdict::cooling);
  EXPECT_EQ(b.record(3, 509, s), Verdict::cooling);
  std::uint32_t back = 0;
  EXPECT_TRUE(b.cooling(3, 509, s, &back));
  EXPECT_EQ(back, 0u);  // it came back at 509
  EXPECT_TRUE(b.cooling(3, 400, s));
  EXPECT_FALSE(b.cooling(3, 510, s));
  // After the cool-down the history starts again: one bounce is calm.
  EXPECT_EQ(b.record(3, 510, s), Verdict::calm);
  EXPECT_FALSE(b.cooling(3, 511, s));
  EXPECT_EQ(b.record(3, 520, s), Verdict::detected);
}

TEST(PageBounces, CoolingSaysHowLongAgoThePageLastCameBack) {
  PageBounces b(1);
  const auto s = settings(2, 50, 500);
  (void)b.record(9, 100, s);
  ASSERT_EQ(b.record(9, 110, s), Verdict::detected);
  std::uint32_t back = 0;
  ASSERT_TRUE(b.cooling(9, 150, s, &back));
  EXPECT_EQ(back, 40u);
  ASSERT_EQ(b.record(9, 200, s), Verdict::cooling);
  ASSERT_TRUE(b.cooling(9, 203, s, &back));
  EXPECT_EQ(back, 3u);
}

TEST(PageBounces, TheMillisecondClockMayWrap) {
  PageBounces b(1);
  const auto s = settings(3, 50, 500);
  const std::uint32_t start = 0xffff'fff0u;
  EXPECT_EQ(b.record(1, start, s), Verdict::calm);
  EXPECT_EQ(b.record(1, start + 10, s), Verdict::calm);
  EXPECT_EQ(b.record(1, start + 30, s), Verdict::detected);  // wrapped to 14: 30 ms after the first
  const std::uint32_t detected_at = start + 30;
  std::uint32_t back = 0;
  EXPECT_TRUE(b.cooling(1, detected_at + 499, s, &back));
  EXPECT_EQ(back, 499u);
  EXPECT_FALSE(b.cooling(1, detected_at + 500, s));
}

TEST(PageBounces, EachPageAndEachBlockKeepsItsOwnHistory) {
  PageBounces b(3);
  const auto s = settings(2, 50, 500);
  const std::size_t last_of_block0 = kPagesPerBlock - 1;
  const std::size_t first_of_block1 = kPagesPerBlock;
  EXPECT_EQ(b.record(last_of_block0, 0, s), Verdict::calm);
  EXPECT_EQ(b.record(first_of_block1, 1, s), Verdict::calm);  // not the same page's second bounce
  EXPECT_EQ(b.record(first_of_block1 + 1, 2, s), Verdict::calm);
  EXPECT_EQ(b.record(last_of_block0, 3, s), Verdict::detected);
  EXPECT_FALSE(b.cooling(first_of_block1, 3, s));
  EXPECT_FALSE(b.cooling(last_of_block0 - 1, 3, s));
  EXPECT_FALSE(b.cooling(3 * kPagesPerBlock - 1, 3, s));  // the last page of the last block
  EXPECT_EQ(b.record(3 * kPagesPerBlock - 1, 4, s), Verdict::calm);
  EXPECT_EQ(b.record(3 * kPagesPerBlock - 1, 5, s), Verdict::detected);
}

TEST(PageBounces, TheLargestBounceCountIsReached) {
  PageBounces b(1);
  const auto s = settings(65535, 60000, 500);  // UHMM_THRASHING_BOUNCES' maximum
  for (unsigned i = 1; i < 65535; ++i) ASSERT_EQ(b.record(0, 0, s), Verdict::calm) << i;
  EXPECT_EQ(b.record(0, 0, s), Verdict::detected);
}

TEST(PageBounces, BlocksBounceFromManyThreadsAtOnce) {
  // Each thread owns some blocks (as a block mutex would give it) and makes
  // their pages thrash; the per-block histories are allocated concurrently.
  constexpr std::size_t kBlocks = 64;
  constexpr unsigned kThreads = 4;
  PageBounces b(kBlocks);
  const auto s = settings(2, 50, 500);
  std::vector<std::thread> threads;
  std::vector<unsigned> detected(kThreads, 0);
  for (unsigned t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (std::size_t block = t; block < kBlocks; block += kThreads)
        for (std::size_t page : {block * kPagesPerBlock, block * kPagesPerBlock + kPagesPerBlock - 1}) {
          (void)b.record(page, 100, s);
          detected[t] += b.record(page, 101, s) == Verdict::detected;
        }
    });
  for (auto& th : threads) th.join();
  for (unsigned t = 0; t < kThreads; ++t) EXPECT_EQ(detected[t], kBlocks / kThreads * 2);
  for (std::size_t block = 0; block < kBlocks; ++block) {
    EXPECT_TRUE(b.cooling(block * kPagesPerBlock, 102, s));
    EXPECT_FALSE(b.cooling(block * kPagesPerBlock + 1, 102, s));
  }
}

}  // namespace
}  // namespace uhmm::test
