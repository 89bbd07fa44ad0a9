// The signal fault mechanism (SIGSEGV + mprotect), forced in every test here
// whatever mode the suite runs in: it is chosen and reported, faults outside
// managed memory still reach the application's own handler, and alternating
// migrations of a range that needs more mappings than the process has left
// stay within vm.max_map_count.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "mapping_hog.hpp"
#include "test_support.hpp"

namespace uhmm::test {
namespace {

ContextOptions signal_options(std::size_t pool = 64 * MiB, bool fault_ahead = true) {
  ContextOptions o = cpu_options(pool, fault_ahead);
  o.fault_mode = "signal";
  return o;
}

// Pages the mirror places on a device that the application's view still lets
// through (each would read stale host memory).
std::size_t device_pages_accessible(Context& ctx, std::byte* p, std::size_t bytes) {
  const auto maps = read_maps();
  const auto pages = ctx.residency(p, bytes);
  std::size_t bad = 0, m = 0;
  for (std::size_t i = 0; i < pages.size(); ++i) {
    if (pages[i].residency != Residency::Device) continue;
    const auto addr = reinterpret_cast<std::uintptr_t>(p + i * kPageSize);
    while (m < maps.size() && maps[m].end <= addr) ++m;
    if (m == maps.size() || maps[m].begin > addr || maps[m].accessible) ++bad;
  }
  return bad;
}

TEST(SignalFaults, ForcedModeIsReportedAndServesFaults) {
  Context ctx(signal_options());
  EXPECT_STREQ(ctx.fault_mode(), "signal");
  auto* p = static_cast<std::byte*>(ctx.allocate(3 * MiB));
  fill(p, 3 * MiB, 31);
  ASSERT_EQ(ctx.migrate_to_device(p, 3 * MiB).migrated, 3 * MiB / kPageSize);
  expect_pattern(p, 3 * MiB, 31);
  EXPECT_GT(ctx.counters().faults_from_device, 0u);
  EXPECT_EQ(ctx.counters().device_pages_in_use, 0u);
}

TEST(SignalFaults, UnknownFaultModeIsAClearErrorAndNoContext) {
  ContextOptions o = cpu_options();
  o.fault_mode = "uffd";
  try {
    Context ctx(o);
    ADD_FAILURE() << "a context was created with fault mode 'uffd'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("uffd"), std::string::npos) << e.what();
  }
}

std::atomic<int> g_own_faults{0};
void* g_own_page = nullptr;

void own_handler(int, siginfo_t* info, void*) {
  if (info->si_addr != g_own_page) std::_Exit(3);
  g_own_faults.fetch_add(1);
  ::mprotect(g_own_page, kPageSize, PROT_READ | PROT_WRITE);
}

TEST(SignalFaultsDeathTest, FaultsOutsideManagedMemoryReachTheApplicationsOwnHandler) {
  // In a fresh process: uhmm installs its handler once per process, over
  // whatever the application had installed before the first signal context.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        struct sigaction mine{};
        mine.sa_sigaction = own_handler;
        mine.sa_flags = SA_SIGINFO;
        sigemptyset(&mine.sa_mask);
        if (::sigaction(SIGSEGV, &mine, nullptr) != 0) std::_Exit(4);
        Context ctx(signal_options());  // installs uhmm's handler over the application's
        auto* managed = static_cast<volatile std::uint64_t*>(ctx.allocate(kPageSize));
        managed[0] = 5;
        g_own_page = ::mmap(nullptr, kPageSize, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (g_own_page == MAP_FAILED) std::_Exit(5);
        static_cast<volatile int*>(g_own_page)[0] = 7;  // the application's handler opens it
        const bool ok = g_own_faults.load() == 1 && static_cast<volatile int*>(g_own_page)[0] == 7 && managed[0] == 5;
        std::_Exit(ok ? 0 : 6);
      },
      ::testing::ExitedWithCode(0), "");
}

// What went wrong (empty: nothing) when alternating pages of a range that
// needs more mappings than the process has left move to the device and back.
std::string alternating_pages_within_the_mapping_limit() {
  constexpr long kLeft = 6000;  // mappings left to the process: the range alone would need 8192
  constexpr std::size_t kBytes = 32 * MiB;
  constexpr std::size_t kPages = kBytes / kPageSize;
  const long limit = max_map_count();
  MappingHog hog(kLeft);
  Context ctx(signal_options(kBytes / 2 + 8 * MiB));  // its budget: half of what is left
  auto* p = static_cast<std::byte*>(ctx.allocate(kBytes));
  fill(p, kBytes, 32);
  std::string failures;
  auto check = [&](bool ok, const std::string& what) {
    if (!ok) failures += what + "; ";
  };
  auto check_mappings = [&](const char* when) {
    const long maps = static_cast<long>(read_maps().size());
    check(maps < limit, std::string("mappings ") + when + ": " + std::to_string(maps) + " of " + std::to_string(limit));
    check(device_pages_accessible(ctx, p, kBytes) == 0, std::string("device pages left readable ") + when);
  };
  for (int round = 0; round < 2; ++round) {
    // Round 0 moves the odd pages, round 1 the even ones.
    for (std::size_t i = 0; i < kPages; ++i) {
      if (i % 2 == static_cast<std::size_t>(round)) ctx.pin(p + i * kPageSize, kPageSize);
      else ctx.unpin(p + i * kPageSize, kPageSize);
    }
    const MigrationResult r = ctx.migrate_to_device(p, kBytes);
    check(r.migrated == kPages / 2, "migrated " + std::to_string(r.migrated) + " of " + std::to_string(kPages / 2));
    check(r.status.code == Errc::ok, "migration status: " + r.status.message);
    check_mappings("after the migration");
    // Every page read back: the device ones fault back, block by block.
    check(first_mismatch(p, kBytes, 32) == SIZE_MAX, "wrong data after reading back");
    check_mappings("after reading back");
  }
  check(ctx.counters().pages_lost == 0, "pages lost");
  const Status valid = ctx.validate();
  check(static_cast<bool>(valid), valid.message);
  return failures;
}

TEST(SignalFaultsDeathTest, AlternatingPagesOfARangeStayWithinTheMappingLimit) {
  // In a fresh process: the mapping budget is measured when the first signal
  // context starts, after the hog took its share.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        const std::string failures = alternating_pages_within_the_mapping_limit();
        std::fprintf(stderr, "%s\n", failures.empty() ? "all good" : failures.c_str());
        std::_Exit(failures.empty() ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "all good");
}

}  // namespace
}  // namespace uhmm::test
