// A userfaultfd file descriptor and the ioctls uhmm uses on it, as small
// non-throwing calls returning errno (0 on success). Opening it throws a
// uhmm::Error that says why the kernel refused and what to do.
#pragma once

#include <linux/userfaultfd.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace uhmm::detail {

// Newer than the Debian 12 kernel headers; values from linux/userfaultfd.h.
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#define _UFFDIO_POISON (0x08)
struct uffdio_poison {
  struct uffdio_range range;
  __u64 mode;
  __s64 updated;
};
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif

// Opens a userfaultfd (the device node, else the syscall) whose API is not yet
// negotiated; -1 with the reasons appended to `why` ("what: error; ").
int open_userfaultfd(std::string& why);

class Userfaultfd {
 public:
  // Opens /dev/userfaultfd, else the userfaultfd(2) syscall, and negotiates the
  // API with write-protect faults. Throws Errc::userfaultfd_unavailable.
  Userfaultfd();
  ~Userfaultfd();
  Userfaultfd(const Userfaultfd&) = delete;
  Userfaultfd& operator=(const Userfaultfd&) = delete;

  int fd() const noexcept { return fd_; }
  std::uint64_t features() const noexcept { return features_; }
  bool has_poison() const noexcept { return (features_ & UFFD_FEATURE_POISON) != 0; }
  // The application's madvise(DONTNEED), munmap and mremap of a managed range
  // are reported (UFFD_EVENT_REMOVE / UNMAP / REMAP; mapping_events.hpp).
  bool has_mapping_events() const noexcept { return (features_ & kMappingEvents) == kMappingEvents; }
  static constexpr std::uint64_t kMappingEvents =
      UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMAP;

  // With mapping events on, the ioctls that fill or protect pages answer EAGAIN
  // while an event is unread (the kernel's mmap_changing), and the thread that
  // changed the mapping sleeps until it is read. The thread that reads events
  // installs a hook here, called on its own EAGAIN, that reads them; other
  // threads yield and retry (the reader will get to it).
  using EagainHook = void (*)(void* arg) noexcept;
  static void set_thread_eagain_hook(EagainHook hook, void* arg) noexcept;

  // Registers [addr, addr + len) for MISSING and WP faults.
  int register_range(void* addr, std::size_t len) noexcept;
  int unregister_range(void* addr, std::size_t len) noexcept;
  // Maps the zero page on every unmapped page of the range (EEXIST: some were
  // mapped). Without `wake`, threads waiting on the range sleep on until wake().
  int zeropage(void* addr, std::size_t len, bool wake = true) noexcept;
  // Copies len bytes from src into the unmapped pages at dst (waking waiters
  // only with `wake`). Returns EEXIST if a page was already mapped; *copied
  // says how far it got.
  int copy(void* dst, const void* src, std::size_t len, std::size_t* copied, bool wake = true) noexcept;
  // Write-protects (protect = true) or unprotects and wakes the range.
  int write_protect(void* addr, std::size_t len, bool protect) noexcept;
  int wake(void* addr, std::size_t len) noexcept;
  // Marks the unmapped pages poisoned: an access raises SIGBUS. Waiting
  // threads sleep on until wake().
  int poison(void* addr, std::size_t len) noexcept;

  // Reads up to max messages without blocking; returns the count (0 if none).
  std::size_t read_events(uffd_msg* msgs, std::size_t max) noexcept;

 private:
  int fd_ = -1;
  std::uint64_t features_ = 0;
};

}  // namespace uhmm::detail
