// The CPU-fault path under failure, and the environment refusing userfaultfd.
#include <gtest/gtest.h>
#include "uhmm/hooks.hpp"
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <string>

#include "test_support.hpp"

namespace uhmm::test {
namespace {

TEST(FaultPath, OneFailedCopyBackIsRetriedAndTheDataArrives) {
  Context ctx(cpu_options(64 * MiB, /*fault_ahead=*/false));
  auto* p = static_cast<std::uint64_t*>(ctx.allocate(8 * kPageSize));
  fill(p, 8 * kPageSize, 21);
  ASSERT_EQ(ctx.migrate_to_device(p, 8 * kPageSize).migrated, 8u);
  FaultInjection inject;
  inject.copy_fail_at_page = 0;  // the next copy batch fails at its first page
  inject.copy_fail_batches = 1;
  uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), inject);
  EXPECT_EQ(p[5], pattern(21, 5));  // the fault's first copy fails, the retry succeeds
  EXPECT_EQ(ctx.counters().copy_failures, 1u);
  EXPECT_EQ(ctx.counters().pages_lost, 0u);
  expect_pattern(p, 8 * kPageSize, 21);
}

TEST(FaultPathDeathTest, APageThatCannotComeBackRaisesSigbusInTheFaultingThread) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        Context ctx(cpu_options(64 * MiB, false));
        auto* p = static_cast<volatile std::uint64_t*>(ctx.allocate(kPageSize));
        p[0] = 1;
        ctx.migrate_to_device(const_cast<std::uint64_t*>(p), kPageSize);
        FaultInjection inject;
        inject.copy_fail_at_page = 0;
        inject.copy_fail_batches = 1000;  // every attempt fails
        uhmm::hooks::inject_faults(ctx, ctx.device_owner(0), inject);
        const std::uint64_t v = p[0];  // SIGBUS, like a failed migrate_to_ram in the kernel
        std::_Exit(static_cast<int>(v) + 10);
      },
      ::testing::KilledBySignal(SIGBUS), "could not be brought back");
}

// Runs `body` in a child that dropped to an unprivileged user; returns what it
// reported through a pipe, or skips when userfaultfd is not refused there.
template <class Body>
std::string as_unprivileged_user(Body body) {
  if (access("/proc/sys/vm/unprivileged_userfaultfd", R_OK) == 0) {
    FILE* f = std::fopen("/proc/sys/vm/unprivileged_userfaultfd", "r");
    int allowed = 0;
    if (f != nullptr) {
      if (std::fscanf(f, "%d", &allowed) != 1) allowed = 0;
      std::fclose(f);
    }
    if (allowed != 0) return "skip: vm.unprivileged_userfaultfd=1: unprivileged users may use it here";
  }
  int pipefd[2];
  if (::pipe(pipefd) != 0) return "pipe failed";
  const pid_t child = ::fork();
  if (child < 0) return "fork failed";
  if (child == 0) {
    ::close(pipefd[0]);
    std::string report = "no error";
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) {
      report = "setuid failed";
    } else {
      try {
        report = body();
      } catch (const Error& e) {
        report = std::string(to_string(e.code())) + "|" + e.what();
      }
    }
    [[maybe_unused]] const ssize_t n = ::write(pipefd[1], report.data(), report.size());
    std::_Exit(0);
  }
  ::close(pipefd[1]);
  std::string report;
  char buf[512];
  for (ssize_t n; (n = ::read(pipefd[0], buf, sizeof buf)) > 0;) report.append(buf, static_cast<std::size_t>(n));
  ::close(pipefd[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  return report;
}

TEST(FaultPath, AnUnprivilegedProcessGetsAClearErrorWhenUserfaultfdIsForcedAndRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to drop to an unprivileged user";
  const std::string report = as_unprivileged_user([] {
    ContextOptions o = cpu_options();
    o.fault_mode = "userfaultfd";
    Context ctx(o);
    return std::string("no error");
  });
  if (report.rfind("skip: ", 0) == 0) GTEST_SKIP() << report.substr(6);
  EXPECT_EQ(report.rfind("userfaultfd unavailable|", 0), 0u) << report;
  EXPECT_NE(report.find("vm.unprivileged_userfaultfd=1"), std::string::npos) << report;
  EXPECT_NE(report.find("seccomp"), std::string::npos) << report;
}

TEST(FaultPath, WhereUserfaultfdIsRefusedAutoFallsBackToSignalsAndKeepsTheData) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to drop to an unprivileged user";
  const std::string report = as_unprivileged_user([] {
    ContextOptions o = cpu_options();
    o.fault_mode = "auto";
    Context ctx(o);
    auto* p = static_cast<std::uint64_t*>(ctx.allocate(2 * MiB));
    fill(p, 2 * MiB, 22);
    if (ctx.migrate_to_device(p, 2 * MiB).migrated != 2 * MiB / kPageSize) return std::string("migration failed");
    if (first_mismatch(p, 2 * MiB, 22) != SIZE_MAX) return std::string("wrong data after faulting back");
    return std::string("mode ") + ctx.fault_mode();
  });
  if (report.rfind("skip: ", 0) == 0) GTEST_SKIP() << report.substr(6);
  EXPECT_EQ(report, "mode signal");
}

}  // namespace
}  // namespace uhmm::test
