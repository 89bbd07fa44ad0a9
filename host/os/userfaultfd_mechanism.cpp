#include "userfaultfd_mechanism.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <iterator>
#include <cstring>

#include <fmt/format.h>

#include "block_aligned_mapping.hpp"
#include "managed_range.hpp"

#ifndef MADV_DONTNEED_LOCKED
#define MADV_DONTNEED_LOCKED 24  // Linux 5.18
#endif

namespace uhmm::detail {
namespace {

// Drops the pages of [addr, addr + len): MADV_DONTNEED, or where the
// application mlock'ed them (EINVAL) MADV_DONTNEED_LOCKED, which drops locked
// pages too (and on a kernel before 5.18 fails with EINVAL in turn).
int zap(void* addr, std::size_t len) noexcept {
  if (::madvise(addr, len, MADV_DONTNEED) == 0) return 0;
  if (errno != EINVAL) return errno;
  return ::madvise(addr, len, MADV_DONTNEED_LOCKED) == 0 ? 0 : errno;
}

// Under mlockall(MCL_FUTURE) the kernel populated the new mapping before it
// was registered: its pages exist without a fault, and the mirror would not
// know them (a store to one would never reach it). Dropped, every page is
// missing again. Returns 0 or the errno of the drop.
int unpopulate(std::byte* base, std::size_t bytes) noexcept {
  unsigned char resident = 0;
  return ::mincore(base, kPageSize, &resident) == 0 && (resident & 1) != 0 ? zap(base, bytes) : 0;
}

class UserfaultfdMapping final : public RangeMapping {
 public:
  UserfaultfdMapping(Userfaultfd& uffd, std::size_t bytes) : uffd_(uffd) {
    base_ = map_block_aligned(bytes, PROT_READ | PROT_WRITE);
    bytes_ = bytes;
    if (const int err = unpopulate(base_, bytes); err != 0) {
      ::munmap(base_, bytes);
      throw Error(Errc::system_error, fmt::format("a new {}-byte managed range was populated (mlockall(MCL_FUTURE)) "
                                                  "and dropping its pages failed: {}",
                                                  bytes, std::strerror(err)));
    }
    // Children of fork() do not inherit managed ranges: their pages may live on a
    // device that the child cannot reach.
    const int err = ::madvise(base_, bytes, MADV_DONTFORK) != 0 ? errno : uffd_.register_range(base_, bytes);
    if (err != 0) {
      ::munmap(base_, bytes);
      // At vm.max_map_count the registration's VMA changes fail too (ENOMEM,
      // or EAGAIN until the retries run out): say what ran out.
      if (err == ENOMEM || (err == EAGAIN && near_map_limit()))
        throw OutOfMemory(fmt::format("registering a {}-byte managed range with userfaultfd failed: {}", bytes,
                                      describe_mapping_failure(ENOMEM)));
      throw Error(Errc::system_error, fmt::format("registering a {}-byte managed range with userfaultfd failed: {}",
                                                  bytes, std::strerror(err)));
    }
  }
  ~UserfaultfdMapping() override {
    if (released_) return;
    // Unregistering wakes any thread still sleeping on a fault in the range.
    uffd_.unregister_range(base_, bytes_);
    ::munmap(base_, bytes_);
  }

  void release_only(const std::vector<std::pair<std::size_t, std::size_t>>& live) noexcept override {
    released_ = true;
    for (const auto& [first, end] : live) {
      uffd_.unregister_range(base_ + first * kPageSize, (end - first) * kPageSize);
      ::munmap(base_ + first * kPageSize, (end - first) * kPageSize);
    }
  }

 private:
  Userfaultfd& uffd_;
  bool released_ = false;  // release_only() unmapped what was left
};

}  // namespace

std::unique_ptr<RangeMapping> UserfaultfdMechanism::map_range(std::size_t bytes) {
  return std::make_unique<UserfaultfdMapping>(uffd_, bytes);
}

std::size_t UserfaultfdMechanism::read_faults(FaultEvent* out, std::size_t max) noexcept {
  // A buffer on the stack: applying a mapping event may read again (the
  // EAGAIN pump, userfaultfd.hpp) while an outer read still walks its events.
  uffd_msg msgs[32];
  std::size_t k = 0;
  while (k < max) {
    const std::size_t want = std::min(max - k, std::size(msgs));
    const std::size_t n = uffd_.read_events(msgs, want);
    for (std::size_t i = 0; i < n; ++i) {
      const uffd_msg& m = msgs[i];
      switch (m.event) {
        case UFFD_EVENT_PAGEFAULT:
          out[k++] = {static_cast<std::uintptr_t>(m.arg.pagefault.address) & ~(kPageSize - 1),
                      (m.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) != 0};
          break;
        case UFFD_EVENT_REMOVE:
          out[k++] = {m.arg.remove.start, false, FaultEvent::Kind::remove, m.arg.remove.end};
          break;
        case UFFD_EVENT_UNMAP:
          out[k++] = {m.arg.remove.start, false, FaultEvent::Kind::unmap, m.arg.remove.end};
          break;
        case UFFD_EVENT_REMAP:
          out[k++] = {m.arg.remap.from, false, FaultEvent::Kind::remap, m.arg.remap.from + m.arg.remap.len,
                      m.arg.remap.to};
          break;
        default:
          break;  // not asked for (FORK is never enabled); the loop reads on
      }
    }
    if (n < want) break;
  }
  return k;
}

int UserfaultfdMechanism::install_zeros(ManagedRange& range, std::size_t first, std::size_t count) noexcept {
  return uffd_.zeropage(range.page_address(first), count * kPageSize, /*wake=*/false);
}

int UserfaultfdMechanism::install_copy(ManagedRange& range, std::size_t first, std::size_t count,
                                       const std::byte* src, std::size_t* copied) noexcept {
  return uffd_.copy(range.page_address(first), src, count * kPageSize, copied, /*wake=*/false);
}

int UserfaultfdMechanism::write_protect(ManagedRange& range, std::size_t first, std::size_t count,
                                        bool protect) noexcept {
  return uffd_.write_protect(range.page_address(first), count * kPageSize, protect);
}

int UserfaultfdMechanism::drop(ManagedRange& range, std::size_t first, std::size_t count) noexcept {
  return zap(range.page_address(first), count * kPageSize);
}

int UserfaultfdMechanism::host_data(ManagedRange& range, std::size_t first, std::size_t count,
                                    std::uint8_t* present) noexcept {
  // One 64-bit word per page: bit 63 present, bit 62 swapped. Opened per call:
  // a descriptor kept open would read the parent's pages in a forked child.
  constexpr std::uint64_t kPresent = std::uint64_t{1} << 63, kSwapped = std::uint64_t{1} << 62;
  const int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  int err = 0;
  std::uint64_t words[64];
  const auto page_number = reinterpret_cast<std::uintptr_t>(range.page_address(first)) / kPageSize;
  for (std::size_t done = 0; done < count && err == 0;) {
    const std::size_t n = std::min(count - done, std::size(words));
    const auto offset = static_cast<off_t>((page_number + done) * sizeof words[0]);
    const ssize_t got = ::pread(fd, words, n * sizeof words[0], offset);
    if (got != static_cast<ssize_t>(n * sizeof words[0])) {
      err = got < 0 ? errno : EIO;
      break;
    }
    for (std::size_t i = 0; i < n; ++i) present[done + i] = (words[i] & (kPresent | kSwapped)) != 0;
    done += n;
  }
  ::close(fd);
  return err;
}

int UserfaultfdMechanism::poison(ManagedRange& range, std::size_t first, std::size_t count) noexcept {
  return uffd_.poison(range.page_address(first), count * kPageSize);
}

int UserfaultfdMechanism::wake(std::uintptr_t addr, std::size_t len) noexcept {
  return uffd_.wake(reinterpret_cast<void*>(addr), len);
}

}  // namespace uhmm::detail
