#include "launch_stream_pool.hpp"

#include <algorithm>

#include <fmt/format.h>

namespace uhmm::detail {

LaunchStreamPool::LaunchStreamPool(Backend& backend, std::size_t max_idle) noexcept
    : backend_(backend), max_idle_(max_idle) {}

LaunchStreamPool::~LaunchStreamPool() {
  for (const Slot& slot : idle_) destroy(slot);
  free_retired();
}

LaunchStreamPool::Lease LaunchStreamPool::acquire() {
  {
    std::lock_guard lock(mutex_);
    if (!idle_.empty()) {
      const Slot slot = idle_.back();
      idle_.pop_back();
      return Lease(*this, slot);
    }
  }
  Slot slot;
  if (Status s = backend_.create_stream(&slot.stream); !s) {
    s.message = fmt::format("launch: cannot create a launch stream: {}", s.message);
    s.raise_if_error();
  }
  std::lock_guard lock(mutex_);
  ++created_;
  return Lease(*this, slot);
}

void LaunchStreamPool::release(Slot slot, bool broken) noexcept {
  {
    std::lock_guard lock(mutex_);
    if (!broken && idle_.size() < max_idle_) {
      try {
        idle_.push_back(slot);
        return;
      } catch (...) {
        // No room to keep it: destroyed below.
      }
    }
  }
  destroy(slot);
}

// Destroying a slot waits for its stream anyway: the retired buffers go too.
void LaunchStreamPool::destroy(const Slot& slot) noexcept {
  if (slot.tables != 0) backend_.free_device_buffer(slot.tables);
  backend_.destroy_stream(slot.stream);
  free_retired();
}

void LaunchStreamPool::retire(DeviceAddress tables) noexcept {
  {
    std::lock_guard lock(mutex_);
    try {
      retired_.push_back(tables);
      return;
    } catch (...) {
      // No room to keep it: freed now.
    }
  }
  backend_.free_device_buffer(tables);
}

void LaunchStreamPool::free_retired() noexcept {
  std::vector<DeviceAddress> retired;
  {
    std::lock_guard lock(mutex_);
    retired.swap(retired_);
  }
  for (DeviceAddress tables : retired) backend_.free_device_buffer(tables);
}

Status LaunchStreamPool::Lease::reserve_tables(std::size_t bytes, DeviceAddress* out) noexcept {
  if (bytes > slot_.table_bytes) {
    // Grow geometrically so that a growing workload does not reallocate each launch.
    const std::size_t want = std::max(bytes, 2 * slot_.table_bytes);
    DeviceAddress buffer = 0;
    if (Status s = pool_->backend_.allocate_device_buffer(want, &buffer); !s) return s;
    if (slot_.tables != 0) pool_->retire(slot_.tables);
    slot_.tables = buffer;
    slot_.table_bytes = want;
  }
  *out = slot_.tables;
  return Status::ok();
}

std::size_t LaunchStreamPool::streams_created() const noexcept {
  std::lock_guard lock(mutex_);
  return created_;
}

std::size_t LaunchStreamPool::idle() const noexcept {
  std::lock_guard lock(mutex_);
  return idle_.size();
}

LaunchStreamPool& LaunchStreamPools::of(OwnerId owner, Backend& backend) {
  std::lock_guard lock(mutex_);
  auto& pool = pools_[owner];
  if (!pool) pool = std::make_unique<LaunchStreamPool>(backend);
  return *pool;
}

void LaunchStreamPools::clear() noexcept {
  std::lock_guard lock(mutex_);
  pools_.clear();
}

}  // namespace uhmm::detail
