// System calls on managed memory (DESIGN.md, "The signal fault mechanism",
// "System calls"): read(2)/write(2)/pread/send/recv and O_DIRECT into and from
// never-touched and host-resident pages work in both fault modes, and the data
// is right after a round trip through the device. A device-resident page is
// closed to the kernel in signal mode (EFAULT); migrate_to_host or pin first
// makes a buffer safe. Runs in the mode of the suite (UHMM_FAULT_MODE).
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace uhmm::test {
namespace {

constexpr std::size_t kBytes = 64 * kPageSize;

bool signal_mode(const Context& ctx) { return std::strcmp(ctx.fault_mode(), "signal") == 0; }

// A temporary file holding `bytes` of pattern `seed`.
class PatternFile {
 public:
  PatternFile(std::size_t bytes, std::uint64_t seed, const char* dir = "/tmp") {
    path_ = std::string(dir) + "/uhmm-syscalls-XXXXXX";
    fd_ = ::mkstemp(path_.data());
    EXPECT_GE(fd_, 0);
    std::vector<std::uint64_t> data(bytes / 8);
    fill(data.data(), bytes, seed);
    EXPECT_EQ(::pwrite(fd_, data.data(), bytes, 0), static_cast<ssize_t>(bytes));
  }
  ~PatternFile() {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
  int fd() const { return fd_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

// Device and back: what the system call wrote is what the pages hold.
void expect_round_trip(Context& ctx, void* p, std::size_t bytes, std::uint64_t seed) {
  EXPECT_EQ(ctx.migrate_to_device(p, bytes).migrated, bytes / kPageSize);
  expect_pattern(p, bytes, seed);  // faults them back
}

TEST(SystemCalls, PreadIntoNeverTouchedPages) {
  Context ctx(cpu_options());
  auto* p = static_cast<std::byte*>(ctx.allocate(kBytes));
  PatternFile file(kBytes, 41);
  ASSERT_EQ(::pread(file.fd(), p, kBytes, 0), static_cast<ssize_t>(kBytes)) << std::strerror(errno);
  expect_round_trip(ctx, p, kBytes, 41);
  ctx.free(p);
}

TEST(SystemCalls, ReadAndWriteOnHostResidentPages) {
  Context ctx(cpu_options());
  auto* p = static_cast<std::byte*>(ctx.allocate(kBytes));
  fill(p, kBytes, 42);
  ASSERT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kBytes / kPageSize);
  ASSERT_EQ(ctx.migrate_to_host(p, kBytes).migrated, kBytes / kPageSize);
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  // write(2) reads the host pages; read(2) writes them back.
  ASSERT_EQ(::write(fds[1], p, kPageSize), static_cast<ssize_t>(kPageSize)) << std::strerror(errno);
  ASSERT_EQ(::read(fds[0], p + kPageSize, kPageSize), static_cast<ssize_t>(kPageSize)) << std::strerror(errno);
  ::close(fds[0]);
  ::close(fds[1]);
  EXPECT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kBytes / kPageSize);
  EXPECT_EQ(std::memcmp(p, p + kPageSize, kPageSize), 0);  // page 1 now holds page 0's words
  expect_pattern(p, kPageSize, 42);
  ctx.free(p);
}

TEST(SystemCalls, SendFromHostPagesAndRecvIntoNeverTouchedPages) {
  Context ctx(cpu_options());
  auto* src = static_cast<std::byte*>(ctx.allocate(kBytes));
  auto* dst = static_cast<std::byte*>(ctx.allocate(kBytes));
  fill(src, kBytes, 43);
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  std::size_t sent = 0, received = 0;
  while (received < kBytes) {
    if (sent < kBytes) {
      const ssize_t n = ::send(sv[0], src + sent, std::min<std::size_t>(kBytes - sent, 16 * kPageSize), MSG_DONTWAIT);
      if (n < 0) {
        ASSERT_TRUE(errno == EAGAIN || errno == EWOULDBLOCK) << std::strerror(errno);
      }
      if (n > 0) sent += static_cast<std::size_t>(n);
    }
    const ssize_t n = ::recv(sv[1], dst + received, kBytes - received, 0);
    ASSERT_GT(n, 0) << std::strerror(errno);
    received += static_cast<std::size_t>(n);
  }
  ::close(sv[0]);
  ::close(sv[1]);
  expect_round_trip(ctx, dst, kBytes, 43);
  ctx.free(dst);
  ctx.free(src);
}

TEST(SystemCalls, ODirectReadIntoNeverTouchedPages) {
  Context ctx(cpu_options());
  auto* p = static_cast<std::byte*>(ctx.allocate(kBytes));
  PatternFile file(kBytes, 44, ".");  // the build tree: tmpfs (often /tmp) has no O_DIRECT
  ::fsync(file.fd());
  const int fd = ::open(file.path().c_str(), O_RDONLY | O_DIRECT);
  if (fd < 0) GTEST_SKIP() << "no O_DIRECT here: " << std::strerror(errno);
  const ssize_t n = ::pread(fd, p, kBytes, 0);
  ::close(fd);
  ASSERT_EQ(n, static_cast<ssize_t>(kBytes)) << std::strerror(errno);
  expect_round_trip(ctx, p, kBytes, 44);
  ctx.free(p);
}

TEST(SystemCalls, SendFromNeverTouchedPagesAndRecvIntoHostPages) {
  Context ctx(cpu_options());
  auto* untouched = static_cast<std::byte*>(ctx.allocate(kBytes));
  auto* host = static_cast<std::uint64_t*>(ctx.allocate(kBytes));
  fill(host, kBytes, 47);
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  ASSERT_EQ(::send(sv[0], untouched, kPageSize, 0), static_cast<ssize_t>(kPageSize)) << std::strerror(errno);
  ASSERT_EQ(::recv(sv[1], host, kPageSize, MSG_WAITALL), static_cast<ssize_t>(kPageSize)) << std::strerror(errno);
  ::close(sv[0]);
  ::close(sv[1]);
  ASSERT_EQ(ctx.migrate_to_device(host, kBytes).migrated, kBytes / kPageSize);
  for (std::size_t w = 0; w < kBytes / 8; ++w)
    ASSERT_EQ(host[w], w < kPageSize / 8 ? 0u : pattern(47, w)) << "word " << w;  // page 0: the zeros sent
  ctx.free(reinterpret_cast<std::byte*>(host));
  ctx.free(untouched);
}

// What a system call wrote into a never-touched page is a host page to every
// later walk: residency says so and a migration copies it (no zero fill).
TEST(SystemCalls, PagesWrittenByASystemCallAreHostPagesToTheMirror) {
  Context ctx(cpu_options());
  auto* p = static_cast<std::byte*>(ctx.allocate(kBytes));
  PatternFile file(kPageSize, 48);
  ASSERT_EQ(::pread(file.fd(), p + 3 * kPageSize, kPageSize, 0), static_cast<ssize_t>(kPageSize));
  const auto pages = ctx.residency(p, kBytes);
  EXPECT_EQ(pages[3].residency, Residency::System);
  const Counters before = ctx.counters();
  EXPECT_EQ(ctx.migrate_to_device(p + 3 * kPageSize, kPageSize).migrated, 1u);
  EXPECT_EQ(ctx.counters().pages_zero_filled_on_device, before.pages_zero_filled_on_device);
  expect_pattern(p + 3 * kPageSize, kPageSize, 48);
  ctx.free(p);
}

// Signal mode closes device-resident pages to the kernel: EFAULT, nothing
// changed. The documented recipe (migrate_to_host, or pin) opens them.
// userfaultfd serves the kernel's own fault: the call just works.
TEST(SystemCalls, DeviceResidentPagesNeedMigrateToHostOrPinInSignalMode) {
  Context ctx(cpu_options());
  auto* p = static_cast<std::byte*>(ctx.allocate(kBytes));
  fill(p, kBytes, 45);
  ASSERT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kBytes / kPageSize);
  PatternFile file(kBytes, 46);
  if (signal_mode(ctx)) {
    errno = 0;
    EXPECT_EQ(::pread(file.fd(), p, kPageSize, 0), -1);
    EXPECT_EQ(errno, EFAULT);
    expect_pattern(p, kPageSize, 45);  // untouched (this access faults it back)
    ASSERT_EQ(ctx.migrate_to_device(p, kBytes).migrated, kBytes / kPageSize);
  }
  // The recipe: first half by migrate_to_host, second half by pin.
  ctx.migrate_to_host(p, kBytes / 2);
  ctx.pin(p + kBytes / 2, kBytes / 2);
  ASSERT_EQ(::pread(file.fd(), p, kBytes, 0), static_cast<ssize_t>(kBytes)) << std::strerror(errno);
  ctx.unpin(p + kBytes / 2, kBytes / 2);
  expect_round_trip(ctx, p, kBytes, 46);
  ctx.free(p);
}

}  // namespace
}  // namespace uhmm::test
