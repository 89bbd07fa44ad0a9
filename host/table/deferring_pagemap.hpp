// What device_pagemap() hands the application: the device's DevicePagemap,
// with asynchronous signals deferred across each call, as every public call
// (deferred_signals.hpp): alloc_and_copy and page_free take the pool's mutex.
#pragma once

#include "deferred_signals.hpp"
#include "uhmm/migrate.hpp"

namespace uhmm::detail {

class DeferringPagemap final : public DevicePagemap {
 public:
  explicit DeferringPagemap(DevicePagemap& device) : device_(device) {}
  OwnerId owner() const noexcept override { return device_.owner(); }
  std::size_t capacity_pages() const noexcept override { return device_.capacity_pages(); }
  Status alloc_and_copy(MigrateVma& args) noexcept override {
    DeferSignals defer;
    return device_.alloc_and_copy(args);
  }
  BatchResult copy_to_ram(std::span<const DevicePageIndex> pages, std::span<std::byte* const> dst) noexcept override {
    DeferSignals defer;
    return device_.copy_to_ram(pages, dst);
  }
  void page_free(std::span<const DevicePageIndex> pages) noexcept override {
    DeferSignals defer;
    device_.page_free(pages);
  }
  DeviceAddress address_of(DevicePageIndex page) const noexcept override {
    DeferSignals defer;
    return device_.address_of(page);
  }
  std::size_t pages_in_use() const noexcept override {
    DeferSignals defer;
    return device_.pages_in_use();
  }

 private:
  DevicePagemap& device_;
};

}  // namespace uhmm::detail
