// A store that waited on a migration's write-protection returns only once the
// mirror is final: when the migration fails and the page stays on the host,
// the writer must not run while the page is still LOCKED (a migration it
// started next would skip its page). Lifting the protection used to wake the
// writer before the unlock (UFFDIO_WRITEPROTECT without DONTWAKE).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "test_support.hpp"
#include "uhmm/uhmm.hpp"
#include "uhmm/hooks.hpp"

namespace {

using namespace uhmm;
using namespace uhmm::test;

TEST(WriteProtectWakeTest, AWriterHeldByAFailedMigrationWakesOnlyAfterTheUnlock) {
  Context ctx(cpu_options(16 * MiB));
  auto* data = static_cast<std::uint64_t*>(ctx.allocate(kBlockSize));
  // Every page a host page (in signal mode a never-touched page is open, and
  // a migration zero-fills it on the device without a copy).
  std::fill_n(data, kBlockSize / 8, 1);
  std::size_t faulted = 0, woke_locked = 0;
  for (int round = 0; round < 60; ++round) {
    // The copy sleeps, then fails: the pages stay on the host, write-protected
    // all the while.
    uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), {.copy_fail_at_page = 0, .copy_fail_batches = 1, .copy_delay_us = 3000});
    std::atomic<bool> go{false}, migrated{false};
    std::thread writer([&] {
      while (!go.load()) std::this_thread::yield();
      do {
        const std::uint64_t before = ctx.counters().faults_write_protect;
        reinterpret_cast<volatile std::uint64_t*>(data)[0] = static_cast<std::uint64_t>(round);
        const bool locked = ctx.residency(data, kPageSize)[0].locked;
        if (ctx.counters().faults_write_protect > before) {  // this store waited for the migration
          ++faulted;
          woke_locked += locked;
          return;
        }
      } while (!migrated.load());
    });
    go = true;
    const MigrationResult r = ctx.migrate_to_device(data, kBlockSize);
    migrated = true;
    writer.join();
    ASSERT_EQ(r.migrated, 0u);
    ASSERT_EQ(data[0], static_cast<std::uint64_t>(round));
  }
  uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), {});
  EXPECT_GT(faulted, 0u) << "no store met the write-protection: the test proved nothing";
  EXPECT_EQ(woke_locked, 0u) << "of " << faulted << " writers held by a migration";
  EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  ctx.free(data);
}

}  // namespace
