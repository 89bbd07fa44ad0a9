// The userfaultfd fault mechanism: ranges are anonymous private mappings
// registered for MISSING and WP faults; the kernel queues faults on the
// descriptor and the ioctls map, protect, poison and wake (DESIGN.md, "The
// CPU fault").
#pragma once

#include "fault_mechanism.hpp"
#include "userfaultfd.hpp"

namespace uhmm::detail {

class UserfaultfdMechanism final : public FaultMechanism {
 public:
  UserfaultfdMechanism() = default;  // throws Errc::userfaultfd_unavailable

  const char* name() const noexcept override { return "userfaultfd"; }
  std::unique_ptr<RangeMapping> map_range(std::size_t bytes) override;
  int poll_fd() const noexcept override { return uffd_.fd(); }
  std::size_t read_faults(FaultEvent* out, std::size_t max) noexcept override;
  int install_zeros(ManagedRange& range, std::size_t first, std::size_t count) noexcept override;
  int install_copy(ManagedRange& range, std::size_t first, std::size_t count, const std::byte* src,
                   std::size_t* copied) noexcept override;
  int write_protect(ManagedRange& range, std::size_t first, std::size_t count, bool protect) noexcept override;
  int drop(ManagedRange& range, std::size_t first, std::size_t count) noexcept override;
  bool has_poison() const noexcept override { return uffd_.has_poison(); }
  int poison(ManagedRange& range, std::size_t first, std::size_t count) noexcept override;
  int wake(std::uintptr_t addr, std::size_t len) noexcept override;
  bool follows_mapping_changes() const noexcept override { return uffd_.has_mapping_events(); }
  // Mapped or swapped out (/proc/self/pagemap).
  int host_data(ManagedRange& range, std::size_t first, std::size_t count, std::uint8_t* present) noexcept override;

  // The descriptor, for what only userfaultfd mode does: following the
  // application's mapping changes (mapping_events.hpp).
  Userfaultfd& uffd() noexcept { return uffd_; }

 private:
  Userfaultfd uffd_;
};

}  // namespace uhmm::detail
