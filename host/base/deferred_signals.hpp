// Asynchronous signals deferred across public calls (DESIGN.md, "Signals and
// the library's threads"): an application handler that reads device-resident
// memory waits for the fault service, so it must never run in a thread that
// holds a lock the service needs. Every public call that may take a library
// lock holds a DeferSignals: asynchronous signals are blocked on entry and the
// application's mask comes back on exit, when pending signals are delivered
// (none is lost). The application's own code that a call runs (a launch body,
// a notifier callback) runs with the application's mask.
#pragma once

#include <signal.h>

#include <utility>

#include "uhmm/detail/signal_mask.hpp"

namespace uhmm::detail {

class DeferSignals {
 public:
  // Blocks, unless the thread defers already (a nested call).
  DeferSignals() noexcept {
    if (deferring_) return;
    ::pthread_sigmask(SIG_BLOCK, &asynchronous_signals(), &saved_);
    outer_ = application_mask_;
    // This object's mask, for the call's lifetime: the destructor puts the
    // outer one back before the object goes.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdangling-pointer"
    application_mask_ = &saved_;
#pragma GCC diagnostic pop
    deferring_ = active_ = true;
  }
  ~DeferSignals() {
    if (!active_) return;
    deferring_ = false;
    application_mask_ = outer_;
    ::pthread_sigmask(SIG_SETMASK, &saved_, nullptr);
  }
  DeferSignals(const DeferSignals&) = delete;
  DeferSignals& operator=(const DeferSignals&) = delete;

  // Runs the application's code with the mask the application had when the
  // outermost call began; a mask the code leaves changed is the one restored
  // when that call returns. Outside a call (a library thread) it just runs it.
  template <class F>
  static decltype(auto) run_application_code(F&& f) {
    if (!deferring_) return std::forward<F>(f)();
    struct Redefer {
      sigset_t* mask;
      ~Redefer() {
        ::pthread_sigmask(SIG_BLOCK, &asynchronous_signals(), mask);
        deferring_ = true;
      }
    } redefer{application_mask_};
    deferring_ = false;
    ::pthread_sigmask(SIG_SETMASK, application_mask_, nullptr);
    return std::forward<F>(f)();
  }

 private:
  static inline thread_local bool deferring_ = false;
  static inline thread_local sigset_t* application_mask_ = nullptr;  // the outermost call's saved mask
  sigset_t saved_;
  sigset_t* outer_ = nullptr;
  bool active_ = false;
};

}  // namespace uhmm::detail
