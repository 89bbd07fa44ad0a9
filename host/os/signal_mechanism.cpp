#include "signal_mechanism.hpp"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>

#include <fmt/format.h>

#include "block_aligned_mapping.hpp"
#include "lock_order.hpp"
#include "managed_range.hpp"
#include "map_count.hpp"
#include "page_runs.hpp"
#include "signal_fault_handler.hpp"
#include "uhmm/detail/log.hpp"
#include "uhmm/detail/test_points.hpp"

namespace uhmm::detail {
namespace {

using signal_faults::Protection;

// Protection runs beyond the first of each range, over the whole process.
std::atomic<long> g_extra_runs{0};
long g_budget = 0;
int g_poison_fd = -1;  // an empty memfd: a page mapped from it raises SIGBUS
std::once_flag g_setup;

// Mappings kept for the fault path: isolated PROT_READ pages in a PROT_NONE
// region, two mappings each. At vm.max_map_count a protection change that
// must split a mapping fails with ENOMEM; releasing a slot (its page back to
// PROT_NONE merges three mappings into one) makes room, and the change is
// tried again. Refilled whenever a range is made or freed, before the range's
// own mappings: allocate runs out of mappings before faults do.
class MappingReserve {
 public:
  void init() noexcept {
    void* p = ::mmap(nullptr, (2 * kSlots + 1) * kPageSize, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
    if (p == MAP_FAILED) return;  // no reserve: a fault at the limit then fails as it would without
    base_ = static_cast<std::byte*>(p);
    refill();
  }
  void refill() noexcept {
    std::lock_guard lock(mutex_);
    for (std::size_t j = 0; j < kSlots && base_ != nullptr; ++j) {
      if (held_[j]) continue;
      if (::mprotect(slot(j), kPageSize, PROT_READ) != 0) return;  // at the limit: later
      held_[j] = true;
    }
  }
  // Gives two mappings back to the process; false when none is left.
  bool release() noexcept {
    std::lock_guard lock(mutex_);
    for (std::size_t j = 0; j < kSlots && base_ != nullptr; ++j)
      if (held_[j] && ::mprotect(slot(j), kPageSize, PROT_NONE) == 0) {
        held_[j] = false;
        return true;
      }
    return false;
  }

 private:
  static constexpr std::size_t kSlots = 32;
  std::byte* slot(std::size_t j) const noexcept { return base_ + (2 * j + 1) * kPageSize; }
  std::mutex mutex_;
  std::byte* base_ = nullptr;
  bool held_[kSlots] = {};
};

MappingReserve g_reserve;

void setup_process() {
  g_reserve.init();
  const long limit = max_map_count();
  // Half of what is left: the application and its libraries keep the rest.
  g_budget = std::max<long>(1024, (limit - count_mappings()) / 2);
  g_poison_fd = ::memfd_create("uhmm-poison", MFD_CLOEXEC);
  if (g_poison_fd < 0) log().error("signal fault mechanism: memfd for poisoned pages: {}", std::strerror(errno));
}

// Past the budget (or forced by a test): protections change a block at a time.
bool coarse_now() noexcept {
  return g_extra_runs.load(std::memory_order_relaxed) > g_budget ||
         test_points::signal_coarse.load(std::memory_order_relaxed);
}

int prot_bits(std::uint8_t p) {
  switch (p) {
    case signal_faults::kRead: return PROT_READ;
    case signal_faults::kReadWrite:
    case signal_faults::kPoison: return PROT_READ | PROT_WRITE;
    default: return PROT_NONE;
  }
}

}  // namespace

// One range: the application's view, the alias, and each page's protection.
class SignalMapping final : public RangeMapping {
 public:
  SignalMapping(std::uint32_t queue, int event_fd, std::size_t bytes) {
    bytes_ = bytes;
    npages_ = bytes / kPageSize;
    const int fd = ::memfd_create("uhmm-managed-range", MFD_CLOEXEC);
    if (fd < 0) throw Error(Errc::system_error, fmt::format("memfd_create for a managed range: {}", std::strerror(errno)));
    std::string failed;
    if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0) failed = fmt::format("ftruncate: {}", std::strerror(errno));
    try {
      if (failed.empty()) base_ = map_block_aligned(bytes, PROT_NONE);
    } catch (...) {
      ::close(fd);
      throw;
    }
    // The mappings keep the memfd alive: the descriptor is not kept, so ranges
    // cost no file descriptors.
    bool out_of_memory = false;  // what ran out: host memory or the process's mappings
    auto mapping_failed = [&](const char* what) {
      out_of_memory = errno == ENOMEM;
      failed = fmt::format("mmap of {}: {}", what, describe_mapping_failure(errno));
    };
    // Open from the start: never-touched pages are holes of the memfd, and
    // system calls on them work (only device pages are closed to the kernel).
    if (failed.empty() &&
        ::mmap(base_, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_NORESERVE, fd, 0) == MAP_FAILED)
      mapping_failed("the application's view");
    void* alias = MAP_FAILED;
    if (failed.empty()) {
      alias = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
      if (alias == MAP_FAILED) mapping_failed("the alias");
    }
    ::close(fd);
    void* prot = MAP_FAILED;
    if (failed.empty()) {
      prot = ::mmap(nullptr, npages_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (prot == MAP_FAILED) mapping_failed("the protection table");
    }
    // Children of fork() do not inherit managed ranges (as in userfaultfd mode).
    if (failed.empty() && (::madvise(base_, bytes, MADV_DONTFORK) != 0 || ::madvise(alias, bytes, MADV_DONTFORK) != 0))
      failed = fmt::format("madvise(MADV_DONTFORK): {}", std::strerror(errno));
    if (failed.empty()) {
      alias_ = static_cast<std::byte*>(alias);
      prot_ = static_cast<std::uint8_t*>(prot);  // zeros: every page open (stored()), one run
      try {
        signal_faults::add_range({reinterpret_cast<std::uintptr_t>(base_),
                                  reinterpret_cast<std::uintptr_t>(base_) + bytes, queue, event_fd, prot_});
        return;
      } catch (const std::bad_alloc&) {
        failed = "no memory to register it with the SIGSEGV handler";
      }
    }
    if (base_ != nullptr) ::munmap(base_, bytes);
    if (alias != MAP_FAILED) ::munmap(alias, bytes);
    if (prot != MAP_FAILED) ::munmap(prot, npages_);
    const std::string message =
        fmt::format("setting up a {}-byte managed range for the signal fault mechanism failed: {}", bytes, failed);
    if (out_of_memory) throw OutOfMemory(message);
    throw Error(Errc::system_error, message);
  }

  ~SignalMapping() override {
    // After this no handler looks at the range, and its waiting threads retry
    // (and find it unmapped, as after a userfaultfd range is unregistered).
    signal_faults::remove_range(reinterpret_cast<std::uintptr_t>(base_));
    g_extra_runs.fetch_sub(runs_ - 1);
    ::munmap(base_, bytes_);
    ::munmap(alias_, bytes_);
    ::munmap(prot_, npages_);
    g_reserve.refill();  // what the faults at the limit spent
  }

  std::byte* alias(std::size_t page) const noexcept { return alias_ + page * kPageSize; }
  // Pages of the run the memfd holds (mincore of the alias): a hole is not
  // resident, a page written or read since its hole was punched is.
  int resident(std::size_t first, std::size_t count, std::uint8_t* out) const noexcept {
    if (::mincore(alias(first), count * kPageSize, out) != 0) return errno;
    for (std::size_t i = 0; i < count; ++i) out[i] &= 1;
    return 0;
  }
  std::uint8_t protection(std::size_t page) const noexcept {
    return signal_faults::from_stored(std::atomic_ref<std::uint8_t>(prot_[page]).load(std::memory_order_relaxed));
  }

  // Gives pages [first, first + count) the protection `to`; the caller holds
  // their LOCKED bits. `may_defer`: an upgrade that would split a run may be
  // left undone while the process is coarse (the page stays protected and the
  // fault service opens it, with its whole block, when it is touched).
  int set(ManagedRange& range, std::size_t first, std::size_t count, std::uint8_t to, bool may_defer) noexcept {
    std::lock_guard lock(mutex_);
    const bool coarse = coarse_now();
    if (coarse && may_defer && to == signal_faults::kReadWrite && !signal_faults::on_service_thread() &&
        run_delta(first, count, to) > 0)
      return 0;
    if (const int err = apply(first, count, to); err != 0) return err;
    if (coarse && to != signal_faults::kReadWrite && to != signal_faults::kPoison) widen(range, first, count, to);
    return 0;
  }

  // Opens the closed pages of a held run. Their protection, read without
  // mutex_, is what stays: only their holder (the caller) changes it.
  int open_held(ManagedRange& range, std::size_t first, std::size_t count) noexcept {
    const auto closed = [&](std::size_t p) {
      const std::uint8_t now = protection(p);
      return now != signal_faults::kReadWrite && now != signal_faults::kPoison;
    };
    int err = 0;
    for_each_run(first, first + count, closed, [&](std::size_t p, std::size_t n) {
      if (err == 0) err = set(range, p, n, signal_faults::kReadWrite, /*may_defer=*/false);
    });
    return err;
  }

 private:
  // Change in the number of runs if [first, first + count) became `to`.
  long run_delta(std::size_t first, std::size_t count, std::uint8_t to) const noexcept {
    long before = 0, after = 0;
    const std::size_t lo = first > 0 ? first - 1 : 0;
    const std::size_t hi = std::min(first + count, npages_ - 1);  // boundaries i|i+1 for i in [lo, hi)
    for (std::size_t i = lo; i < hi; ++i) {
      before += protection(i) != protection(i + 1);
      const std::uint8_t a = i >= first && i < first + count ? to : protection(i);
      const std::uint8_t b = i + 1 >= first && i + 1 < first + count ? to : protection(i + 1);
      after += a != b;
    }
    return after - before;
  }

  // Under mutex_: the system calls, then the table and the run count. A call
  // that found the process at vm.max_map_count is tried again with mappings
  // from the reserve.
  int apply(std::size_t first, std::size_t count, std::uint8_t to) noexcept {
    int err;
    while ((err = change(first, count, to)) == ENOMEM && g_reserve.release()) {
    }
    if (err != 0) return err;
    const long delta = run_delta(first, count, to);
    for (std::size_t p = first; p < first + count; ++p)
      std::atomic_ref<std::uint8_t>(prot_[p])
          .store(signal_faults::stored(static_cast<Protection>(to)), std::memory_order_relaxed);
    runs_ += delta;
    g_extra_runs.fetch_add(delta, std::memory_order_relaxed);
    return 0;
  }

  // The system calls that give [first, first + count) the protection `to`.
  int change(std::size_t first, std::size_t count, std::uint8_t to) noexcept {
    std::byte* at = base_ + first * kPageSize;
    const std::size_t len = count * kPageSize;
    bool poisoned = false;
    for (std::size_t p = first; p < first + count && !poisoned; ++p) poisoned = protection(p) == signal_faults::kPoison;
    if (to == signal_faults::kPoison) {
      if (g_poison_fd < 0) return ENOTSUP;
      if (::mmap(at, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, g_poison_fd, 0) == MAP_FAILED) return errno;
      ::madvise(at, len, MADV_DONTFORK);
    } else if (poisoned) {
      // Back from poison: map the memfd's pages here again (a second mapping
      // of the alias's pages, which mremap makes from a shared mapping).
      if (::mremap(alias(first), 0, len, MREMAP_MAYMOVE | MREMAP_FIXED, at) == MAP_FAILED) return errno;
      ::madvise(at, len, MADV_DONTFORK);
      if (::mprotect(at, len, prot_bits(to)) != 0) return errno;
    } else if (::mprotect(at, len, prot_bits(to)) != 0) {
      return errno;
    }
    return 0;
  }

  // Coarse: lowers every unlocked page of the run's blocks to `to` too, so a
  // block holds one protection instead of one per page. Lowering is always
  // safe (an access faults and the fault service opens the page again);
  // locked pages are left to their holders (a migration's copy reads them,
  // a launch's kernel reaches the pages it holds in place). Under the block
  // mutex from the LOCKED check to the mprotect: a page locked in between
  // would be closed under its holder, whose worker then faults and waits
  // for that holder (issue 13 item 8).
  void widen(ManagedRange& range, std::size_t first, std::size_t count, std::uint8_t to) noexcept {
    auto& table = range.table();
    for (std::size_t block = MirrorTable::block_of(first); block <= MirrorTable::block_of(first + count - 1); ++block) {
      test_points::at(test_points::signal_widen);
      std::size_t failed_at = 0, failed = 0;
      int err = 0;
      {
        std::lock_guard block_lock(table.block_mutex(block));
        const auto lower = [&](std::size_t p) {
          const std::uint8_t now = protection(p);
          return (p < first || p >= first + count) && now > to && now != signal_faults::kPoison &&
                 !table.entry(p).locked();
        };
        for_each_run(table.block_begin(block), table.block_end(block), lower, [&](std::size_t p, std::size_t n) {
          const int e = apply(p, n, to);
          if (e == 0 || err != 0) return;
          err = e;
          failed_at = p;
          failed = n;
        });
      }
      if (err != 0)  // the pages stay as they were: lowering is only an economy
        log().warn("signal fault mechanism: lowering {} pages at {} failed: {}", failed,
                   static_cast<void*>(base_ + failed_at * kPageSize), std::strerror(err));
    }
  }

  std::size_t npages_ = 0;
  std::byte* alias_ = nullptr;
  std::uint8_t* prot_ = nullptr;
  // mprotect, table and run count of this range change together
  Ranked<std::mutex, LockRank::protection> mutex_;
  long runs_ = 1;
};

namespace {

SignalMapping& mapping_of(ManagedRange& range) noexcept { return static_cast<SignalMapping&>(range.mapping()); }

}  // namespace

SignalMechanism::SignalMechanism() {
  std::call_once(g_setup, setup_process);
  signal_faults::install();
  event_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (event_fd_ < 0)
    throw Error(Errc::system_error, fmt::format("eventfd for the signal fault mechanism: {}", std::strerror(errno)));
  queue_ = signal_faults::new_queue();
}

SignalMechanism::~SignalMechanism() {
  // Every range was removed (and with it every handler that could post here).
  ::close(event_fd_);
}

std::unique_ptr<RangeMapping> SignalMechanism::map_range(std::size_t bytes) {
  g_reserve.refill();  // first: the new range gets what the reserve leaves
  return std::make_unique<SignalMapping>(queue_, event_fd_, bytes);
}

std::size_t SignalMechanism::read_faults(FaultEvent* out, std::size_t max) noexcept {
  // Drain the wake-up first: a fault posted after this read kicks it again.
  std::uint64_t count;
  [[maybe_unused]] const ssize_t n = ::read(event_fd_, &count, sizeof count);
  return signal_faults::take(queue_, out, max);
}

bool SignalMechanism::empty_page_closed(ManagedRange& range, std::size_t page) const noexcept {
  return mapping_of(range).protection(page) == signal_faults::kNone;
}

int SignalMechanism::host_data(ManagedRange& range, std::size_t first, std::size_t count,
                               std::uint8_t* present) noexcept {
  return mapping_of(range).resident(first, count, present);
}

int SignalMechanism::install_zeros(ManagedRange& range, std::size_t first, std::size_t count) noexcept {
  // Opening a closed never-touched page: it is a hole in the memfd (never
  // written, or dropped with its hole punched) and shows zeros, or it holds
  // what was written while it was open, which stays.
  SignalMapping& m = mapping_of(range);
  for (std::size_t p = first; p < first + count; ++p)
    if (m.protection(p) != signal_faults::kNone) return EEXIST;
  return m.set(range, first, count, signal_faults::kReadWrite, /*may_defer=*/false);
}

int SignalMechanism::install_copy(ManagedRange& range, std::size_t first, std::size_t count, const std::byte* src,
                                  std::size_t* copied) noexcept {
  SignalMapping& m = mapping_of(range);
  std::size_t n = 0;
  while (n < count && (m.protection(first + n) == signal_faults::kNone ||
                       m.protection(first + n) == signal_faults::kPoison))
    ++n;
  int err = 0;
  if (n > 0) {
    std::memcpy(m.alias(first), src, n * kPageSize);
    err = m.set(range, first, n, signal_faults::kReadWrite, /*may_defer=*/true);
  }
  if (copied != nullptr) *copied = err == 0 ? n * kPageSize : 0;
  return err != 0 ? err : n < count ? EEXIST : 0;
}

int SignalMechanism::write_protect(ManagedRange& range, std::size_t first, std::size_t count, bool protect) noexcept {
  const int err = mapping_of(range).set(range, first, count, protect ? signal_faults::kRead : signal_faults::kReadWrite,
                                        /*may_defer=*/!protect);
  // Never wakes (FaultMechanism): the holder unlocks and wakes these pages
  // itself, once the mirror is final.
  return err;
}

int SignalMechanism::drop(ManagedRange& range, std::size_t first, std::size_t count) noexcept {
  SignalMapping& m = mapping_of(range);
  // Protect first: nobody may see the hole the punch leaves as zeros.
  if (const int err = m.set(range, first, count, signal_faults::kNone, false); err != 0) return err;
  // The hole punch frees the memory. mlockall() locks uhmm's alias too, and
  // MADV_REMOVE refuses locked memory (EINVAL): the alias is uhmm's own
  // window, unlocked again (the application's view keeps its lock).
  void* alias = m.alias(first);
  const std::size_t len = count * kPageSize;
  if (::madvise(alias, len, MADV_REMOVE) == 0) return 0;
  if (errno != EINVAL || ::munlock(alias, len) != 0) return errno;
  return ::madvise(alias, len, MADV_REMOVE) == 0 ? 0 : errno;
}

int SignalMechanism::poison(ManagedRange& range, std::size_t first, std::size_t count) noexcept {
  return mapping_of(range).set(range, first, count, signal_faults::kPoison, false);
}

int SignalMechanism::open_held(ManagedRange& range, std::size_t first, std::size_t count) noexcept {
  return mapping_of(range).open_held(range, first, count);
}

int SignalMechanism::wake(std::uintptr_t addr, std::size_t len) noexcept {
  signal_faults::wake(queue_, addr, len);
  return 0;
}

bool SignalMechanism::coarse() const noexcept { return coarse_now(); }

long SignalMechanism::extra_runs() noexcept { return g_extra_runs.load(); }
long SignalMechanism::run_budget() noexcept { return g_budget; }

}  // namespace uhmm::detail
