// The lock order (host/base/lock_order.hpp) is checked: taking a lock of an
// earlier or equal rank while holding one is reported, naming both; the
// written order passes; a try_lock may go out of order (it cannot deadlock).
// Expensive-check builds turn the checker on for the whole suite, where a
// violation aborts the test that made it; here it is turned on and a handler
// records instead of aborting.
#include <gtest/gtest.h>

#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "block_mutex.hpp"
#include "lock_order.hpp"

namespace uhmm::test {
namespace {

using detail::LockRank;
using detail::Ranked;
namespace lock_order = detail::lock_order;

std::vector<std::string> g_violations;

void record(const char* held, const char* taken) { g_violations.push_back(std::string(taken) + " under " + held); }

class LockOrder : public ::testing::Test {
 protected:
  void SetUp() override {
    was_checking_ = lock_order::checking.load();
    lock_order::checking = true;
    lock_order::set_violation_handler(&record);
    g_violations.clear();
  }
  void TearDown() override {
    lock_order::set_violation_handler(nullptr);
    lock_order::checking = was_checking_;
  }

  Ranked<std::shared_mutex, LockRank::range_registry> registry;
  detail::RankedBlockMutex block{}, other_block{};
  Ranked<std::shared_mutex, LockRank::advice> advice;

 private:
  bool was_checking_ = false;
};

TEST_F(LockOrder, TheWrittenOrderPasses) {
  {
    std::shared_lock r(registry);
    std::lock_guard b(block);
    std::shared_lock a(advice);
  }
  std::lock_guard b(block);  // after all were released, anything goes again
  EXPECT_TRUE(g_violations.empty()) << g_violations.front();
}

TEST_F(LockOrder, AnEarlierRankUnderALaterOneIsReportedNamingBoth) {
  {
    std::lock_guard b(block);
    std::shared_lock r(registry);
  }
  ASSERT_EQ(g_violations.size(), 1u);
  EXPECT_EQ(g_violations[0], "the range registry lock under a block mutex");
}

TEST_F(LockOrder, TwoLocksOfOneRankAreAViolation) {
  std::lock_guard b(block);
  std::lock_guard o(other_block);
  ASSERT_EQ(g_violations.size(), 1u);
  EXPECT_EQ(g_violations[0], "a block mutex under a block mutex");
}

TEST_F(LockOrder, ATryLockMayGoOutOfOrder) {
  std::lock_guard a(advice);
  ASSERT_TRUE(block.try_lock());
  block.unlock();
  EXPECT_TRUE(g_violations.empty());
}

TEST_F(LockOrder, LocksReleasedOutOfOrderAreForgottenOneByOne) {
  registry.lock();
  block.lock();
  registry.unlock();  // the block mutex is still held
  std::shared_lock a(advice);
  EXPECT_TRUE(g_violations.empty());
  std::lock_guard r(registry);  // under the block mutex and the advice lock
  block.unlock();
  EXPECT_EQ(g_violations.size(), 1u);
}

TEST_F(LockOrder, EachThreadHasItsOwnHeldLocks) {
  std::lock_guard b(block);
  std::thread other([&] { std::shared_lock r(registry); });
  other.join();
  EXPECT_TRUE(g_violations.empty());
}

#if defined(UHMM_EXPENSIVE_CHECKS)
TEST(LockOrderChecks, AreOnInExpensiveCheckBuilds) { EXPECT_TRUE(lock_order::checking.load()); }
#endif

}  // namespace
}  // namespace uhmm::test
