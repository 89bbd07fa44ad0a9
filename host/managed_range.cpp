#include "managed_range.hpp"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "uhmm/error.hpp"
#include "userfaultfd.hpp"

namespace uhmm::detail {

ManagedRange::ManagedRange(std::uint32_t id, std::size_t bytes, Userfaultfd& uffd)
    : id_(id), bytes_(bytes), uffd_(uffd), table_(bytes / kPageSize) {
  // Over-map by one block and trim, so the range starts on a 2 MiB boundary.
  const std::size_t span = bytes + kBlockSize;
  void* raw = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED)
    throw OutOfMemory(fmt::format("mmap of {} bytes for a managed range failed: {}", bytes, std::strerror(errno)));
  auto* start = static_cast<std::byte*>(raw);
  const auto misalign = reinterpret_cast<std::uintptr_t>(start) & (kBlockSize - 1);
  const std::size_t head = misalign == 0 ? 0 : kBlockSize - misalign;
  if (head != 0) ::munmap(start, head);
  base_ = start + head;
  const std::size_t tail = span - head - bytes;
  if (tail != 0) ::munmap(base_ + bytes, tail);
  mapped_bytes_ = bytes;

  // Children of fork() do not inherit managed ranges: their pages may live on a
  // device that the child cannot reach.
  const int err = ::madvise(base_, bytes, MADV_DONTFORK) != 0 ? errno : uffd_.register_range(base_, bytes);
  if (err != 0) {
    ::munmap(base_, bytes);
    throw Error(Errc::system_error,
                fmt::format("registering a {}-byte managed range with userfaultfd failed: {}", bytes, std::strerror(err)));
  }
}

ManagedRange::~ManagedRange() {
  // Unregistering wakes any thread still sleeping on a fault in the range.
  if (!has_unmapped_.load()) {
    uffd_.unregister_range(base_, mapped_bytes_);
    ::munmap(base_, mapped_bytes_);
    return;
  }
  try {
    for (const auto& [first, end] : unmapped_.complement(npages())) {
      uffd_.unregister_range(page_address(first), (end - first) * kPageSize);
      ::munmap(page_address(first), (end - first) * kPageSize);
    }
  } catch (const std::bad_alloc&) {
    // Leaves the live parts mapped: unmapping blindly could hit what the
    // application mapped into the holes.
  }
}

void ManagedRange::mark_unmapped(std::size_t first, std::size_t end) {
  std::lock_guard lock(unmapped_mutex_);
  unmapped_.add(first, std::min(end, npages()));
  has_unmapped_.store(true);
}

bool ManagedRange::any_unmapped(std::size_t first, std::size_t end) const noexcept {
  if (!has_unmapped_.load(std::memory_order_acquire)) return false;
  std::lock_guard lock(unmapped_mutex_);
  return unmapped_.intersects(first, end);
}

bool ManagedRange::all_unmapped(std::size_t first, std::size_t end) const noexcept {
  if (!has_unmapped_.load(std::memory_order_acquire)) return false;
  std::lock_guard lock(unmapped_mutex_);
  return unmapped_.covers(first, end);
}

bool ManagedRange::idle() noexcept {
  std::lock_guard lock(ops_mutex_);
  return ops_ == 0;
}

void ManagedRange::begin_op() noexcept {
  std::lock_guard lock(ops_mutex_);
  ++ops_;
}

void ManagedRange::end_op() noexcept {
  std::lock_guard lock(ops_mutex_);
  if (--ops_ == 0) ops_idle_.notify_all();
}

void ManagedRange::wait_idle() noexcept {
  std::unique_lock lock(ops_mutex_);
  ops_idle_.wait(lock, [this] { return ops_ == 0; });
}

}  // namespace uhmm::detail
