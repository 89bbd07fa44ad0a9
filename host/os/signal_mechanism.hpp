// The signal fault mechanism, for where userfaultfd is refused: a managed range
// is a MAP_SHARED mapping of a memfd (the application's view) plus a second
// read-write mapping of the same memfd (the alias) through which only uhmm
// fills and reads pages. Device pages are PROT_NONE in the application's
// view, write-protected runs PROT_READ, host and never-touched pages
// PROT_READ|PROT_WRITE (system calls work on them; written_pages.hpp tells
// which never-touched pages were written); an access that the protection
// refuses raises SIGSEGV,
// which signal_fault_handler posts to the fault service like a userfaultfd
// event. A page that could not come back is mapped beyond the end of an empty
// memfd, so that accesses raise SIGBUS as with UFFDIO_POISON.
//
// Each mprotect can split a VMA, and a process has vm.max_map_count of them.
// The mechanism counts the protection runs of every range; past a budget
// (half of what the process had left when the first context started) it turns
// coarse: write-protecting or dropping a run also lowers the unlocked pages of
// its 2 MiB blocks, other threads' upgrades that would split a run are left
// for the fault service, and the fault service resolves a fault by opening
// the whole block (DESIGN.md, "The signal fault mechanism"). Lowering skips
// locked pages: only a page's holder changes its protection, so a holder
// that reads a held page's protection reads what stays (open_held).
#pragma once

#include <cstdint>

#include "fault_mechanism.hpp"

namespace uhmm::detail {

class SignalMapping;

class SignalMechanism final : public FaultMechanism {
 public:
  SignalMechanism();  // installs the SIGSEGV handler; throws uhmm::Error
  ~SignalMechanism() override;

  const char* name() const noexcept override { return "signal"; }
  std::unique_ptr<RangeMapping> map_range(std::size_t bytes) override;
  int poll_fd() const noexcept override { return event_fd_; }
  std::size_t read_faults(FaultEvent* out, std::size_t max) noexcept override;
  int install_zeros(ManagedRange& range, std::size_t first, std::size_t count) noexcept override;
  int install_copy(ManagedRange& range, std::size_t first, std::size_t count, const std::byte* src,
                   std::size_t* copied) noexcept override;
  int write_protect(ManagedRange& range, std::size_t first, std::size_t count, bool protect) noexcept override;
  int drop(ManagedRange& range, std::size_t first, std::size_t count) noexcept override;
  bool has_poison() const noexcept override { return true; }
  int poison(ManagedRange& range, std::size_t first, std::size_t count) noexcept override;
  int open_held(ManagedRange& range, std::size_t first, std::size_t count) noexcept override;
  int wake(std::uintptr_t addr, std::size_t len) noexcept override;
  bool coarse() const noexcept override;
  bool closes_idle_host_pages() const noexcept override { return true; }
  bool opens_empty_pages() const noexcept override { return true; }
  bool empty_page_closed(ManagedRange& range, std::size_t page) const noexcept override;
  int host_data(ManagedRange& range, std::size_t first, std::size_t count, std::uint8_t* present) noexcept override;

  // Protection runs beyond one per range, over every range of the process,
  // and the budget past which mappings turn coarse (tests read them).
  static long extra_runs() noexcept;
  static long run_budget() noexcept;

 private:
  std::uint32_t queue_;
  int event_fd_ = -1;
};

}  // namespace uhmm::detail
