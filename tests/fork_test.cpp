// fork(): managed ranges are MADV_DONTFORK, so a child does not inherit them
// (their pages may live on a device the child cannot reach, and its
// userfaultfd would have no service). The child sees the addresses unmapped;
// the parent's data, device-resident pages included, is intact afterwards
// and its faults still work. Children only make async-signal-safe calls.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

#include "test_support.hpp"
#include "uhmm/uhmm.hpp"

namespace {

using namespace uhmm;
using namespace uhmm::test;

constexpr std::size_t kPages = 32;
constexpr std::size_t kBytes = kPages * kPageSize;

// Waits for the child; returns its exit code, or 128 + signal.
int wait_child(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

class ForkTest : public ::testing::Test {
 protected:
  Context ctx{cpu_options()};
  void* p = nullptr;
  void SetUp() override {
    p = ctx.allocate(kBytes);
    fill(p, kBytes, 42);
    ASSERT_EQ(ctx.migrate_to_device(p, kBytes / 2).migrated, kPages / 2);
  }
  void expect_parent_intact() {
    EXPECT_EQ(count(ctx.residency(p, kBytes), Residency::Device), kPages / 2);
    expect_pattern(p, kBytes, 42);  // faults the device half back
    EXPECT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kPages);
    fill(p, kBytes, 43);
    expect_pattern(p, kBytes, 43);
    EXPECT_TRUE(ctx.validate()) << ctx.validate().message;
  }
};

TEST_F(ForkTest, ChildSeesTheManagedRangeUnmapped) {
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    unsigned char vec[kPages];
    // mincore answers ENOMEM for an address range that is not mapped.
    const int host_half = ::mincore(p, kBytes / 2, vec);
    const int host_err = errno;
    const int device_half = ::mincore(static_cast<char*>(p) + kBytes / 2, kBytes / 2, vec);
    const int device_err = errno;
    ::_exit(host_half == -1 && host_err == ENOMEM && device_half == -1 && device_err == ENOMEM ? 0 : 1);
  }
  EXPECT_EQ(wait_child(pid), 0) << "the child could see the managed range mapped";
  expect_parent_intact();
}

TEST_F(ForkTest, ChildTouchingAManagedAddressGetsSigsegv) {
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::signal(SIGSEGV, SIG_DFL);
    *static_cast<volatile char*>(p) = 1;
    ::_exit(0);
  }
  const int rc = wait_child(pid);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // A sanitizer's own SIGSEGV handler reports the access and exits non-zero.
  EXPECT_NE(rc, 0) << "the child could write to a managed address";
#else
  EXPECT_EQ(rc, 128 + SIGSEGV);
#endif
  expect_parent_intact();
}

TEST_F(ForkTest, ParentFaultsAndMigrationsWorkWhileChildrenComeAndGo) {
  for (int round = 0; round < 8; ++round) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) ::_exit(0);
    // Between fork and the child's exit: a migration and faults in the parent.
    EXPECT_EQ(ctx.migrate_to_host(p, kBytes).failed, 0u);
    expect_pattern(p, kBytes, 42);
    EXPECT_EQ(ctx.migrate_to_device(p, kBytes / 2).migrated, kPages / 2);
    EXPECT_EQ(wait_child(pid), 0);
  }
  expect_parent_intact();
}

}  // namespace
