// Device page -> (range, page) for one device, so that migrate_device_range can
// find what a device page backs. Entries are hints: users re-check the mirror
// entry under its block lock before acting on one.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>

#include "uhmm/types.hpp"

namespace uhmm::detail {

class ReverseMap {
 public:
  struct Target {
    std::uint32_t range_id;
    std::uint32_t page;
  };

  explicit ReverseMap(std::size_t capacity)
      : capacity_(capacity), slots_(std::make_unique<std::atomic<std::uint64_t>[]>(capacity)) {}

  std::size_t capacity() const noexcept { return capacity_; }
  void set(DevicePageIndex index, Target t) noexcept {
    slots_[index].store((std::uint64_t{t.range_id} + 1) << 32 | t.page, std::memory_order_relaxed);
  }
  void clear(DevicePageIndex index) noexcept { slots_[index].store(0, std::memory_order_relaxed); }
  std::optional<Target> get(DevicePageIndex index) const noexcept {
    const std::uint64_t v = slots_[index].load(std::memory_order_relaxed);
    if (v == 0) return std::nullopt;
    return Target{static_cast<std::uint32_t>((v >> 32) - 1), static_cast<std::uint32_t>(v)};
  }

 private:
  std::size_t capacity_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> slots_;
};

}  // namespace uhmm::detail
