#include "userfaultfd.hpp"

#include <fcntl.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include <fmt/format.h>

#include "uhmm/error.hpp"

namespace uhmm::detail {
namespace {

int ioctl_errno(int fd, unsigned long request, void* arg) noexcept {
  for (;;) {
    if (::ioctl(fd, request, arg) == 0) return 0;
    if (errno != EINTR) return errno;
  }
}

std::uint64_t range_addr(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }

thread_local Userfaultfd::EagainHook eagain_hook = nullptr;
thread_local void* eagain_hook_arg = nullptr;

// An event is pending (mmap_changing): let it be read before retrying.
void before_retry() noexcept {
  if (eagain_hook != nullptr)
    eagain_hook(eagain_hook_arg);
  else
    ::sched_yield();
}

// Retries an ioctl that answers EAGAIN while a mapping event is unread.
int ioctl_retrying(int fd, unsigned long request, void* arg) noexcept {
  int err = ioctl_errno(fd, request, arg);
  while (err == EAGAIN) {
    before_retry();
    err = ioctl_errno(fd, request, arg);
  }
  return err;
}

int open_device_node(std::string& why) {
  const int dev = ::open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev < 0) {
    why += fmt::format("/dev/userfaultfd: {}; ", std::strerror(errno));
    return -1;
  }
  const int fd = ::ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
  const int err = errno;
  ::close(dev);
  if (fd < 0) why += fmt::format("USERFAULTFD_IOC_NEW: {}; ", std::strerror(err));
  return fd;
}

int open_syscall(std::string& why) {
  const long fd = ::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) why += fmt::format("userfaultfd(2): {}; ", std::strerror(errno));
  return static_cast<int>(fd);
}

}  // namespace

int open_userfaultfd(std::string& why) {
  const int fd = open_device_node(why);
  return fd >= 0 ? fd : open_syscall(why);
}

Userfaultfd::Userfaultfd() {
  // The device node works for users in its group without the sysctl; the
  // syscall needs CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1. Kernel-mode
  // faults (a read(2) into managed memory) must be served too, so
  // UFFD_USER_MODE_ONLY is not an option.
  std::string why;
  int probe = open_userfaultfd(why);
  if (probe < 0)
    throw Error(Errc::userfaultfd_unavailable,
                fmt::format("userfaultfd is not available ({}). uhmm needs it to serve CPU faults on managed "
                            "memory: run as root, add the user to the group owning /dev/userfaultfd, or set "
                            "the sysctl vm.unprivileged_userfaultfd=1; in a container, allow the userfaultfd "
                            "syscall in its seccomp profile",
                            why.substr(0, why.size() - 2)));
  // UFFDIO_API with no features reports what the kernel supports; the API can be
  // negotiated once per descriptor, so the real one is opened afterwards.
  uffdio_api api{};
  api.api = UFFD_API;
  const int probe_err = ioctl_errno(probe, UFFDIO_API, &api);
  ::close(probe);
  if (probe_err != 0 || (api.features & UFFD_FEATURE_PAGEFAULT_FLAG_WP) == 0)
    throw Error(Errc::userfaultfd_unavailable,
                fmt::format("this kernel's userfaultfd lacks write-protect faults on anonymous memory ({}); "
                            "uhmm needs Linux 5.7 or newer",
                            probe_err != 0 ? std::strerror(probe_err) : "feature missing"));

  fd_ = open_userfaultfd(why);
  uffdio_api wanted{};
  wanted.api = UFFD_API;
  // Mapping events only as a set: following the application's munmap but not
  // its mremap would leave a moved range registered and unserved.
  wanted.features = UFFD_FEATURE_PAGEFAULT_FLAG_WP | (api.features & UFFD_FEATURE_POISON) |
                    ((api.features & kMappingEvents) == kMappingEvents ? kMappingEvents : 0);
  const int err = fd_ < 0 ? errno : ioctl_errno(fd_, UFFDIO_API, &wanted);
  if (err != 0) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    throw Error(Errc::userfaultfd_unavailable,
                fmt::format("userfaultfd could not be set up: {}", std::strerror(err)));
  }
  features_ = wanted.features;
}

void Userfaultfd::set_thread_eagain_hook(EagainHook hook, void* arg) noexcept {
  eagain_hook = hook;
  eagain_hook_arg = arg;
}

Userfaultfd::~Userfaultfd() {
  if (fd_ >= 0) ::close(fd_);
}

int Userfaultfd::register_range(void* addr, std::size_t len) noexcept {
  uffdio_register reg{};
  reg.range = {range_addr(addr), len};
  reg.mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP;
  // EAGAIN: the kernel would have the call retried (a mapping event unread,
  // or, seen at vm.max_map_count, no room to prepare the change). Bounded:
  // the caller reports what is left.
  constexpr int kRetries = 100;
  int err = ioctl_errno(fd_, UFFDIO_REGISTER, &reg);
  for (int tries = 0; err == EAGAIN && tries < kRetries; ++tries) {
    before_retry();
    err = ioctl_errno(fd_, UFFDIO_REGISTER, &reg);
  }
  return err;
}

int Userfaultfd::unregister_range(void* addr, std::size_t len) noexcept {
  uffdio_range range{range_addr(addr), len};
  return ioctl_errno(fd_, UFFDIO_UNREGISTER, &range);
}

int Userfaultfd::zeropage(void* addr, std::size_t len, bool wake) noexcept {
  uffdio_zeropage z{};
  z.range = {range_addr(addr), len};
  z.mode = wake ? 0 : UFFDIO_ZEROPAGE_MODE_DONTWAKE;
  return ioctl_retrying(fd_, UFFDIO_ZEROPAGE, &z);
}

int Userfaultfd::copy(void* dst, const void* src, std::size_t len, std::size_t* copied, bool wake) noexcept {
  std::size_t done = 0;
  int err = 0;
  while (done < len) {
    uffdio_copy c{};
    c.dst = range_addr(dst) + done;
    c.src = range_addr(src) + done;
    c.len = len - done;
    c.mode = wake ? 0 : UFFDIO_COPY_MODE_DONTWAKE;
    err = ioctl_errno(fd_, UFFDIO_COPY, &c);
    if (c.copy > 0) done += static_cast<std::size_t>(c.copy);
    if (err == 0) {
      done = len;
      break;
    }
    if (err != EAGAIN) break;
    before_retry();
  }
  if (copied != nullptr) *copied = done;
  return err;
}

int Userfaultfd::write_protect(void* addr, std::size_t len, bool protect) noexcept {
  uffdio_writeprotect wp{};
  wp.range = {range_addr(addr), len};
  // Lifting never wakes: a writer woken here could run while its page is
  // still LOCKED in the mirror; the holder wakes it after the unlock.
  wp.mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : UFFDIO_WRITEPROTECT_MODE_DONTWAKE;
  return ioctl_retrying(fd_, UFFDIO_WRITEPROTECT, &wp);
}

int Userfaultfd::wake(void* addr, std::size_t len) noexcept {
  uffdio_range range{range_addr(addr), len};
  return ioctl_errno(fd_, UFFDIO_WAKE, &range);
}

int Userfaultfd::poison(void* addr, std::size_t len) noexcept {
  if (!has_poison()) return ENOTSUP;
  uffdio_poison p{};
  p.range = {range_addr(addr), len};
  p.mode = 1;  // UFFDIO_POISON_MODE_DONTWAKE: the caller wakes once the mirror is updated
  return ioctl_retrying(fd_, UFFDIO_POISON, &p);
}


std::size_t Userfaultfd::read_events(uffd_msg* msgs, std::size_t max) noexcept {
  for (;;) {
    const ssize_t n = ::read(fd_, msgs, max * sizeof(uffd_msg));
    if (n >= 0) return static_cast<std::size_t>(n) / sizeof(uffd_msg);
    if (errno != EINTR) return 0;
  }
}

}  // namespace uhmm::detail
