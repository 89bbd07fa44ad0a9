// Managed memory the application locks (mlock, mlockall): a migration to a
// device either really takes the host copies away (MADV_DONTNEED_LOCKED) or
// reports the pages failed and leaves them on the host; a kernel's writes are
// then what the CPU reads, and CPU stores never spin. Runs in both fault modes
// (UHMM_FAULT_MODE). Every test undoes its locks: mlockall would otherwise
// reach the next test of this binary.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cstring>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace uhmm::test {
namespace {

constexpr std::size_t kBytes = MiB;
constexpr std::size_t kWords = kBytes / sizeof(std::uint64_t);

// munlockall() at the end of the scope, whatever happens in between.
struct UnlockAllAtExit {
  ~UnlockAllAtExit() { ::munlockall(); }
};

// Pages the mirror places on a device whose host copy is still mapped: each
// would read stale data after a kernel writes the device copy. (In signal
// mode a dropped page is PROT_NONE; mincore still counts the memfd's page,
// so only userfaultfd mode is checked this way.)
std::size_t device_pages_with_host_copy(Context& ctx, std::byte* p, std::size_t bytes) {
  if (std::strcmp(ctx.fault_mode(), "userfaultfd") != 0) return 0;
  std::vector<unsigned char> resident(bytes / kPageSize);
  if (::mincore(p, bytes, resident.data()) != 0) return SIZE_MAX;
  const auto pages = ctx.residency(p, bytes);
  std::size_t bad = 0;
  for (std::size_t i = 0; i < pages.size(); ++i) bad += pages[i].residency == Residency::Device && (resident[i] & 1);
  return bad;
}

// Moves the (filled, locked) range to the device, lets a kernel rewrite it,
// and checks that the CPU then reads the kernel's data (or, for pages the
// migration reported failed, the data they had), and that stores go through.
void migrate_write_read_store(Context& ctx, std::byte* p) {
  const std::size_t pages = kBytes / kPageSize;
  const MigrationResult r = ctx.migrate_to_device(p, kBytes);
  EXPECT_EQ(r.migrated + r.failed, pages);
  EXPECT_EQ(device_pages_with_host_copy(ctx, p, kBytes), 0u) << "migrated pages left mapped on the host";
  if (r.failed > 0) {
    // Then the status says why, and those pages stayed where they were.
    EXPECT_NE(r.status.code, Errc::ok);
    EXPECT_NE(r.status.message.find("mlock"), std::string::npos) << r.status.message;
    EXPECT_EQ(count(ctx.residency(p, kBytes), Residency::Device), r.migrated);
  }
  auto* words = reinterpret_cast<std::uint64_t*>(p);
  if (r.failed == 0) {
    ctx.launch(kWords, [](std::size_t i, device_span<std::uint64_t> x) { x[i] = pattern(2, i); },
               std::span<std::uint64_t>(words, kWords));
    ASSERT_EQ(first_mismatch(p, kBytes, 2), SIZE_MAX) << "the CPU reads a stale host copy";
  } else {
    ASSERT_EQ(first_mismatch(p, kBytes, 1), SIZE_MAX) << "pages that stayed lost their data";
  }
  fill(p, kBytes, 3);  // a store to a page whose host copy was stale would spin here
  expect_pattern(p, kBytes, 3);
  const Status valid = ctx.validate();
  EXPECT_TRUE(valid) << valid.message;
}

TEST(Mlock, LockedRangeMigratesOrStaysOnTheHost) {
  Context ctx(cpu_options(8 * MiB));
  auto* p = static_cast<std::byte*>(ctx.allocate(kBytes));
  fill(p, kBytes, 1);
  ASSERT_EQ(::mlock(p, kBytes), 0) << std::strerror(errno);
  migrate_write_read_store(ctx, p);
  EXPECT_EQ(::munlock(p, kBytes), 0);
  ctx.free(p);
}

TEST(Mlock, LockingARangeFirstTouchesEveryPageThroughTheFaultService) {
  // mlock after allocate faults every page in: never-touched ones as zeros.
  // (In signal mode mlock may answer ENOMEM for closed pages, which it leaves
  // to the first access; never-touched pages are open there.)
  Context ctx(cpu_options(8 * MiB));
  auto* p = static_cast<std::byte*>(ctx.allocate(kBytes));
  const int rc = ::mlock(p, kBytes);
  ASSERT_TRUE(rc == 0 || (errno == ENOMEM && std::strcmp(ctx.fault_mode(), "signal") == 0)) << std::strerror(errno);
  const auto* words = reinterpret_cast<const std::uint64_t*>(p);
  std::size_t nonzero = 0;
  for (std::size_t i = 0; i < kWords; ++i) nonzero += words[i] != 0;
  EXPECT_EQ(nonzero, 0u);
  fill(p, kBytes, 1);
  migrate_write_read_store(ctx, p);
  EXPECT_EQ(::munlock(p, kBytes), 0);
  ctx.free(p);
}

TEST(Mlock, LockingDeviceResidentPagesBringsThemBack) {
  Context ctx(cpu_options(8 * MiB));
  auto* p = static_cast<std::byte*>(ctx.allocate(kBytes));
  fill(p, kBytes, 1);
  ASSERT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kBytes / kPageSize);
  // Populating faults every page; the service serves each (no hang). In
  // signal mode the device pages are PROT_NONE, which mlock may refuse to
  // populate: it then leaves them to the next access.
  const int rc = ::mlock(p, kBytes);
  EXPECT_TRUE(rc == 0 || errno == ENOMEM) << std::strerror(errno);
  expect_pattern(p, kBytes, 1);
  if (rc == 0) {
    EXPECT_EQ(::munlock(p, kBytes), 0);
  }
  ctx.free(p);
}

TEST(Mlock, MlockallBeforeTheContext) {
  UnlockAllAtExit unlock;
  ASSERT_EQ(::mlockall(MCL_CURRENT | MCL_FUTURE), 0) << std::strerror(errno);
  Context ctx(cpu_options(8 * MiB));
  auto* p = static_cast<std::byte*>(ctx.allocate(kBytes));
  // The range was populated when it was mapped: still it reads zeros, and
  // what the CPU writes first is what the device gets.
  const auto* words = reinterpret_cast<const std::uint64_t*>(p);
  std::size_t nonzero = 0;
  for (std::size_t i = 0; i < kWords; ++i) nonzero += words[i] != 0;
  EXPECT_EQ(nonzero, 0u);
  fill(p, kBytes, 1);
  migrate_write_read_store(ctx, p);
  ctx.free(p);
}

TEST(Mlock, MlockallAfterTheContext) {
  UnlockAllAtExit unlock;
  Context ctx(cpu_options(8 * MiB));
  auto* p = static_cast<std::byte*>(ctx.allocate(kBytes));
  fill(p, kBytes, 1);
  // Half on the device: mlockall populates the range, faulting it back.
  ASSERT_EQ(ctx.migrate_to_device(p, kBytes / 2).migrated, kBytes / 2 / kPageSize);
  ASSERT_EQ(::mlockall(MCL_CURRENT | MCL_FUTURE), 0) << std::strerror(errno);
  ASSERT_EQ(first_mismatch(p, kBytes, 1), SIZE_MAX);
  migrate_write_read_store(ctx, p);
  ctx.free(p);
}

}  // namespace
}  // namespace uhmm::test
