// A managed range: a 2 MiB-aligned mapping whose faults reach the fault service
// (its RangeMapping, made by the context's FaultMechanism), and its mirror
// page table. Operations on a range count
// themselves in, so that free() can wait until none is left.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>

#include "advice_table.hpp"
#include "fault_mechanism.hpp"
#include "lock_order.hpp"
#include "mirror_table.hpp"
#include "page_bounces.hpp"
#include "page_intervals.hpp"
#include "uhmm/types.hpp"

namespace uhmm::detail {

class ManagedRange {
 public:
  // Maps `bytes` (a multiple of kPageSize) through the mechanism. Throws uhmm::Error.
  ManagedRange(std::uint32_t id, std::size_t bytes, FaultMechanism& mechanism);
  // Unmaps what the application has not unmapped itself (waking any thread
  // still faulting here). Pre: no operation is in flight.
  ~ManagedRange();
  ManagedRange(const ManagedRange&) = delete;
  ManagedRange& operator=(const ManagedRange&) = delete;

  std::uint32_t id() const noexcept { return id_; }
  std::byte* base() const noexcept { return base_; }
  std::size_t bytes() const noexcept { return bytes_; }
  std::size_t npages() const noexcept { return table_.npages(); }
  std::byte* page_address(std::size_t page) const noexcept { return base_ + page * kPageSize; }
  std::size_t page_of(const void* addr) const noexcept {
    return static_cast<std::size_t>(static_cast<const std::byte*>(addr) - base_) >> kPageShift;
  }
  bool contains(const void* addr) const noexcept {
    const auto* p = static_cast<const std::byte*>(addr);
    return p >= base_ && p < base_ + bytes_;
  }
  MirrorTable& table() noexcept { return table_; }
  RangeMapping& mapping() const noexcept { return *mapping_; }
  const MirrorTable& table() const noexcept { return table_; }
  // CPU-fault bounce histories (thrashing); guarded by the block mutexes.
  PageBounces& bounces() noexcept { return bounces_; }
  // Per-page advice (Context::advise); thread safe on its own.
  AdviceTable& advice() noexcept { return advice_; }
  const AdviceTable& advice() const noexcept { return advice_; }

  // Operation accounting (see RangeRegistry): begin under the registry lock.
  void begin_op() noexcept;
  void end_op() noexcept;
  void wait_idle() noexcept;
  bool idle() noexcept;

  // Pages the application unmapped (munmap, mremap) behind uhmm's back: they
  // are gone for good; calls on them fail and the range never unmaps them
  // again (something else may live there now). See mapping_events.hpp.
  void mark_unmapped(std::size_t first, std::size_t end);
  bool any_unmapped(std::size_t first, std::size_t end) const noexcept;
  bool all_unmapped(std::size_t first, std::size_t end) const noexcept;

 private:
  std::uint32_t id_;
  MirrorTable table_;
  PageBounces bounces_{table_.nblocks()};
  AdviceTable advice_;
  std::unique_ptr<RangeMapping> mapping_;
  std::byte* base_;
  std::size_t bytes_;
  Ranked<std::mutex, LockRank::range_ops> ops_mutex_;
  std::condition_variable_any ops_idle_;
  std::size_t ops_ = 0;
  mutable Ranked<std::mutex, LockRank::unmapped> unmapped_mutex_;
  PageIntervals unmapped_;
  std::atomic<bool> has_unmapped_{false};  // fast path: most ranges never lose a page
};

}  // namespace uhmm::detail
