// What the signal tests share: a watchdog that turns a deadlock into a named
// failure, and a handler installed for a scope.
#pragma once

#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

namespace uhmm::test {

// Ends the process with a message if not disarmed in time: a deadlock fails
// the test (and names it) instead of hanging ctest.
class Watchdog {
 public:
  explicit Watchdog(const char* what, std::chrono::seconds limit = std::chrono::seconds(120)) : what_(what) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);  // the tests' signals are not for this thread
    thread_ = std::thread([this, limit] {
      std::unique_lock lock(m_);
      if (!cv_.wait_for(lock, limit, [&] { return done_; })) {
        std::fprintf(stderr, "watchdog: %s did not finish within %lld s (deadlock)\n", what_,
                     static_cast<long long>(limit.count()));
        std::_Exit(3);
      }
    });
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  ~Watchdog() {
    {
      std::lock_guard lock(m_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  const char* what_;
  std::mutex m_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

// Installs `handler` for `sig` (no flags, empty mask) until the scope ends.
class ScopedHandler {
 public:
  ScopedHandler(int sig, void (*handler)(int)) : sig_(sig) {
    struct sigaction a{};
    a.sa_handler = handler;
    sigemptyset(&a.sa_mask);
    sigaction(sig, &a, &old_);
  }
  ScopedHandler(const ScopedHandler&) = delete;
  ScopedHandler& operator=(const ScopedHandler&) = delete;
  ~ScopedHandler() { sigaction(sig_, &old_, nullptr); }

 private:
  int sig_;
  struct sigaction old_{};
};

}  // namespace uhmm::test
