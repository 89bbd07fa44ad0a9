// The mutex of one mirror-table block: a futex word that is unlocked when
// zero, so that a huge range's block locks can live in a lazily mapped array
// (lazy_array.hpp) and cost nothing until a block is first used.
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>

#include "lock_order.hpp"

namespace uhmm::detail {

class BlockMutex {
 public:
  void lock() noexcept {
    std::uint32_t seen = kUnlocked;
    if (word().compare_exchange_strong(seen, kLocked, std::memory_order_acquire)) return;
    if (seen != kContended) seen = word().exchange(kContended, std::memory_order_acquire);
    while (seen != kUnlocked) {
      futex(FUTEX_WAIT_PRIVATE, kContended);
      seen = word().exchange(kContended, std::memory_order_acquire);
    }
  }
  bool try_lock() noexcept {
    std::uint32_t seen = kUnlocked;
    return word().compare_exchange_strong(seen, kLocked, std::memory_order_acquire);
  }
  void unlock() noexcept {
    if (word().exchange(kUnlocked, std::memory_order_release) == kContended) futex(FUTEX_WAKE_PRIVATE, 1);
  }

 private:
  enum : std::uint32_t { kUnlocked = 0, kLocked = 1, kContended = 2 };
  std::atomic_ref<std::uint32_t> word() noexcept { return std::atomic_ref<std::uint32_t>(word_); }
  void futex(int op, std::uint32_t value) noexcept {
    ::syscall(SYS_futex, &word_, op, value, nullptr, nullptr, 0);
  }

  alignas(std::atomic_ref<std::uint32_t>::required_alignment) std::uint32_t word_;
};

// As the mirror table holds it: ranked (lock_order.hpp). Still zero when unlocked.
using RankedBlockMutex = Ranked<BlockMutex, LockRank::block>;

}  // namespace uhmm::detail
