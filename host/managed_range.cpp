#include "managed_range.hpp"

namespace uhmm::detail {

ManagedRange::ManagedRange(std::uint32_t id, std::size_t bytes, FaultMechanism& mechanism)
    : id_(id), table_(bytes / kPageSize), mapping_(mechanism.map_range(bytes)), base_(mapping_->base()),
      bytes_(bytes) {}

ManagedRange::~ManagedRange() = default;  // the mapping unmaps itself

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
