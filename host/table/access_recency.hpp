// When each device chunk was last used, for eviction: a logical clock and one
// stamp per chunk of each device. Migrations onto a device, kernel launches
// over resident spans and CPU faults in a block that keeps device pages stamp
// the chunks holding those pages; eviction takes the chunks with the oldest
// stamps (NVIDIA UVM's root-chunk LRU), not the oldest allocations.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "mirror_table.hpp"
#include "uhmm/types.hpp"

namespace uhmm::detail {

class AccessRecency {
 public:
  // capacity_pages[d]: the page capacity of device d + 1.
  explicit AccessRecency(const std::vector<std::size_t>& capacity_pages);

  // A new tick of the clock: what one operation stamps its chunks with, so
  // that every chunk an operation touched counts as used at the same time.
  std::uint64_t tick() noexcept { return clock_.fetch_add(1, std::memory_order_relaxed) + 1; }
  // Stamps the chunk holding `page` (ignored for owners or pages out of range).
  void touch(DevicePage page, std::uint64_t now) noexcept;
  // Stamps the chunks of every device page of one block of a mirror table.
  // Takes the block mutex: the caller must not hold it.
  void touch_block(const MirrorTable& table, std::size_t block) noexcept;

  std::size_t chunks(OwnerId owner) const noexcept;
  // 0: never used since the context began.
  std::uint64_t stamp(OwnerId owner, std::size_t chunk) const noexcept;

 private:
  struct Device {
    std::size_t nchunks = 0;
    std::unique_ptr<std::atomic<std::uint64_t>[]> stamps;
  };
  std::atomic<std::uint64_t> clock_{0};
  std::vector<Device> devices_;  // by owner - 1; fixed after construction
};

}  // namespace uhmm::detail
