// Thrashing detection: a page that comes back to the host on CPU faults at
// least `bounces` times within `window_ms` thrashes, and cools down for
// `cooldown_ms` from then (its history starts again after). Histories live in
// per-block arrays allocated on a block's first bounce; the pointers to them
// are a lazily mapped array, so ranges that never bounce pay nothing.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "lazy_array.hpp"

#include "lock_order.hpp"
#include "uhmm/context.hpp"

namespace uhmm::detail {

using ThrashingSettings = ThrashingOptions;

// Milliseconds of the steady clock, wrapping (histories compare differences).
inline std::uint32_t monotonic_ms() noexcept {
  return static_cast<std::uint32_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch()).count());
}

class PageBounces {
 public:
  explicit PageBounces(std::size_t nblocks) : blocks_(nblocks, "mapping a range's bounce histories") {}
  ~PageBounces();
  PageBounces(const PageBounces&) = delete;
  PageBounces& operator=(const PageBounces&) = delete;

  enum class Verdict { calm, detected, cooling };
  // `page` came back to the host on a CPU fault at `now_ms`. Returns detected
  // the moment it starts thrashing, cooling while its cool-down lasts.
  // Pre: the caller holds the page's block mutex.
  Verdict record(std::size_t page, std::uint32_t now_ms, const ThrashingSettings& s);
  // Whether `page` is cooling down at `now_ms`; if so and `back_for_ms` is
  // given, how long ago it last came back to the host. Pre: its block mutex
  // is held.
  bool cooling(std::size_t page, std::uint32_t now_ms, const ThrashingSettings& s,
               std::uint32_t* back_for_ms = nullptr) const noexcept;

 private:
  struct History {
    std::uint32_t since_ms = 0;  // start of the window, or of the cool-down
    std::uint16_t bounces = 0;
    bool cooling = false;
    std::uint32_t back_ms = 0;   // the latest return to the host (throttling counts from it)
  };
  using Block = std::array<History, kPagesPerBlock>;
  LazyArray<Block*> blocks_;       // each guarded by its block's mutex
  Ranked<std::mutex, LockRank::bounces> allocated_mutex_;
  std::vector<Block*> allocated_;  // what the destructor frees: the blocks that bounced

};

}  // namespace uhmm::detail
