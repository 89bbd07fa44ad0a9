// Streams and asynchronous migrations: results match the synchronous calls,
// work on one stream runs in submission order, synchronize() and the
// destructor wait for everything, streams are independent across threads,
// freeing a range with work queued for it is reported (never a crash), and
// bad input throws at submission with nothing queued.
#include <gtest/gtest.h>

#include "test_support.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "uhmm/uhmm.hpp"
#include "uhmm/hooks.hpp"

namespace {

using namespace uhmm;

constexpr std::size_t MiB = std::size_t{1} << 20;

ContextOptions cpu_options(std::size_t pool = 64 * MiB, unsigned devices = 1) {
  ContextOptions o;
  o.backend = "cpu";
  o.device_pool_bytes = pool;
  o.devices = devices;
  return o;
}

std::uint64_t pattern(std::uint64_t seed, std::size_t word) {
  std::uint64_t x = seed * 0x9e3779b97f4a7c15ull + word;
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ull;
  return x ^ (x >> 29);
}

void fill(void* p, std::size_t bytes, std::uint64_t seed) {
  auto* w = static_cast<std::uint64_t*>(p);
  for (std::size_t i = 0; i < bytes / 8; ++i) w[i] = pattern(seed, i);
}

// Words that differ from the pattern (reading faults device pages back).
std::size_t mismatches(const void* p, std::size_t bytes, std::uint64_t seed) {
  const auto* w = static_cast<const std::uint64_t*>(p);
  std::size_t bad = 0;
  for (std::size_t i = 0; i < bytes / 8; ++i) bad += w[i] != pattern(seed, i);
  return bad;
}

std::size_t count(const std::vector<PageState>& pages, Residency r) {
  std::size_t n = 0;
  for (const auto& s : pages) n += s.residency == r;
  return n;
}

bool ready(const std::future<MigrationResult>& f) {
  return f.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
}

using uhmm::test::counter_diff;

constexpr std::size_t kBytes = 4 * MiB;
constexpr std::size_t kPages = kBytes / kPageSize;

TEST(StreamTest, AsyncToDeviceReportsWhatTheSynchronousCallReports) {
  Context ctx(cpu_options());
  void* a = ctx.allocate(kBytes);
  void* b = ctx.allocate(kBytes);
  fill(a, kBytes, 1);
  fill(b, kBytes, 1);
  Stream s = ctx.create_stream();
  EXPECT_EQ(s.device(), ctx.device_owner(0));

  std::future<MigrationResult> f = ctx.migrate_to_device_async(s, a, kBytes);
  const MigrationResult async = f.get();
  const MigrationResult sync = ctx.migrate_to_device(b, kBytes);

  EXPECT_EQ(async.pages, kPages);
  EXPECT_EQ(async.migrated, kPages);
  EXPECT_EQ(async.failed, 0u);
  EXPECT_TRUE(static_cast<bool>(async.status)) << async.status.message;
  EXPECT_EQ(async.pages, sync.pages);
  EXPECT_EQ(async.migrated, sync.migrated);
  EXPECT_EQ(async.already, sync.already);
  EXPECT_EQ(async.skipped, sync.skipped);
  EXPECT_EQ(async.failed, sync.failed);

  const auto pages = ctx.residency(a, kBytes);
  EXPECT_EQ(count(pages, Residency::Device), kPages);
  for (const PageState& p : pages) EXPECT_EQ(p.device.owner, ctx.device_owner(0));

  // Again: everything is already there.
  const MigrationResult again = ctx.migrate_to_device_async(s, a, kBytes).get();
  EXPECT_EQ(again.migrated, 0u);
  EXPECT_EQ(again.already, kPages);

  EXPECT_EQ(mismatches(a, kBytes, 1), 0u);
  EXPECT_EQ(mismatches(b, kBytes, 1), 0u);
}

TEST(StreamTest, AsyncToHostReportsTheMigratedPagesAndLeavesThemOnTheHost) {
  Context ctx(cpu_options());
  void* a = ctx.allocate(kBytes);
  fill(a, kBytes, 2);
  ctx.migrate_to_device(a, kBytes);
  Stream s = ctx.create_stream();
  const MigrationResult r = ctx.migrate_to_host_async(s, a, kBytes).get();
  EXPECT_EQ(r.pages, kPages);
  EXPECT_EQ(r.migrated, kPages);
  EXPECT_EQ(r.failed, 0u);
  EXPECT_EQ(count(ctx.residency(a, kBytes), Residency::System), kPages);
  const Counters before = ctx.counters();
  EXPECT_EQ(mismatches(a, kBytes, 2), 0u);
  EXPECT_EQ(ctx.counters().faults_from_device, before.faults_from_device) << "the pages were already home";
}

TEST(StreamTest, WorkOnOneStreamRunsInSubmissionOrder) {
  Context ctx(cpu_options());
  void* a = ctx.allocate(kBytes);
  fill(a, kBytes, 3);
  // Slow copies: if the stream reordered or overlapped its work, the last
  // submission would not be the last to run.
  FaultInjection slow;
  slow.copy_delay_us = 2000;
  uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), slow);
  Stream s = ctx.create_stream();

  auto to_device = ctx.migrate_to_device_async(s, a, kBytes);
  auto to_host = ctx.migrate_to_host_async(s, a, kBytes);
  auto to_device_again = ctx.migrate_to_device_async(s, a, kBytes);

  const MigrationResult last = to_device_again.get();
  EXPECT_TRUE(ready(to_device)) << "a later submission completed before an earlier one";
  EXPECT_TRUE(ready(to_host)) << "a later submission completed before an earlier one";
  const MigrationResult first = to_device.get();
  const MigrationResult second = to_host.get();
  EXPECT_EQ(first.migrated, kPages);
  EXPECT_EQ(second.migrated, kPages) << "to_host ran before to_device";
  EXPECT_EQ(last.migrated, kPages) << "to_device ran before to_host";
  EXPECT_EQ(count(ctx.residency(a, kBytes), Residency::Device), kPages);

  uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), FaultInjection{});
  EXPECT_EQ(mismatches(a, kBytes, 3), 0u);
  EXPECT_EQ(count(ctx.residency(a, kBytes), Residency::System), kPages);
}

TEST(StreamTest, SynchronizeWaitsForEverythingSubmitted) {
  Context ctx(cpu_options());
  constexpr int kRanges = 4;
  std::vector<void*> ranges;
  for (int r = 0; r < kRanges; ++r) {
    ranges.push_back(ctx.allocate(MiB));
    fill(ranges.back(), MiB, 10 + static_cast<std::uint64_t>(r));
  }
  FaultInjection slow;
  slow.copy_delay_us = 1000;
  uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), slow);
  Stream s = ctx.create_stream();
  std::vector<std::future<MigrationResult>> futures;
  for (int round = 0; round < 3; ++round)
    for (void* p : ranges) {
      futures.push_back(ctx.migrate_to_device_async(s, p, MiB));
      futures.push_back(ctx.migrate_to_host_async(s, p, MiB));
    }
  for (void* p : ranges) futures.push_back(ctx.migrate_to_device_async(s, p, MiB));

  s.synchronize();
  for (std::size_t i = 0; i < futures.size(); ++i) EXPECT_TRUE(ready(futures[i])) << "submission " << i;
  for (void* p : ranges) EXPECT_EQ(count(ctx.residency(p, MiB), Residency::Device), MiB / kPageSize);
  for (auto& f : futures) EXPECT_EQ(f.get().failed, 0u);
  s.synchronize();  // nothing queued: returns at once

  uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), FaultInjection{});
  for (int r = 0; r < kRanges; ++r) EXPECT_EQ(mismatches(ranges[static_cast<std::size_t>(r)], MiB, 10 + static_cast<std::uint64_t>(r)), 0u);
}

TEST(StreamTest, DestroyingAStreamWaitsForItsWork) {
  Context ctx(cpu_options());
  void* a = ctx.allocate(kBytes);
  fill(a, kBytes, 4);
  FaultInjection slow;
  slow.copy_delay_us = 2000;
  uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), slow);
  std::future<MigrationResult> f;
  {
    Stream s = ctx.create_stream();
    f = ctx.migrate_to_device_async(s, a, kBytes);
  }
  EXPECT_TRUE(ready(f));
  EXPECT_EQ(f.get().migrated, kPages);
  uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), FaultInjection{});
  EXPECT_EQ(mismatches(a, kBytes, 4), 0u);
}

TEST(StreamTest, AMovedStreamKeepsItsQueueAndDevice) {
  Context ctx(cpu_options(16 * MiB, 2));
  void* a = ctx.allocate(MiB);
  fill(a, MiB, 5);
  Stream s1 = ctx.create_stream(ctx.device_owner(1));
  auto f1 = ctx.migrate_to_device_async(s1, a, MiB);
  Stream s2 = std::move(s1);
  EXPECT_EQ(s2.device(), ctx.device_owner(1));
  auto f2 = ctx.migrate_to_host_async(s2, a, MiB);
  s2.synchronize();
  EXPECT_EQ(f1.get().migrated, MiB / kPageSize);
  EXPECT_EQ(f2.get().migrated, MiB / kPageSize);
  Stream s3 = ctx.create_stream();
  s3 = std::move(s2);  // s3's own (idle) queue goes, s2's arrives
  EXPECT_EQ(s3.device(), ctx.device_owner(1));
  EXPECT_EQ(ctx.migrate_to_device_async(s3, a, MiB).get().migrated, MiB / kPageSize);
  for (const PageState& p : ctx.residency(a, MiB)) EXPECT_EQ(p.device.owner, ctx.device_owner(1));
  EXPECT_EQ(mismatches(a, MiB, 5), 0u);
}

TEST(StreamTest, AStreamOnTheSecondDeviceTakesPagesFromTheFirst) {
  Context ctx(cpu_options(16 * MiB, 2));
  void* a = ctx.allocate(2 * MiB);
  fill(a, 2 * MiB, 6);
  Stream on0 = ctx.create_stream(ctx.device_owner(0));
  Stream on1 = ctx.create_stream(ctx.device_owner(1));
  EXPECT_EQ(ctx.migrate_to_device_async(on0, a, 2 * MiB).get().migrated, 2 * MiB / kPageSize);
  for (const PageState& p : ctx.residency(a, 2 * MiB)) ASSERT_EQ(p.device.owner, ctx.device_owner(0));
  // Device to device: every page is on the wrong device, so every page moves.
  const MigrationResult r = ctx.migrate_to_device_async(on1, a, 2 * MiB).get();
  EXPECT_EQ(r.migrated, 2 * MiB / kPageSize);
  EXPECT_EQ(r.failed, 0u);
  for (const PageState& p : ctx.residency(a, 2 * MiB)) ASSERT_EQ(p.device.owner, ctx.device_owner(1));
  EXPECT_EQ(mismatches(a, 2 * MiB, 6), 0u);
}

TEST(StreamTest, StreamsOnSeveralThreadsKeepEachRangesData) {
  Context ctx(cpu_options(64 * MiB));
  constexpr int kThreads = 4;
  constexpr int kRounds = 6;
  constexpr std::size_t kRange = 2 * MiB + 64 * kPageSize;  // a whole block and a partial one
  std::vector<void*> ranges;
  for (int t = 0; t < kThreads; ++t) ranges.push_back(ctx.allocate(kRange));

  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&ctx, p = ranges[static_cast<std::size_t>(t)], t] {
      Stream s = ctx.create_stream();
      std::mt19937_64 rng(1000 + static_cast<std::uint64_t>(t));
      for (int round = 0; round < kRounds; ++round) {
        const std::uint64_t seed = rng();
        fill(p, kRange, seed);
        auto down = ctx.migrate_to_device_async(s, p, kRange);
        // Half the rounds bring it back explicitly, half by faulting.
        std::future<MigrationResult> up;
        if (round % 2 == 0) up = ctx.migrate_to_host_async(s, p, kRange);
        const MigrationResult d = down.get();
        EXPECT_EQ(d.migrated, kRange / kPageSize) << "thread " << t << " round " << round;
        EXPECT_EQ(d.failed, 0u);
        if (up.valid()) {
          EXPECT_EQ(up.get().migrated, kRange / kPageSize) << "thread " << t << " round " << round;
        }
        EXPECT_EQ(mismatches(p, kRange, seed), 0u) << "thread " << t << " round " << round;
      }
      s.synchronize();
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
}

TEST(StreamTest, FreeingARangeWithQueuedWorkIsReportedNotACrash) {
  Context ctx(cpu_options());
  void* busy = ctx.allocate(kBytes);
  void* doomed = ctx.allocate(kBytes);
  fill(busy, kBytes, 7);
  fill(doomed, kBytes, 8);
  FaultInjection slow;
  slow.copy_delay_us = 5000;  // the first job keeps the stream busy while the range goes
  uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), slow);
  Stream s = ctx.create_stream();

  std::vector<std::future<MigrationResult>> queued;
  queued.push_back(ctx.migrate_to_device_async(s, busy, kBytes));
  queued.push_back(ctx.migrate_to_device_async(s, doomed, kBytes));
  queued.push_back(ctx.migrate_to_host_async(s, doomed, kBytes));
  queued.push_back(ctx.migrate_to_device_async(s, doomed, MiB));
  ctx.free(doomed);
  s.synchronize();

  EXPECT_EQ(queued[0].get().migrated, kPages);
  for (std::size_t i = 1; i < queued.size(); ++i) {
    try {
      const MigrationResult r = queued[i].get();  // it ran before the free: fine too
      EXPECT_EQ(r.failed, 0u);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::out_of_range) << e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "job " << i << ": not a uhmm::Error: " << e.what();
    }
  }
  uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), FaultInjection{});
  // The freed range's device pages went back to the pool; the context goes on.
  EXPECT_EQ(ctx.counters().device_pages_in_use, kPages);
  EXPECT_EQ(mismatches(busy, kBytes, 7), 0u);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
  void* fresh = ctx.allocate(kBytes);
  fill(fresh, kBytes, 9);
  EXPECT_EQ(ctx.migrate_to_device_async(s, fresh, kBytes).get().migrated, kPages);
  EXPECT_EQ(mismatches(fresh, kBytes, 9), 0u);
}

TEST(StreamTest, FreeingARangeWhileItsMigrationRunsWaitsForIt) {
  Context ctx(cpu_options());
  void* a = ctx.allocate(kBytes);
  fill(a, kBytes, 11);
  FaultInjection slow;
  slow.copy_delay_us = 5000;
  uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), slow);
  Stream s = ctx.create_stream();
  auto f = ctx.migrate_to_device_async(s, a, kBytes);
  ctx.free(a);  // whether the job started or not, this must not crash or leak
  s.synchronize();
  try {
    (void)f.get();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::out_of_range) << e.what();
  }
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
}

TEST(StreamTest, BadInputThrowsAtSubmissionAndQueuesNothing) {
  Context ctx(cpu_options());
  void* a = ctx.allocate(kBytes);
  fill(a, kBytes, 12);
  ctx.migrate_to_device(a, MiB);
  Stream s = ctx.create_stream();
  const Counters before = ctx.counters();
  const auto residency_before = ctx.residency(a, kBytes);

  auto expect_code = [](Errc code, auto&& submit) {
    try {
      auto f = submit();
      f.wait();
      ADD_FAILURE() << "queued instead of throwing";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
    }
  };
  auto* bytes = static_cast<std::byte*>(a);
  for (int dir = 0; dir < 2; ++dir) {
    SCOPED_TRACE(dir == 0 ? "to device" : "to host");
    auto submit = [&](void* p, std::size_t n) {
      return dir == 0 ? ctx.migrate_to_device_async(s, p, n) : ctx.migrate_to_host_async(s, p, n);
    };
    expect_code(Errc::invalid_argument, [&] { return submit(nullptr, kPageSize); });
    expect_code(Errc::not_aligned, [&] { return submit(bytes + 64, kPageSize); });
    expect_code(Errc::not_aligned, [&] { return submit(a, 10); });
    expect_code(Errc::zero_length, [&] { return submit(a, 0); });
    expect_code(Errc::out_of_range, [&] { return submit(bytes + kBytes - kPageSize, 2 * kPageSize); });
    alignas(4096) unsigned char on_stack[kPageSize] = {};
    expect_code(Errc::out_of_range, [&] { return submit(on_stack, kPageSize); });
  }
  s.synchronize();
  EXPECT_EQ(counter_diff(before, ctx.counters()), "");
  const auto residency_after = ctx.residency(a, kBytes);
  for (std::size_t i = 0; i < kPages; ++i) {
    EXPECT_EQ(residency_after[i].residency, residency_before[i].residency) << "page " << i;
    EXPECT_EQ(residency_after[i].locked, residency_before[i].locked) << "page " << i;
  }
  // The stream is still in order and working.
  EXPECT_EQ(ctx.migrate_to_device_async(s, a, kBytes).get().migrated, kPages - MiB / kPageSize);
  EXPECT_EQ(mismatches(a, kBytes, 12), 0u);
}

TEST(StreamTest, CreateStreamOnAMissingDeviceIsInvalidArgument) {
  Context ctx(cpu_options(16 * MiB));
  try {
    (void)ctx.create_stream(99);
    ADD_FAILURE() << "created";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("create_stream"), std::string::npos) << e.what();
  }
  EXPECT_EQ(ctx.create_stream(kNoOwner).device(), ctx.device_owner(0));
}

TEST(StreamTest, FailuresInsideAnAsyncMigrationComeBackInItsResult) {
  Context ctx(cpu_options());
  void* a = ctx.allocate(kBytes);
  fill(a, kBytes, 13);
  FaultInjection few;
  few.alloc_pages_left = 100;
  uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), few);
  Stream s = ctx.create_stream();
  const MigrationResult r = ctx.migrate_to_device_async(s, a, kBytes).get();
  EXPECT_EQ(r.pages, kPages);
  EXPECT_EQ(r.migrated + r.failed, kPages);
  EXPECT_LE(r.migrated, 100u);
  EXPECT_GT(r.failed, 0u);
  EXPECT_EQ(r.status.code, Errc::out_of_memory) << r.status.message;
  EXPECT_EQ(count(ctx.residency(a, kBytes), Residency::Device), r.migrated);
  uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), FaultInjection{});
  EXPECT_EQ(mismatches(a, kBytes, 13), 0u);
}

}  // namespace
