// LaunchStreamPool: launches reuse drained streams and their table buffers,
// keep at most max_idle of them, and never hand a broken stream on.
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "../../driver/cpu/cpu_backend.hpp"
#include "launch_stream_pool.hpp"

namespace uhmm::detail {
namespace {

TEST(LaunchStreamPool, SequentialLeasesReuseOneStreamAndItsTableBuffer) {
  CpuBackend backend(std::uint64_t{4} << 20);
  LaunchStreamPool pool(backend);
  StreamId first = 0;
  DeviceAddress buffer = 0;
  {
    auto lease = pool.acquire();
    first = lease.stream();
    ASSERT_TRUE(lease.reserve_tables(100, &buffer));
    EXPECT_NE(buffer, 0u);
  }
  for (int i = 0; i < 5; ++i) {
    auto lease = pool.acquire();
    EXPECT_EQ(lease.stream(), first);
    DeviceAddress again = 0;
    ASSERT_TRUE(lease.reserve_tables(100, &again));
    EXPECT_EQ(again, buffer);  // big enough: kept
  }
  EXPECT_EQ(pool.streams_created(), 1u);
  EXPECT_EQ(pool.idle(), 1u);
}

TEST(LaunchStreamPool, ATableBufferGrowsWhenALaunchNeedsMore) {
  CpuBackend backend(std::uint64_t{4} << 20);
  LaunchStreamPool pool(backend);
  auto lease = pool.acquire();
  DeviceAddress small = 0, large = 0;
  ASSERT_TRUE(lease.reserve_tables(64, &small));
  ASSERT_TRUE(lease.reserve_tables(64 * 1024, &large));
  // The grown buffer takes the whole upload.
  std::vector<std::uint64_t> words(8 * 1024, 7);
  ASSERT_TRUE(backend.copy_to_device_buffer(lease.stream(), large, words.data(), words.size() * 8));
  ASSERT_TRUE(backend.synchronize(lease.stream()));
  EXPECT_EQ(backend.copy_to_device_buffer(lease.stream(), large, words.data(), 65 * 1024).code,
            Errc::invalid_argument);
}

TEST(LaunchStreamPool, ConcurrentLeasesGetDistinctStreamsAndAtMostMaxIdleStay) {
  CpuBackend backend(std::uint64_t{4} << 20);
  LaunchStreamPool pool(backend, 2);
  {
    std::vector<LaunchStreamPool::Lease> leases;
    for (int i = 0; i < 4; ++i) leases.push_back(pool.acquire());
    for (std::size_t i = 0; i < leases.size(); ++i)
      for (std::size_t j = i + 1; j < leases.size(); ++j) EXPECT_NE(leases[i].stream(), leases[j].stream());
  }
  EXPECT_EQ(pool.streams_created(), 4u);
  EXPECT_EQ(pool.idle(), 2u);
  // From several threads at once.
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        auto lease = pool.acquire();
        EXPECT_TRUE(backend.synchronize(lease.stream()));
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_LE(pool.idle(), 2u);
}

TEST(LaunchStreamPool, ABrokenLeaseIsDestroyedNotReused) {
  CpuBackend backend(std::uint64_t{4} << 20);
  LaunchStreamPool pool(backend);
  StreamId broken = 0;
  {
    auto lease = pool.acquire();
    broken = lease.stream();
    lease.mark_broken();
  }
  EXPECT_EQ(pool.idle(), 0u);
  auto lease = pool.acquire();
  EXPECT_NE(lease.stream(), broken);
  EXPECT_EQ(backend.native_stream(broken), nullptr);
  Status gone = backend.synchronize(broken);
  EXPECT_EQ(gone.code, Errc::invalid_argument) << "the broken stream was destroyed";
}

}  // namespace
}  // namespace uhmm::detail
