// The CPU fault service: one thread reading faults in batches from the fault
// mechanism (userfaultfd or signal) and resolving each by its page's state (the kernel's do_swap_page +
// migrate_to_ram for device-private pages).
//
// Cost on these machines is thread hand-offs (DESIGN.md), so the service
// resolves as much as it can per wake-up: all events pending are read at once,
// coalesced per 2 MiB block, and with fault-ahead a fault on a device page
// brings back every unlocked device page of its block in one copy, and a first
// touch maps zeros over the whole block's never-touched pages.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <thread>
#include <vector>

#include "fault_mechanism.hpp"
#include "mapping_events.hpp"
#include "page_bounces.hpp"

namespace uhmm::detail {

class Mm;
class ManagedRange;

class FaultService {
 public:
  explicit FaultService(Mm& ctx);
  ~FaultService();  // stops the thread
  FaultService(const FaultService&) = delete;
  FaultService& operator=(const FaultService&) = delete;

  // Pages were unlocked: re-run the parked faults (thread-safe, non-blocking).
  void kick() noexcept;

 private:
  struct Fault {
    std::uintptr_t address;
    bool write_protect;  // a store to a write-protected page
    std::uint64_t read_ns = 0;  // when the service read it: its latency starts here
  };

  void run() noexcept;
  void reserve_storage() noexcept;  // on the service thread, at its start
  // Reads every message pending: faults go to `into`, mapping events are
  // applied in the order read (mapping_events.hpp): at once, unless one is
  // being applied already. Returns how many were read.
  std::size_t read_messages(std::vector<Fault>& into) noexcept;
  // The EAGAIN hook (userfaultfd.hpp): an ioctl of this thread met an unread
  // event; read it, keeping the faults for the next batch.
  static void pump(void* self) noexcept;
  void queue_mapping_event(const FaultEvent& event) noexcept;
  // Applies the queued mapping events in order, unless called while one is
  // being applied (that call's caller applies them next).
  void apply_mapping_events() noexcept;
  void wake_unlocked_parked() noexcept;
  // Test point (test_points::fault_batch_min): reads on until the batch
  // begun holds that many faults.
  void hold_for_test_batch(std::vector<Fault>& batch) noexcept;
  void resolve(std::vector<Fault>& faults) noexcept;
  // Resolves the faults of one block (sorted, same range and block).
  // Thrashing bookkeeping for the faulting pages that came back (all but `failed`).
  void record_bounces(ManagedRange& range, std::size_t block, std::span<const std::size_t> faulted,
                      std::span<const std::size_t> failed, const ThrashingSettings& thrashing,
                      std::uint32_t now_ms) noexcept;
  void resolve_block(ManagedRange& range, std::size_t block, const Fault* faults, std::size_t count) noexcept;

  Mm& ctx_;
  int event_fd_ = -1;  // kick() and stop
  std::atomic<bool> stop_{false};
  std::vector<Fault> parked_;                // faults on locked pages (service thread only)
  std::atomic<std::size_t> parked_count_{0};  // its size, for the unlock listener
  std::vector<FaultEvent> events_;
  std::vector<Fault> batch_;   // the faults being resolved (service thread only)
  std::vector<Fault> pumped_;  // faults read by pump(), resolved in the next batch
  std::vector<std::size_t> held_;  // resolve_block's pages to unlock
  struct PageLists {
    std::vector<std::size_t> zero, back, wake, unprotect, faulting_back, discarded_held, collapse, reopen_read_only;
    std::array<std::vector<std::size_t>*, 8> all() noexcept {
      return {&zero, &back, &wake, &unprotect, &faulting_back, &discarded_held, &collapse, &reopen_read_only};
    }
  } lists_;  // resolve_block's, reserved at start
  int reading_depth_ = 0;      // read_messages() nests through pump() inside an event's ioctls
  std::vector<FaultEvent> unapplied_;  // mapping events read, not applied yet, in order
  std::size_t next_unapplied_ = 0;
  bool applying_ = false;  // apply_mapping_events() is on the stack
  std::unique_ptr<MappingEvents> mapping_;  // userfaultfd with mapping events only
  std::byte* staging_ = nullptr;
  std::thread thread_;
};

}  // namespace uhmm::detail
