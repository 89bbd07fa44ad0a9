// Asynchronous signals and the library's threads (DESIGN.md, "Signals and the
// library's threads").
//
// The application's signal handlers may read managed memory, and a read of a
// device-resident page waits for uhmm's fault service. So no thread of uhmm's
// may run such a handler (it could be the fault service itself, or a worker
// the service waits for), and no application thread may run one while it
// holds a lock the service needs. Both come from one tool: asynchronous
// signals blocked. The synchronous ones (a fault of the thread's own access)
// stay open: uhmm serves SIGSEGV in signal mode, and the others must crash as
// they would.
#pragma once

#include <signal.h>

#include <thread>
#include <utility>

namespace uhmm::detail {

// Every signal but the synchronous ones (glibc keeps its own internal signals
// out of any mask it is given).
inline const sigset_t& asynchronous_signals() noexcept {
  static const sigset_t set = [] {
    sigset_t s;
    sigfillset(&s);
    for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP}) sigdelset(&s, sig);
    return s;
  }();
  return set;
}

// Blocks the asynchronous signals of the calling thread for its lifetime and
// restores the mask it found. A signal sent meanwhile is not lost: it is
// delivered when the mask is restored.
class AsyncSignalsBlocked {
 public:
  AsyncSignalsBlocked() noexcept { ::pthread_sigmask(SIG_BLOCK, &asynchronous_signals(), &saved_); }
  ~AsyncSignalsBlocked() { ::pthread_sigmask(SIG_SETMASK, &saved_, nullptr); }
  AsyncSignalsBlocked(const AsyncSignalsBlocked&) = delete;
  AsyncSignalsBlocked& operator=(const AsyncSignalsBlocked&) = delete;

 private:
  sigset_t saved_;
};

// Starts a library thread: it inherits a mask with the asynchronous signals
// blocked (the creating thread's mask is restored once it has started).
template <class... Args>
std::thread spawn_library_thread(Args&&... args) {
  AsyncSignalsBlocked blocked;
  return std::thread(std::forward<Args>(args)...);
}

}  // namespace uhmm::detail
