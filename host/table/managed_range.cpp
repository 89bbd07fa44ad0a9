#include "managed_range.hpp"

#include <algorithm>
#include <new>

namespace uhmm::detail {

ManagedRange::ManagedRange(std::uint32_t id, std::size_t bytes, FaultMechanism& mechanism)
    : id_(id), table_(bytes / kPageSize), mapping_(mechanism.map_range(bytes)), base_(mapping_->base()),
      bytes_(bytes) {}

ManagedRange::~ManagedRange() {
  // The mapping unmaps itself; parts the application unmapped are left alone.
  if (!has_unmapped_.load()) return;
  try {
    mapping_->release_only(unmapped_.complement(npages()));
  } catch (const std::bad_alloc&) {
    // Leaves the live parts mapped: unmapping blindly could hit what the
    // application mapped into the holes.
    mapping_->release_only({});
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
