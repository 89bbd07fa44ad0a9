#include "fault_service.hpp"

#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <iterator>

#include <fmt/format.h>

#include "migration.hpp"
#include "density_prefetch.hpp"
#include "page_runs.hpp"
#include "read_mostly.hpp"
#include "signal_fault_handler.hpp"
#include "userfaultfd.hpp"
#include "userfaultfd_mechanism.hpp"
#include "uhmm/detail/log.hpp"
#include "uhmm/detail/signal_mask.hpp"
#include "uhmm/detail/test_points.hpp"

namespace uhmm::detail {
namespace {

constexpr std::size_t kMaxEventsPerRead = 256;
constexpr std::size_t kReservedFaults = 4096;  // faults queued or parked before a queue must grow

// Appends without allocating while the reserved capacity lasts; false when
// growing it failed.
template <class T>
bool queue(std::vector<T>& v, const T& item) noexcept {
  try {
    v.push_back(item);
    return true;
  } catch (const std::bad_alloc&) {
    return false;
  }
}

// The pages of [lo, hi), a block's, that the application unmapped: not the
// range's any more (another range may have been allocated there, sharing the
// userfaultfd), so fault-ahead leaves them alone.
BlockPages unmapped_in(const ManagedRange& range, std::size_t lo, std::size_t hi) noexcept {
  BlockPages out;
  if (range.any_unmapped(lo, hi))
    for (std::size_t p = lo; p < hi; ++p) out[p - lo] = range.any_unmapped(p, p + 1);
  return out;
}

void sort_unique(std::vector<std::size_t>& v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
}

}  // namespace

FaultService::FaultService(Mm& ctx) : ctx_(ctx), events_(kMaxEventsPerRead) {
  // Mapping events are a userfaultfd feature: only that mechanism reports them.
  if (ctx.mechanism->follows_mapping_changes())
    if (auto* u = dynamic_cast<UserfaultfdMechanism*>(ctx.mechanism.get()))
      mapping_ = std::make_unique<MappingEvents>(ctx, u->uffd());
  event_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (event_fd_ < 0)
    throw Error(Errc::system_error, fmt::format("eventfd for the fault service: {}", std::strerror(errno)));
  staging_ = ctx_.staging().acquire();
  if (staging_ == nullptr) {
    ::close(event_fd_);
    throw OutOfMemory("no host memory for the fault service's staging buffer");
  }
  ctx_.unlocks.set_listener([this] {
    if (parked_count_.load() > 0) kick();
  });
  thread_ = spawn_library_thread([this] { run(); });
}

FaultService::~FaultService() {
  stop_.store(true);
  kick();
  thread_.join();
  ctx_.unlocks.set_listener(nullptr);
  ctx_.staging().release(staging_);
  ::close(event_fd_);
}

void FaultService::kick() noexcept {
  const std::uint64_t one = 1;
  // A full counter (EAGAIN) means a wake-up is already pending.
  [[maybe_unused]] const ssize_t n = ::write(event_fd_, &one, sizeof one);
}

std::size_t FaultService::read_messages(std::vector<Fault>& into) noexcept {
  // The outermost read is bracketed by the gate: a user's call that follows
  // its own munmap/madvise waits until the event it raised is applied.
  const bool outermost = reading_depth_++ == 0;
  if (outermost) ctx_.ranges.gate().begin();
  // Each nesting level reads into its own buffer: an event being applied may
  // pump while the level above still walks its events.
  FaultEvent local[16];
  FaultEvent* events = outermost ? events_.data() : local;
  const std::size_t max = outermost ? events_.size() : std::size(local);
  FaultMechanism& mechanism = *ctx_.mechanism;
  std::size_t total = 0;
  for (;;) {
    const std::size_t n = mechanism.read_faults(events, max);
    const std::uint64_t read_ns = n > 0 ? now_ns() : 0;
    for (std::size_t i = 0; i < n; ++i) {
      const FaultEvent& e = events[i];
      if (e.kind != FaultEvent::Kind::fault) {
        if (mapping_) queue_mapping_event(e);
        continue;
      }
      if (!queue(into, {e.address, e.write_protect, read_ns})) {
        // No room: its thread retries the access and faults again, rather
        // than sleep with its fault forgotten.
        mechanism.wake(e.address, kPageSize);
        continue;
      }
      if (e.write_protect) AtomicCounters::add(ctx_.counters.faults_write_protect, 1);
    }
    total += n;
    if (n < max) break;
  }
  apply_mapping_events();
  if (outermost) ctx_.ranges.gate().end();
  --reading_depth_;
  return total;
}

void FaultService::queue_mapping_event(const FaultEvent& event) noexcept {
  try {
    unapplied_.push_back(event);
  } catch (const std::bad_alloc&) {
    log().error("fault service: no memory to queue a mapping event; applying it out of order");
    mapping_->apply(event);
  }
}

void FaultService::apply_mapping_events() noexcept {
  // In the order read, one at a time. An event read while another is being
  // applied (by its copy's EAGAIN pump) waits its turn: applied at once, it
  // would overtake events an outer read still holds (the UNMAP of a moved
  // part, applied before that part's REMAP, dropped the device pages the REMAP
  // was to copy). Reading it was all its ioctl needed.
  if (applying_) return;
  applying_ = true;
  while (next_unapplied_ < unapplied_.size()) mapping_->apply(unapplied_[next_unapplied_++]);
  unapplied_.clear();
  next_unapplied_ = 0;
  applying_ = false;
}

void FaultService::pump(void* self) noexcept {
  auto& service = *static_cast<FaultService*>(self);
  if (service.read_messages(service.pumped_) == 0) ::sched_yield();  // read by now; the changer runs next
}

void FaultService::reserve_storage() noexcept {
  // The fault path's storage, reserved up front and by this thread: near the
  // process's limits (memory, vm.max_map_count) serving a fault allocates
  // nothing in the common case and never drops one (read_messages,
  // resolve_block). Allocating here also gives the thread its malloc arena
  // now: glibc makes one on a thread's first allocation, with a new mapping,
  // and a thread that first allocates at vm.max_map_count can allocate nothing.
  try {
    batch_.reserve(kReservedFaults);
    pumped_.reserve(kReservedFaults);
    unapplied_.reserve(2 * kMaxEventsPerRead);
    parked_.reserve(kReservedFaults);
    held_.reserve(5 * kPagesPerBlock);
    for (auto* list : lists_.all()) list->reserve(2 * kPagesPerBlock);
  } catch (const std::bad_alloc&) {
    log().warn("fault service: no memory to reserve its queues; faults are served with what can be had");
  }
}

void FaultService::run() noexcept {
  ::pthread_setname_np(::pthread_self(), "uhmm-faults");  // its track's name in traces and debuggers
  // A fault this thread took on managed memory would wait on itself.
  signal_faults::mark_service_thread();
  // With mapping events, this thread's own ioctls may meet an unread event
  // (EAGAIN): it reads it itself (userfaultfd.hpp).
  if (mapping_) Userfaultfd::set_thread_eagain_hook(&FaultService::pump, this);
  reserve_storage();
  FaultMechanism& mechanism = *ctx_.mechanism;
  pollfd fds[2] = {{mechanism.poll_fd(), POLLIN, 0}, {event_fd_, POLLIN, 0}};
  std::vector<Fault>& batch = batch_;
  const auto spin = std::chrono::microseconds(ctx_.options.fault_spin_us);
  auto read_faults = [&] { return read_messages(batch); };

  while (!stop_.load(std::memory_order_relaxed)) {
    try {
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        log().critical("fault service: poll failed: {}", std::strerror(errno));
        return;
      }
      if (fds[1].revents & POLLIN) {
        std::uint64_t count;
        [[maybe_unused]] const ssize_t n = ::read(event_fd_, &count, sizeof count);
        if (stop_.load()) break;
        wake_unlocked_parked();
      }
      if (fds[0].revents & POLLIN) read_faults();
      if (batch.empty()) batch.swap(pumped_);  // faults an event's ioctls read
      hold_for_test_batch(batch);
      while (!batch.empty()) {
        AtomicCounters::add(ctx_.counters.fault_wakeups, 1);
        resolve(batch);
        batch.clear();
        batch.swap(pumped_);  // faults read while an ioctl waited for an event
        // Faults tend to come in trains: poll a little before sleeping again.
        const auto deadline = std::chrono::steady_clock::now() + spin;
        while (batch.empty() && std::chrono::steady_clock::now() < deadline) read_faults();
        if (batch.empty()) batch.swap(pumped_);
      }
    } catch (const std::exception& e) {
      // Only allocation can throw here; the faults in flight stay unresolved
      // and are read again from parked_ or the kernel on the next round.
      log().error("fault service: {}", e.what());
      batch.clear();
    }
  }
}

void FaultService::hold_for_test_batch(std::vector<Fault>& batch) noexcept {
  const std::size_t min = test_points::fault_batch_min.load(std::memory_order_relaxed);
  if (min == 0 || batch.empty()) return;
  pollfd fd{ctx_.mechanism->poll_fd(), POLLIN, 0};
  // A short poll, so that a stopping service is never held here.
  while (batch.size() < min && !stop_.load()) {
    if (::poll(&fd, 1, 10) > 0) read_messages(batch);
  }
}

void FaultService::wake_unlocked_parked() noexcept {
  // A parked fault's event is not resolved again: its page may have been dealt
  // with since (and the thread woken by the unlock), so acting on the old event
  // could move a page nobody is touching. Its thread is woken instead and, if
  // the page is still missing, faults again with a fresh event.
  std::size_t kept = 0;
  for (const Fault& f : parked_) {
    bool locked = false;
    if (RangeSpan span = ctx_.ranges.find(reinterpret_cast<const void*>(f.address))) {
      auto& table = span.range().table();
      const std::size_t page = span.range().page_of(reinterpret_cast<const void*>(f.address));
      std::lock_guard lock(table.block_mutex(MirrorTable::block_of(page)));
      locked = table.entry(page).locked();
    }
    if (locked)
      parked_[kept++] = f;
    else
      ctx_.mechanism->wake(f.address, kPageSize);
  }
  parked_count_.fetch_sub(parked_.size() - kept);
  parked_.resize(kept);
}

void FaultService::resolve(std::vector<Fault>& faults) noexcept {
  std::sort(faults.begin(), faults.end(), [](const Fault& a, const Fault& b) { return a.address < b.address; });
  // A fault belongs to `range` while its page is a live one of it: an address
  // in a hole the application unmapped may be another range's now (one
  // allocated into the hole, sharing the userfaultfd), so it is looked up.
  const auto live_in = [](const ManagedRange& range, std::uintptr_t address) {
    const auto* a = reinterpret_cast<const void*>(address);
    return range.contains(a) && !range.any_unmapped(range.page_of(a), range.page_of(a) + 1);
  };
  std::size_t i = 0;
  while (i < faults.size()) {
    RangeSpan span = ctx_.ranges.find(reinterpret_cast<const void*>(faults[i].address));
    if (!span) {
      // No range here: one being freed (unregistering it wakes its faulting
      // threads), or memory the application grew a range into in place with
      // mremap, which stays registered: plain anonymous memory reads zeros.
      if (mapping_) mapping_->fault_outside_ranges(faults[i].address, faults[i].write_protect);
      ++i;
      continue;
    }
    ManagedRange& range = span.range();
    if (!live_in(range, faults[i].address)) {
      // A stale fault on a page the application unmapped since (and no range
      // was allocated there): its thread retries and gets what the address holds now.
      ctx_.mechanism->wake(faults[i].address, kPageSize);
      ++i;
      continue;
    }
    while (i < faults.size() && live_in(range, faults[i].address)) {
      const std::size_t block = MirrorTable::block_of(range.page_of(reinterpret_cast<const void*>(faults[i].address)));
      std::size_t j = i;
      while (j < faults.size() && live_in(range, faults[j].address) &&
             MirrorTable::block_of(range.page_of(reinterpret_cast<const void*>(faults[j].address))) == block)
        ++j;
      resolve_block(range, block, &faults[i], j - i);
      i = j;
    }
  }
}

void FaultService::record_bounces(ManagedRange& range, std::size_t block, std::span<const std::size_t> faulted,
                                  std::span<const std::size_t> failed, const ThrashingSettings& thrashing,
                                  std::uint32_t now_ms) noexcept {
  std::size_t detected = 0, cooling = 0;
  try {
    std::lock_guard lock(range.table().block_mutex(block));
    for (std::size_t p : faulted) {
      if (std::find(failed.begin(), failed.end(), p) != failed.end()) continue;
      switch (range.bounces().record(p, now_ms, thrashing)) {
        case PageBounces::Verdict::detected: ++detected; break;
        case PageBounces::Verdict::cooling: ++cooling; break;
        case PageBounces::Verdict::calm: break;
      }
    }
  } catch (const std::bad_alloc&) {
    return;  // no history for this block: it is just not detected
  }
  AtomicCounters::add(ctx_.counters.thrashing_pages_detected, detected);
  AtomicCounters::add(ctx_.counters.thrashing_faults, cooling);
  if (detected > 0)
    log().info("thrashing: {} page(s) of range {} in the block at {} came back to the host {} times within {} ms; "
               "fault-ahead leaves them for {} ms",
               detected, range.id(), static_cast<void*>(range.page_address(range.table().block_begin(block))),
               thrashing.bounces, thrashing.window_ms, thrashing.cooldown_ms);
}

void FaultService::resolve_block(ManagedRange& range, std::size_t block, const Fault* faults,
                                 std::size_t count) noexcept {
  auto& table = range.table();
  const std::size_t lo = table.block_begin(block);
  const std::size_t hi = table.block_end(block);
  FaultMechanism& mechanism = *ctx_.mechanism;
  // Coarse (the signal mechanism near its mapping budget): open the whole
  // block, so that it merges into one protection run again.
  const bool coarse = mechanism.coarse();
  const bool ahead = ctx_.policy.fault_ahead.load(std::memory_order_relaxed) || coarse;
  // Coarse mode wants whole blocks back (they merge into one protection run).
  const unsigned threshold = coarse ? 0 : ctx_.policy.prefetch_threshold.load(std::memory_order_relaxed);
  const bool open_block = ahead && mechanism.closes_idle_host_pages();
  // Signal mode: a never-touched page is open unless something closed it (a
  // migration's write-protect, coarse lowering); reopening it keeps its data.
  const bool open_empty = mechanism.opens_empty_pages();
  const auto reopens = [&](Residency r) { return r == Residency::System || (open_empty && r == Residency::Empty); };
  const ThrashingSettings thrashing = ctx_.policy.thrashing();
  const std::uint32_t now_ms = thrashing.enabled ? monotonic_ms() : 0;
  std::size_t not_prefetched = 0, kept_by_advice = 0;
  // The service's own lists, reused: their capacity stays from one fault to the next.
  auto& [zero, back, wake, unprotect, faulting_back, discarded_held, collapse, reopen_read_only] = lists_;
  for (auto* list : lists_.all()) list->clear();
  std::size_t zero_faults = 0;
  const std::span<const Fault> observed(faults, count);
  const auto page_of = [&](std::uintptr_t a) { return range.page_of(reinterpret_cast<const void*>(a)); };
  const BlockPages hole = unmapped_in(range, lo, hi);  // the faulting pages are live (resolve)

  // Every allocation of this resolution happens here, before anything is
  // locked: without memory, the faulting threads retry (and fault again)
  // rather than sleep forever. Each list ends with at most a block's pages.
  try {
    for (auto* list : lists_.all()) list->reserve(kPagesPerBlock + count);
    held_.reserve(5 * kPagesPerBlock);  // the unlock's list (reserve_storage may have failed)
    std::lock_guard lock(table.block_mutex(block));
    for (std::size_t k = 0; k < count; ++k) {
      const std::size_t p = range.page_of(reinterpret_cast<const void*>(faults[k].address));
      const MirrorEntry e = table.entry(p);
      if (e.locked() && e.has(MirrorEntry::kDiscarded | MirrorEntry::kFreed) && e.residency() == Residency::System &&
          !faults[k].write_protect) {
        // The application dropped or freed this host page (mapping_events.cpp),
        // and it is gone (zapped, or reclaimed after MADV_FREE) while an
        // operation holds it: zeros, which the copy engine of that very
        // migration may be waiting for. Its holder keeps the lock, a
        // migration leaves the page on the host, and the unlock marks it
        // FREED (DISCARDED).
        table.entry(p).set(MirrorEntry::kDiscarded);
        discarded_held.push_back(p);
        wake.push_back(p);
      } else if (e.locked()) {
        if (!queue(parked_, faults[k])) {
          wake.push_back(p);  // no room to park it: it retries (and faults again)
          continue;
        }
        parked_count_.fetch_add(1);  // under the block lock: an unlock after this sees it
        AtomicCounters::add(ctx_.counters.faults_parked, 1);
      } else if (e.has(MirrorEntry::kPoisoned)) {
        // The poison marker answers the retry with SIGBUS; a kernel without
        // UFFDIO_POISON leaves the thread blocked rather than looping.
        if (mechanism.has_poison()) wake.push_back(p);
      } else if (e.residency() == Residency::Duplicated) {
        // Read-mostly: a store collapses the page to its host copy; a read
        // (the signal mechanism closed the page) reopens it read-only.
        (faults[k].write_protect ? collapse : reopen_read_only).push_back(p);
      } else if (faults[k].write_protect && e.residency() == Residency::Empty && !open_empty) {
        // A write-protected host page behind an Empty entry: one the
        // application freed (MADV_FREE keeps the page, and its protection)
        // while it was held. It holds data: a host page, FREED (if gone by
        // now, the retry faults MISSING and gets zeros), opened.
        table.entry(p).move_to(MirrorEntry(MirrorEntry::system().bits() | MirrorEntry::kFreed));
        unprotect.push_back(p);
      } else if (faults[k].write_protect) {
        // The migration that protected the page is over: either the page stayed
        // (unprotect) or it moved (wake: the retry faults as MISSING).
        (reopens(e.residency()) ? unprotect : wake).push_back(p);
      } else if (e.residency() == Residency::Device) {
        back.push_back(p);
        faulting_back.push_back(p);
      } else {
        // Empty, or System but unmapped (the application dropped it): zeros.
        // A page mapped already answers EEXIST and its thread is just woken.
        zero.push_back(p);
        // A host page the signal mechanism closed is reopened with its block
        // below (unprotect): no zero fill.
        if (!(open_block && e.residency() == Residency::System)) ++zero_faults;
      }
    }
    if (ahead && !zero.empty())
      for (std::size_t p = lo; p < hi; ++p)
        if (table.entry(p).bits() == 0 && !hole[p - lo] && mechanism.empty_page_closed(range, p))
          zero.push_back(p);  // Empty, unlocked
    if (ahead && !back.empty()) {
      // Density prefetch: the part of the block each faulting page brings back.
      BlockPages occupied;
      std::vector<std::size_t> faulting;
      faulting.reserve(count);
      for (std::size_t p = lo; p < hi; ++p) {
        const Residency r = table.entry(p).residency();
        if (r == Residency::System || r == Residency::Duplicated) occupied.set(p - lo);
      }
      for (std::size_t k = 0; k < count; ++k) {
        const std::size_t p = range.page_of(reinterpret_cast<const void*>(faults[k].address));
        occupied.set(p - lo);
        faulting.push_back(p - lo);
      }
      const BlockPages region = threshold == 0 ? BlockPages().set() : density_prefetch_region(occupied, faulting, threshold);
      BlockPages faulted;
      for (std::size_t f : faulting) faulted.set(f);
      AdviceCursor advice(range.advice().runs(lo, hi));
      for (std::size_t p = lo; p < hi; ++p) {
        const MirrorEntry e = table.entry(p);
        if (!region[p - lo] || hole[p - lo] || e.residency() != Residency::Device || e.locked() ||
            e.has(MirrorEntry::kPoisoned))
          continue;
        // A thrashing neighbour stays where it is: it would only bounce back.
        if (thrashing.enabled && !faulted[p - lo] && range.bounces().cooling(p, now_ms, thrashing)) {
          ++not_prefetched;
          continue;
        }
        // So does a neighbour that prefers its device or that its device
        // accesses (advice): the CPU did not ask for it.
        if (!faulted[p - lo]) {
          const RangeAdvice& a = advice.at(p);
          const OwnerId owner = e.device_page().owner;
          if (a.preferred == Location::device(owner) || a.accessed_by_device(owner)) {
            ++kept_by_advice;
            continue;
          }
        }
        back.push_back(p);
      }
    }
    if (open_block)
      for (std::size_t p = lo; p < hi; ++p) {
        const MirrorEntry e = table.entry(p);
        if (reopens(e.residency()) && !hole[p - lo] && !e.locked() && !e.has(MirrorEntry::kPoisoned))
          unprotect.push_back(p);
      }
    sort_unique(zero);
    sort_unique(back);
    sort_unique(faulting_back);
    sort_unique(unprotect);
    sort_unique(wake);
    sort_unique(collapse);
    sort_unique(reopen_read_only);
    std::erase_if(reopen_read_only,
                  [&](std::size_t p) { return std::binary_search(collapse.begin(), collapse.end(), p); });
    // A page with a stale MISSING fault next to its WP fault is mapped: the
    // unprotect (and the wake at its unlock) answers both.
    std::erase_if(zero, [&](std::size_t p) { return std::binary_search(unprotect.begin(), unprotect.end(), p); });
    // Lock what this service changes outside the block mutex. Unprotecting in
    // particular: unlocked, a migration could write-protect the page again
    // between this check and the ioctl, and the stale unprotect would let a
    // store in during its copy.
    for (std::size_t p : zero) table.entry(p).set(MirrorEntry::kLocked);
    for (std::size_t p : back) table.entry(p).set(MirrorEntry::kLocked);
    for (std::size_t p : unprotect) table.entry(p).set(MirrorEntry::kLocked);
    for (std::size_t p : collapse) table.entry(p).set(MirrorEntry::kLocked);
    for (std::size_t p : reopen_read_only) table.entry(p).set(MirrorEntry::kLocked);
  } catch (const std::bad_alloc&) {
    for (std::size_t k = 0; k < count; ++k) mechanism.wake(faults[k].address, kPageSize);
    return;
  }

  for (std::size_t p : discarded_held)
    if (const int err = mechanism.install_zeros(range, p, 1); err != 0 && err != EEXIST)
      log().error("fault service: mapping zeros at discarded page {} failed: {}",
                  static_cast<void*>(range.page_address(p)), std::strerror(err));

  // Zeros: one install per run; a run with a mapped page goes page by page.
  std::size_t spurious = 0;
  BlockPages unmapped;  // installs that failed
  BlockPages fresh;     // new zero pages
  for (std::size_t k = 0; k < zero.size();) {
    std::size_t run = 1;
    while (k + run < zero.size() && zero[k + run] == zero[k] + run) ++run;
    if (mechanism.install_zeros(range, zero[k], run) == 0) {
      for (std::size_t q = zero[k]; q < zero[k] + run; ++q) fresh.set(q - lo);
    } else {
      for (std::size_t q = zero[k]; q < zero[k] + run; ++q) {
        const int err = mechanism.install_zeros(range, q, 1);
        if (err == 0) {
          fresh.set(q - lo);
        } else if (err == EEXIST) {
          ++spurious;
        } else if (err != 0) {
          // It stays Empty (the mirror never claims a page that is not
          // there): its thread faults again and the install is retried.
          unmapped.set(q - lo);
          log().error("fault service: mapping zeros at {} failed: {}", static_cast<void*>(range.page_address(q)),
                      std::strerror(err));
        }
      }
    }
    k += run;
  }
  if (!zero.empty()) {
    std::lock_guard lock(table.block_mutex(block));
    for (std::size_t p : zero) {
      MirrorEntry& e = table.entry(p);
      if (e.residency() == Residency::Empty && !unmapped[p - lo])
        e.move_to(MirrorEntry::system());
      else if (fresh[p - lo])
        e.clear(MirrorEntry::kFreed);  // a freed page found gone: its new zero page is no freed one
    }
  }
  AtomicCounters::add(ctx_.counters.thrashing_not_prefetched, not_prefetched);
  AtomicCounters::add(ctx_.counters.advice_not_prefetched, kept_by_advice);
  AtomicCounters::add(ctx_.counters.faults_zero_fill, zero_faults > spurious ? zero_faults - spurious : 0);
  AtomicCounters::add(ctx_.counters.faults_spurious, spurious);

  if (!back.empty()) {
    const BackResult r = bring_back(ctx_, range, back, staging_);
    for (std::size_t p : r.failed) {
      if (!std::binary_search(faulting_back.begin(), faulting_back.end(), p)) continue;
      // Out of host memory (or mappings) is no lost page: it stays on its
      // device, and the faulting thread, woken at the unlock, faults again.
      if (r.status.code == Errc::out_of_memory) continue;
      // The page cannot come back: the faulting access gets SIGBUS, like the
      // kernel's answer to a failed migrate_to_ram; the data stays on the device.
      {
        std::lock_guard lock(table.block_mutex(block));
        table.entry(p).set(MirrorEntry::kPoisoned);
      }
      AtomicCounters::add(ctx_.counters.pages_lost, 1);
      log().critical("page {} could not be brought back from its device ({}); accesses to it raise SIGBUS",
                     static_cast<void*>(range.page_address(p)), r.status.message);
      // Outside the block lock: the signal mechanism takes block locks under its own.
      if (const int err = mechanism.poison(range, p, 1); err != 0)
        log().critical("poisoning page {} failed ({}): its faulting thread stays blocked",
                       static_cast<void*>(range.page_address(p)), std::strerror(err));
    }
    const std::size_t faulting_moved =
        faulting_back.size() - static_cast<std::size_t>(std::count_if(
                                   faulting_back.begin(), faulting_back.end(), [&](std::size_t p) {
                                     return std::find(r.failed.begin(), r.failed.end(), p) != r.failed.end();
                                   }));
    AtomicCounters::add(ctx_.counters.faults_from_device, faulting_moved);
    if (thrashing.enabled) record_bounces(range, block, faulting_back, r.failed, thrashing, now_ms);
    AtomicCounters::add(ctx_.counters.pages_fault_ahead, r.moved > faulting_moved ? r.moved - faulting_moved : 0);
    // The CPU uses this block now: what stays of it on a device is recent.
    ctx_.recency->touch_block(table, block);
  }

  for (std::size_t k = 0; k < unprotect.size();) {
    std::size_t run = 1;
    while (k + run < unprotect.size() && unprotect[k + run] == unprotect[k] + run) ++run;
    // On failure the page stays read-only: a store faults again and retries.
    if (const int err = mechanism.write_protect(range, unprotect[k], run, false); err != 0)
      log().error("fault service: opening {} pages at {} failed: {}", run,
                  static_cast<void*>(range.page_address(unprotect[k])), std::strerror(err));
    k += run;
  }
  collapse_to_host(ctx_, range, collapse);
  for (std::size_t p : reopen_read_only)
    if (const int err = mechanism.write_protect(range, p, 1, true); err != 0)  // stays closed: a read faults again
      log().error("fault service: reopening {} read-only failed: {}", static_cast<void*>(range.page_address(p)),
                  std::strerror(err));
  // One unlock for every page held here, after the counters: a woken thread
  // sees its fault counted and finds nothing of this resolution still locked
  // (a migration it starts next would skip a locked page).
  std::vector<std::size_t>& held = held_;  // reserved for five blocks' worth: never grows
  held.clear();
  held.insert(held.end(), collapse.begin(), collapse.end());
  held.insert(held.end(), reopen_read_only.begin(), reopen_read_only.end());
  held.insert(held.end(), zero.begin(), zero.end());
  held.insert(held.end(), back.begin(), back.end());
  held.insert(held.end(), unprotect.begin(), unprotect.end());
  sort_unique(held);
  unlock_pages(ctx_, range, held);
  for (std::size_t p : wake) mechanism.wake(reinterpret_cast<std::uintptr_t>(range.page_address(p)), kPageSize);
  ctx_.observer.faults_resolved(FaultKind::zero_fill, observed, zero, false, page_of);
  ctx_.observer.faults_resolved(FaultKind::from_device, observed, faulting_back, false, page_of);
  ctx_.observer.faults_resolved(FaultKind::write_protect, observed, unprotect, true, page_of);
  ctx_.observer.faults_resolved(FaultKind::write_protect, observed, collapse, true, page_of);
  ctx_.observer.faults_resolved(FaultKind::write_protect, observed, wake, true, page_of);
}

}  // namespace uhmm::detail
