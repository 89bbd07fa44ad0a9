// The application's asynchronous signal handlers and managed memory: a handler
// that reads a device-resident page is served wherever it runs. uhmm's own
// threads never run such a handler (they block asynchronous signals), and an
// application thread runs none while it holds a library lock. Each test has a
// watchdog: a hang fails the test instead of hanging ctest.
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "test_support.hpp"
#include "signal_test_support.hpp"

namespace uhmm::test {
namespace {

pid_t gettid_now() { return static_cast<pid_t>(::syscall(SYS_gettid)); }


std::set<pid_t> tasks() {
  std::set<pid_t> out;
  if (DIR* d = ::opendir("/proc/self/task")) {
    while (const dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') out.insert(static_cast<pid_t>(std::atoi(e->d_name)));
    ::closedir(d);
  }
  return out;
}

// The SigBlk mask of a thread of this process (bit sig-1 per signal).
unsigned long long blocked_mask(pid_t tid) {
  std::ifstream status("/proc/self/task/" + std::to_string(tid) + "/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("SigBlk:", 0) == 0) return std::stoull(line.substr(7), nullptr, 16);
  return 0;
}

std::string thread_name(pid_t tid) {
  std::ifstream comm("/proc/self/task/" + std::to_string(tid) + "/comm");
  std::string name;
  std::getline(comm, name);
  return name;
}

// The asynchronous signals a thread of uhmm's must block: all but the
// synchronous ones, SIGKILL/SIGSTOP (unblockable) and glibc's own (32, 33).
std::vector<int> asynchronous_signals() {
  std::vector<int> out;
  for (int sig = 1; sig <= SIGRTMAX; ++sig) {
    if (sig == SIGSEGV || sig == SIGBUS || sig == SIGFPE || sig == SIGILL || sig == SIGTRAP || sig == SIGKILL ||
        sig == SIGSTOP || (sig > 31 && sig < SIGRTMIN))
      continue;
    out.push_back(sig);
  }
  return out;
}

// Drives every kind of thread a context starts: the fault service, copy
// stream workers, kernel helper threads, a uhmm::Stream's worker.
void exercise(Context& ctx, std::byte* p, std::size_t bytes) {
  fill(p, bytes, 5);
  ASSERT_GT(ctx.migrate_to_device(p, bytes).migrated, 0u);
  expect_pattern(p, bytes, 5);
  Stream stream = ctx.create_stream();
  ASSERT_GT(ctx.migrate_to_device_async(stream, p, bytes).get().migrated, 0u);
  auto* words = reinterpret_cast<std::uint64_t*>(p);
  ctx.launch(bytes / 8, [](std::size_t i, device_span<std::uint64_t> w) { w[i] += 1; },
             std::span<std::uint64_t>(words, bytes / 8));
  ASSERT_GT(ctx.migrate_to_host_async(stream, p, bytes).get().migrated, 0u);
  stream.synchronize();
  EXPECT_EQ(words[0], pattern(5, 0) + 1);
}

TEST(SignalSafety, EveryLibraryThreadBlocksAsynchronousSignals) {
  Watchdog watchdog("EveryLibraryThreadBlocksAsynchronousSignals");
  const std::set<pid_t> before = tasks();
  ContextOptions o = cpu_options();
  Context ctx(o);
  auto* p = static_cast<std::byte*>(ctx.allocate(4 * MiB));
  exercise(ctx, p, 4 * MiB);
  std::size_t library_threads = 0;
  for (pid_t tid : tasks()) {
    if (before.count(tid) != 0) continue;
    ++library_threads;
    const unsigned long long mask = blocked_mask(tid);
    for (int sig : asynchronous_signals())
      EXPECT_NE(mask & (1ull << (sig - 1)), 0u)
          << "thread " << tid << " (" << thread_name(tid) << ") leaves signal " << sig << " open";
    for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP})
      EXPECT_EQ(mask & (1ull << (sig - 1)), 0u) << "thread " << tid << " blocks synchronous signal " << sig;
  }
  EXPECT_GE(library_threads, 3u);  // fault service, a copy worker, a stream worker at least
  ctx.free(p);
}

// What the SIGALRM handler saw: which thread ran it and what it read.
std::atomic<std::uint64_t*> g_device_word{nullptr};
std::atomic<pid_t> g_handler_tid{0};
std::atomic<std::uint64_t> g_handler_read{0};
std::atomic<unsigned> g_handler_runs{0};

void read_device_word(int) {
  g_handler_tid.store(gettid_now());
  g_handler_read.store(*g_device_word.load());
  g_handler_runs.fetch_add(1);
}

void set_blocked(int sig, bool blocked) {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, sig);
  pthread_sigmask(blocked ? SIG_BLOCK : SIG_UNBLOCK, &s, nullptr);
}

// The application blocks SIGALRM while it works, as applications do around
// critical code: a process-directed SIGALRM sent meanwhile must wait for it
// (every thread of uhmm's blocks it) and then be served in the application's
// thread, reading a device-resident page. Before the fix the kernel handed it
// to a thread of uhmm's: the fault service hangs on itself.
TEST(SignalSafety, ProcessDirectedSignalIsNeverRunByALibraryThread) {
  Watchdog watchdog("ProcessDirectedSignalIsNeverRunByALibraryThread");
  Context ctx(cpu_options());
  if (kTsanDefersSignalHandlers && std::strcmp(ctx.fault_mode(), "signal") == 0)
    GTEST_SKIP() << "TSan blocks SIGSEGV while it runs a deferred handler";
  auto* data = static_cast<std::byte*>(ctx.allocate(4 * MiB));
  auto* probe = static_cast<std::uint64_t*>(ctx.allocate(kPageSize));
  *probe = 0xfeed;
  g_device_word.store(probe);
  ScopedHandler handler(SIGALRM, read_device_word);
  const pid_t me = gettid_now();
  constexpr unsigned kRounds = 40;
  for (unsigned round = 0; round < kRounds; ++round) {
    ASSERT_EQ(ctx.migrate_to_device(probe, kPageSize).migrated, 1u);
    set_blocked(SIGALRM, true);
    ::kill(::getpid(), SIGALRM);
    fill(data, 4 * MiB, round);  // the library's threads work while the signal is pending
    ctx.migrate_to_device(data, 4 * MiB);
    expect_pattern(data, 4 * MiB, round);
    set_blocked(SIGALRM, false);  // delivered here, if no thread of uhmm's took it
    while (g_handler_runs.load() <= round) std::this_thread::yield();  // the watchdog bounds this
    ASSERT_EQ(g_handler_tid.load(), me) << "round " << round << ": a thread of uhmm's ran the handler";
    ASSERT_EQ(g_handler_read.load(), 0xfeedu);
  }
  ctx.free(probe);
  ctx.free(data);
}

std::atomic<std::uint64_t*> g_nested_word{nullptr};
std::atomic<bool> g_nested_started{false};
std::atomic<std::uint64_t> g_nested_read{0};

void read_nested_word(int) {
  g_nested_started.store(true);
  g_nested_read.store(*g_nested_word.load());
}

// A thread waits in a fault (its page is held by a migration, so the fault is
// parked); a signal handler that interrupts that wait reads a device-resident
// page of another range, which faults in turn. Both are served. In signal mode
// the second fault nests in uhmm's SIGSEGV handler: before SA_NODEFER the
// nested SIGSEGV was blocked and the kernel killed the process.
TEST(SignalSafety, HandlerInterruptingAFaultWaitIsServed) {
  if (kTsanDefersSignalHandlers) GTEST_SKIP() << "TSan runs no handler while a thread waits in a fault";
  Watchdog watchdog("HandlerInterruptingAFaultWaitIsServed");
  Context ctx(cpu_options());
  auto* held = static_cast<std::uint64_t*>(ctx.allocate(kPageSize));
  auto* other = static_cast<std::uint64_t*>(ctx.allocate(kPageSize));
  *held = 1;
  *other = 0xabc;
  ASSERT_EQ(ctx.migrate_to_device(other, kPageSize).migrated, 1u);
  g_nested_word.store(other);
  ScopedHandler handler(SIGUSR1, read_nested_word);

  // The migration holds the page, write-protected: a store waits in a fault.
  std::uint64_t src = 0, dst = 0;
  MigrateVma args;
  args.start = held;
  args.end = reinterpret_cast<std::byte*>(held) + kPageSize;
  args.src = &src;
  args.dst = &dst;
  args.flags = MIGRATE_VMA_SELECT_SYSTEM;
  migrate_vma_setup(ctx, args);
  ASSERT_EQ(args.cpages, 1u);
  const std::uint64_t parked = ctx.counters().faults_parked;
  std::thread writer([&] { *held = 2; });
  while (ctx.counters().faults_parked == parked) std::this_thread::yield();  // it waits in its fault now

  pthread_kill(writer.native_handle(), SIGUSR1);
  while (g_nested_read.load() != 0xabc) std::this_thread::yield();  // the nested fault was served
  EXPECT_TRUE(g_nested_started.load());
  // Let the held page go: the store retries and lands.
  EXPECT_EQ(migrate_vma_pages(ctx, args), 0u);
  migrate_vma_finalize(ctx, args);
  writer.join();
  EXPECT_EQ(*held, 2u);
  EXPECT_EQ(*other, 0xabcu);
  ctx.free(other);
  ctx.free(held);
}

}  // namespace
}  // namespace uhmm::test
