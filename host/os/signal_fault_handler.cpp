#include "signal_fault_handler.hpp"

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <thread>

#include <fmt/format.h>

#include "uhmm/detail/signal_mask.hpp"
#include "uhmm/error.hpp"

namespace uhmm::detail::signal_faults {
namespace {

// ---- fault slots: one per thread waiting in the handler ----

// state = queue << 3 | phase; the queue id inside the word keeps one
// service from taking another's fault when a slot is reused.
enum Phase : std::uint32_t { kFree = 0, kClaimed = 1, kPosted = 2, kTaken = 3, kDone = 4 };
constexpr std::uint32_t word(std::uint32_t queue, Phase phase) { return queue << 3 | phase; }

struct alignas(64) Slot {
  std::atomic<std::uint32_t> state{kFree};  // also the futex word
  std::atomic<std::uintptr_t> address{0};
  std::atomic<bool> write{false};
};
static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));

constexpr std::size_t kSlots = 512;  // threads faulting at once; more wait for a free slot
Slot g_slots[kSlots];

long futex(std::atomic<std::uint32_t>* word_ptr, int op, std::uint32_t value) noexcept {
  return ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word_ptr), op, value, nullptr, nullptr, 0);
}

// ---- the served ranges: an immutable snapshot and reader sections ----

struct Snapshot {
  std::size_t count;
  ServedRange* ranges;  // `count` of them, sorted by begin, right after this header

  const ServedRange* find(std::uintptr_t addr) const noexcept {
    std::size_t lo = 0, hi = count;
    while (lo < hi) {
      const std::size_t mid = (lo + hi) / 2;
      if (ranges[mid].end <= addr) lo = mid + 1;
      else hi = mid;
    }
    return lo < count && ranges[lo].begin <= addr ? &ranges[lo] : nullptr;
  }
  static Snapshot* allocate(std::size_t n) noexcept {
    void* raw = std::malloc(sizeof(Snapshot) + sizeof(ServedRange) * n);
    if (raw == nullptr) return nullptr;
    auto* s = new (raw) Snapshot{n, nullptr};
    s->ranges = new (static_cast<std::byte*>(raw) + sizeof(Snapshot)) ServedRange[n];
    return s;
  }
};

std::atomic<Snapshot*> g_snapshot{nullptr};
std::atomic<std::uint32_t> g_epoch{0};
std::atomic<long> g_readers[2];
std::mutex g_writer;  // add/remove, one at a time
std::atomic<std::uint32_t> g_next_queue{1};
struct sigaction g_previous;
std::once_flag g_installed;

class ReadSection {
 public:
  ReadSection() noexcept {
    // Counted in the epoch that was current after the increment: the writer
    // that ends this epoch waits for us (see synchronize()).
    for (;;) {
      epoch_ = g_epoch.load() & 1;
      g_readers[epoch_].fetch_add(1);
      if ((g_epoch.load() & 1) == epoch_) return;
      g_readers[epoch_].fetch_sub(1);
    }
  }
  ~ReadSection() { g_readers[epoch_].fetch_sub(1); }
  ReadSection(const ReadSection&) = delete;
  ReadSection& operator=(const ReadSection&) = delete;

 private:
  std::uint32_t epoch_;
};

// Writer side (under g_writer): after it returns, no reader section that could
// have seen the snapshot before the last publish is still running.
void synchronize() noexcept {
  const std::uint32_t old = g_epoch.fetch_add(1) & 1;
  while (g_readers[old].load() != 0) std::this_thread::yield();
}

// Publishes `next` and frees the snapshot it replaces once no reader can see it.
void publish(Snapshot* next) noexcept {
  Snapshot* old = g_snapshot.exchange(next);
  synchronize();
  std::free(old);
}

thread_local bool t_service_thread [[gnu::tls_model("initial-exec")]] = false;

void say(const char* text) noexcept {
  [[maybe_unused]] const ssize_t n = ::write(STDERR_FILENO, text, std::strlen(text));
}

// A store to a write-protected (read-only) page, as userfaultfd's WP flag
// says; a store to a PROT_NONE page is a missing-page fault, as there.
bool is_write_protect(const void* context, const ServedRange& r, std::uintptr_t addr) noexcept {
  const std::size_t page = (addr - r.begin) / kPageSize;
  const bool read_only = from_stored(std::atomic_ref<std::uint8_t>(const_cast<std::uint8_t&>(r.protection[page]))
                                         .load(std::memory_order_relaxed)) == kRead;
#if defined(__x86_64__)
  // The page-fault error code: bit 1 is set for a write access.
  return read_only && (static_cast<const ucontext_t*>(context)->uc_mcontext.gregs[REG_ERR] & 2) != 0;
#else
  // Reads of a read-only page do not fault: a fault there is a store (or
  // the protection changed since, and the retry tells).
  (void)context;
  return read_only;
#endif
}

Slot& claim_slot() noexcept {
  const auto start = static_cast<std::size_t>(::syscall(SYS_gettid));
  for (;;) {
    for (std::size_t k = 0; k < kSlots; ++k) {
      Slot& s = g_slots[(start + k) % kSlots];
      std::uint32_t expected = kFree;
      if (s.state.load(std::memory_order_relaxed) == kFree &&
          s.state.compare_exchange_strong(expected, kClaimed, std::memory_order_acquire))
        return s;
    }
    ::sched_yield();  // every slot busy: wait for a fault to end
  }
}

// Serves the fault if it is on a served range; false otherwise.
bool serve(const siginfo_t* info, const void* context) noexcept {
  if (info->si_code != SEGV_ACCERR) return false;  // served ranges are always mapped
  const auto addr = reinterpret_cast<std::uintptr_t>(info->si_addr);
  Slot* slot = nullptr;
  {
    ReadSection read;
    const Snapshot* snapshot = g_snapshot.load(std::memory_order_acquire);
    const ServedRange* r = snapshot != nullptr ? snapshot->find(addr) : nullptr;
    if (r == nullptr) return false;
    if (t_service_thread) {
      say("uhmm: the fault service touched managed memory through the application's mapping (a uhmm bug)\n");
      return false;
    }
    slot = &claim_slot();
    slot->address.store(addr & ~(kPageSize - 1), std::memory_order_relaxed);
    slot->write.store(is_write_protect(context, *r, addr), std::memory_order_relaxed);
    slot->state.store(word(r->queue, kPosted), std::memory_order_release);
    const std::uint64_t one = 1;
    // Inside the read section: the context cannot have closed the eventfd yet.
    [[maybe_unused]] const ssize_t n = ::write(r->event_fd, &one, sizeof one);
  }
  // Wait with the mask of the code that faulted: an asynchronous signal it
  // would take may run its handler now, as in a thread asleep in a
  // userfaultfd fault, and a fault there nests in here (SA_NODEFER) in a
  // slot of its own.
  ::pthread_sigmask(SIG_SETMASK, &static_cast<const ucontext_t*>(context)->uc_sigmask, nullptr);
  for (;;) {
    const std::uint32_t s = slot->state.load(std::memory_order_acquire);
    if ((s & 7) == kDone) break;
    futex(&slot->state, FUTEX_WAIT_PRIVATE, s);
  }
  slot->state.store(kFree, std::memory_order_release);
  return true;
}

void chain(int sig, siginfo_t* info, void* context) noexcept {
  // The previous handler runs with the mask it asked for, SIGSEGV blocked
  // unless it chose SA_NODEFER (the kernel restores the mask on return).
  sigset_t mask = g_previous.sa_mask;
  if ((g_previous.sa_flags & SA_NODEFER) == 0) sigaddset(&mask, sig);
  ::pthread_sigmask(SIG_BLOCK, &mask, nullptr);
  if ((g_previous.sa_flags & SA_SIGINFO) != 0) {
    if (g_previous.sa_sigaction != nullptr) g_previous.sa_sigaction(sig, info, context);
    return;
  }
  if (g_previous.sa_handler == SIG_DFL || g_previous.sa_handler == SIG_IGN) {
    // The default action: restore it and return; the access faults again and
    // the kernel applies it (a crash with the right signal and core dump).
    struct sigaction dfl{};
    dfl.sa_handler = SIG_DFL;
    ::sigaction(sig, &dfl, nullptr);
    return;
  }
  g_previous.sa_handler(sig);
}

// A child of fork() has none of the parent's ranges (MADV_DONTFORK) nor the
// threads that were inside the handler: it starts with none of either (the
// parent's snapshot is left to the parent).
void after_fork_in_child() {
  g_snapshot.store(nullptr);
  g_readers[0].store(0);
  g_readers[1].store(0);
  for (Slot& s : g_slots) s.state.store(kFree);
}

void on_sigsegv(int sig, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  const bool served = serve(info, context);
  errno = saved_errno;
  if (!served) chain(sig, info, context);
}

}  // namespace

void install() {
  // A throw leaves the flag unset, so a later context tries again.
  std::call_once(g_installed, [] {
    struct sigaction action{};
    action.sa_sigaction = on_sigsegv;
    // SA_ONSTACK: on an alternate stack where the thread set one (the handler
    // needs little stack either way). SA_NODEFER: a handler that interrupts
    // the wait below may fault on managed memory too; without it that nested
    // SIGSEGV would be blocked, and the kernel kills the process. The
    // asynchronous signals stay blocked until the fault is posted: a
    // handler must not wait for the fault service inside the reader section
    // (a writer waits for that section to end).
    action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART | SA_NODEFER;
    action.sa_mask = asynchronous_signals();
    if (::sigaction(SIGSEGV, &action, &g_previous) != 0)
      throw Error(Errc::system_error, fmt::format("installing the SIGSEGV handler failed: {}", std::strerror(errno)));
    ::pthread_atfork(nullptr, nullptr, after_fork_in_child);
  });
}

std::uint32_t new_queue() noexcept { return g_next_queue.fetch_add(1); }

void add_range(const ServedRange& range) {
  std::lock_guard lock(g_writer);
  const Snapshot* old = g_snapshot.load();
  const std::size_t n = old != nullptr ? old->count : 0;
  Snapshot* next = Snapshot::allocate(n + 1);
  if (next == nullptr) throw std::bad_alloc();
  std::size_t k = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (k == i && old->ranges[i].begin > range.begin) next->ranges[k++] = range;
    next->ranges[k++] = old->ranges[i];
  }
  if (k == n) next->ranges[k++] = range;
  publish(next);
}

void remove_range(std::uintptr_t begin) noexcept {
  ServedRange gone{};
  {
    std::lock_guard lock(g_writer);
    const Snapshot* old = g_snapshot.load();
    if (old == nullptr) return;
    Snapshot* next = nullptr;
    // A smaller snapshot, or none at all when this was the last range.
    while (old->count > 1 && (next = Snapshot::allocate(old->count - 1)) == nullptr) std::this_thread::yield();
    std::size_t k = 0;
    for (std::size_t i = 0; i < old->count; ++i) {
      if (old->ranges[i].begin == begin) gone = old->ranges[i];
      else if (next != nullptr && k < next->count) next->ranges[k++] = old->ranges[i];
    }
    publish(next);
  }
  if (gone.end != 0) wake(gone.queue, gone.begin, gone.end - gone.begin);
}

std::size_t take(std::uint32_t queue, FaultEvent* out, std::size_t max) noexcept {
  std::size_t n = 0;
  const std::uint32_t posted = word(queue, kPosted);
  for (Slot& s : g_slots) {
    if (n == max) break;
    std::uint32_t expected = posted;
    if (s.state.load(std::memory_order_relaxed) != posted ||
        !s.state.compare_exchange_strong(expected, word(queue, kTaken), std::memory_order_acq_rel))
      continue;
    out[n++] = {s.address.load(std::memory_order_relaxed), s.write.load(std::memory_order_relaxed)};
  }
  return n;
}

void wake(std::uint32_t queue, std::uintptr_t addr, std::size_t len) noexcept {
  for (Slot& s : g_slots) {
    std::uint32_t seen = s.state.load(std::memory_order_acquire);
    if (seen != word(queue, kPosted) && seen != word(queue, kTaken)) continue;
    const std::uintptr_t a = s.address.load(std::memory_order_relaxed);
    if (a < addr || a - addr >= len) continue;
    // A slot reused since the load may be woken spuriously: its thread just
    // retries the access and faults again if it must.
    if (s.state.compare_exchange_strong(seen, word(queue, kDone), std::memory_order_acq_rel))
      futex(&s.state, FUTEX_WAKE_PRIVATE, 1);
  }
}

void mark_service_thread() noexcept { t_service_thread = true; }
bool on_service_thread() noexcept { return t_service_thread; }

}  // namespace uhmm::detail::signal_faults
