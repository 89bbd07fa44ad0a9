#include "userfaultfd_mechanism.hpp"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "block_aligned_mapping.hpp"
#include "managed_range.hpp"

namespace uhmm::detail {
namespace {

class UserfaultfdMapping final : public RangeMapping {
 public:
  UserfaultfdMapping(Userfaultfd& uffd, std::size_t bytes) : uffd_(uffd) {
    base_ = map_block_aligned(bytes, PROT_READ | PROT_WRITE);
    bytes_ = bytes;
    // Children of fork() do not inherit managed ranges: their pages may live on a
    // device that the child cannot reach.
    const int err = ::madvise(base_, bytes, MADV_DONTFORK) != 0 ? errno : uffd_.register_range(base_, bytes);
    if (err != 0) {
      ::munmap(base_, bytes);
      throw Error(Errc::system_error, fmt::format("registering a {}-byte managed range with userfaultfd failed: {}",
                                                  bytes, std::strerror(err)));
    }
  }
  ~UserfaultfdMapping() override {
    // Unregistering wakes any thread still sleeping on a fault in the range.
    uffd_.unregister_range(base_, bytes_);
    ::munmap(base_, bytes_);
  }

 private:
  Userfaultfd& uffd_;
};

}  // namespace

std::unique_ptr<RangeMapping> UserfaultfdMechanism::map_range(std::size_t bytes) {
  return std::make_unique<UserfaultfdMapping>(uffd_, bytes);
}

std::size_t UserfaultfdMechanism::read_faults(FaultEvent* out, std::size_t max) noexcept {
  if (messages_.size() < max) {
    try {
      messages_.resize(max);
    } catch (...) {
      max = messages_.size();
    }
  }
  const std::size_t n = uffd_.read_events(messages_.data(), max);
  std::size_t k = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const uffd_msg& m = messages_[i];
    if (m.event != UFFD_EVENT_PAGEFAULT) continue;
    out[k++] = {static_cast<std::uintptr_t>(m.arg.pagefault.address) & ~(kPageSize - 1),
                (m.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) != 0};
  }
  // A read that returned only other events still counts as "more may follow".
  return n == max && k == 0 ? read_faults(out, max) : k;
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
  return ::madvise(range.page_address(first), count * kPageSize, MADV_DONTNEED) == 0 ? 0 : errno;
}

int UserfaultfdMechanism::poison(ManagedRange& range, std::size_t first, std::size_t count) noexcept {
  return uffd_.poison(range.page_address(first), count * kPageSize);
}

int UserfaultfdMechanism::wake(std::uintptr_t addr, std::size_t len) noexcept {
  return uffd_.wake(reinterpret_cast<void*>(addr), len);
}

}  // namespace uhmm::detail
