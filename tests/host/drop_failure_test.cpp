// A migration whose host copies cannot be dropped (mlock'ed memory on a kernel
// without MADV_DONTNEED_LOCKED; the drop stops part way, as MADV_DONTNEED does
// at the first locked mapping): the pages are reported failed with a status
// that names the cause, stay on the host with their data (the part the drop
// zapped comes back from the device copies), and stores reach them. Both
// fault modes (UHMM_FAULT_MODE).
#include <gtest/gtest.h>

#include <cerrno>
#include <string>

#include "uhmm/detail/test_points.hpp"
#include "test_support.hpp"

namespace uhmm::test {
namespace {

struct InjectedDropError {
  explicit InjectedDropError(int err) { detail::test_points::migration_drop_error.store(err); }
  ~InjectedDropError() { detail::test_points::migration_drop_error.store(0); }
};

TEST(DropFailure, PagesWhoseHostCopiesCannotGoStayOnTheHostWithTheirData) {
  constexpr std::size_t kBytes = MiB;
  constexpr std::size_t kPages = kBytes / kPageSize;
  Context ctx(cpu_options(8 * MiB));
  auto* p = static_cast<std::byte*>(ctx.allocate(kBytes));
  fill(p, kBytes, 1);
  MigrationResult r;
  {
    InjectedDropError inject(EINVAL);
    r = ctx.migrate_to_device(p, kBytes);
  }
  EXPECT_EQ(r.migrated, 0u);
  EXPECT_EQ(r.failed, kPages);
  EXPECT_EQ(r.status.code, Errc::system_error);
  EXPECT_NE(r.status.message.find("mlock"), std::string::npos) << r.status.message;
  EXPECT_EQ(count(ctx.residency(p, kBytes), Residency::System), kPages);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
  expect_pattern(p, kBytes, 1);
  fill(p, kBytes, 2);  // stores go through (no page left write-protected)
  expect_pattern(p, kBytes, 2);
  // Without the failure the same pages migrate.
  EXPECT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kPages);
  expect_pattern(p, kBytes, 2);
  const Status valid = ctx.validate();
  EXPECT_TRUE(valid) << valid.message;
}

}  // namespace
}  // namespace uhmm::test
