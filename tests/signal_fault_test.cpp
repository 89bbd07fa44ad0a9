// The signal fault mechanism (SIGSEGV + mprotect), forced in every test here
// whatever mode the suite runs in: it is chosen and reported, faults outside
// managed memory still reach the application's own handler, and alternating
// migrations of a large range stay within vm.max_map_count.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace uhmm::test {
namespace {

ContextOptions signal_options(std::size_t pool = 64 * MiB, bool fault_ahead = true) {
  ContextOptions o = cpu_options(pool, fault_ahead);
  o.fault_mode = "signal";
  return o;
}

struct Mapping {
  std::uintptr_t begin, end;
  bool accessible;  // any of r, w, x
};

std::vector<Mapping> read_maps() {
  std::vector<Mapping> out;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    unsigned long begin = 0, end = 0;
    char perms[5] = {};
    if (std::sscanf(line.c_str(), "%lx-%lx %4s", &begin, &end, perms) != 3) continue;
    out.push_back({begin, end, perms[0] != '-' || perms[1] != '-' || perms[2] != '-'});
  }
  return out;
}

long max_map_count() {
  long v = 65530;
  if (FILE* f = std::fopen("/proc/sys/vm/max_map_count", "r")) {
    if (std::fscanf(f, "%ld", &v) != 1) v = 65530;
    std::fclose(f);
  }
  return v;
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

TEST(SignalFaults, AlternatingPagesOfALargeRangeStayWithinTheMappingLimit) {
  // 256 MiB of alternating host and device pages would need 65536 mappings,
  // more than vm.max_map_count's default: mprotect would fail with ENOMEM.
  constexpr std::size_t kBytes = 256 * MiB;
  constexpr std::size_t kPages = kBytes / kPageSize;
  const long limit = max_map_count();
  Context ctx(signal_options(kBytes / 2 + 8 * MiB, /*fault_ahead=*/false));
  auto* p = static_cast<std::byte*>(ctx.allocate(kBytes));
  fill(p, kBytes, 32);
  for (std::size_t i = 0; i < kPages; i += 2) ctx.pin(p + i * kPageSize, kPageSize);
  const MigrationResult r = ctx.migrate_to_device(p, kBytes);
  EXPECT_EQ(r.migrated, kPages / 2);
  EXPECT_EQ(r.skipped, kPages / 2);
  EXPECT_TRUE(r.status) << r.status.message;
  const std::size_t after_migration = read_maps().size();
  EXPECT_LT(static_cast<long>(after_migration), limit * 3 / 4) << "mappings after the migration";
  EXPECT_EQ(device_pages_accessible(ctx, p, kBytes), 0u);

  // Every page read back: the device ones fault back, block by block.
  expect_pattern(p, kBytes, 32);
  EXPECT_LT(static_cast<long>(read_maps().size()), limit * 3 / 4) << "mappings after reading everything back";
  EXPECT_EQ(ctx.counters().pages_lost, 0u);

  // And once more the other way: the odd pages pinned, the even ones moved.
  for (std::size_t i = 0; i < kPages; i += 2) ctx.unpin(p + i * kPageSize, kPageSize);
  for (std::size_t i = 1; i < kPages; i += 2) ctx.pin(p + i * kPageSize, kPageSize);
  EXPECT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kPages / 2);
  EXPECT_LT(static_cast<long>(read_maps().size()), limit * 3 / 4);
  EXPECT_EQ(device_pages_accessible(ctx, p, kBytes), 0u);
  expect_pattern(p, kBytes, 32);
  const Status valid = ctx.validate();
  EXPECT_TRUE(valid) << valid.message;
}

}  // namespace
}  // namespace uhmm::test
