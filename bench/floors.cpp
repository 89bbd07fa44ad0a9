#include "floors.hpp"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <thread>

namespace uhmm::bench {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t kPage = 4096;

double us_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
}

void* map_anonymous(std::size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::runtime_error("mmap failed");
  return p;
}

}  // namespace

Latencies summarize(std::vector<double>& s) {
  if (s.empty()) return {};
  double total = 0;
  for (double v : s) total += v;
  std::sort(s.begin(), s.end());
  return {s[s.size() / 2], s[std::min(s.size() - 1, s.size() * 99 / 100)], total / static_cast<double>(s.size())};
}

double memcpy_gbps(std::size_t bytes) {
  auto* a = static_cast<char*>(map_anonymous(bytes));
  auto* b = static_cast<char*>(map_anonymous(bytes));
  std::memset(a, 1, bytes);
  std::memset(b, 2, bytes);
  double best = 1e30;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = Clock::now();
    std::memcpy(b, a, bytes);
    best = std::min(best, us_since(t0));
  }
  ::munmap(a, bytes);
  ::munmap(b, bytes);
  return static_cast<double>(bytes) / best / 1e3;
}

double first_touch_us(std::size_t pages) {
  auto* p = static_cast<volatile char*>(map_anonymous(pages * kPage));
  ::madvise(const_cast<char*>(p), pages * kPage, MADV_NOHUGEPAGE);
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < pages; ++i) p[i * kPage] = 1;
  const double us = us_since(t0) / static_cast<double>(pages);
  ::munmap(const_cast<char*>(p), pages * kPage);
  return us;
}

Latencies bare_userfaultfd_round_trip(std::size_t faults) {
  int uffd = static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (uffd < 0) throw std::runtime_error("userfaultfd unavailable");
  uffdio_api api{UFFD_API, 0, 0};
  ::ioctl(uffd, UFFDIO_API, &api);
  const std::size_t bytes = faults * kPage;
  auto* region = static_cast<char*>(map_anonymous(bytes));
  uffdio_register reg{{reinterpret_cast<std::uintptr_t>(region), bytes}, UFFDIO_REGISTER_MODE_MISSING, 0};
  if (::ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) throw std::runtime_error("UFFDIO_REGISTER failed");
  static char source[kPage];
  std::memset(source, 7, kPage);
  std::atomic<bool> stop{false};
  std::thread handler([&] {
    pollfd pfd{uffd, POLLIN, 0};
    while (!stop.load()) {
      if (::poll(&pfd, 1, 10) <= 0) continue;
      uffd_msg msg;
      if (::read(uffd, &msg, sizeof msg) != sizeof msg || msg.event != UFFD_EVENT_PAGEFAULT) continue;
      uffdio_copy copy{msg.arg.pagefault.address & ~(kPage - 1), reinterpret_cast<std::uintptr_t>(source), kPage, 0, 0};
      ::ioctl(uffd, UFFDIO_COPY, &copy);
    }
  });
  std::vector<double> samples;
  samples.reserve(faults);
  for (std::size_t i = 0; i < faults; ++i) {
    const auto t0 = Clock::now();
    const char c = *static_cast<volatile char*>(region + i * kPage);
    samples.push_back(us_since(t0));
    if (c != 7) throw std::runtime_error("bare userfaultfd: wrong data");
  }
  stop = true;
  handler.join();
  ::munmap(region, bytes);
  ::close(uffd);
  return summarize(samples);
}

namespace {

char* g_region = nullptr;
const char* g_source = nullptr;

void resolve_in_place(int, siginfo_t* info, void*) {
  auto* page = reinterpret_cast<char*>(reinterpret_cast<std::uintptr_t>(info->si_addr) & ~(kPage - 1));
  ::mprotect(page, kPage, PROT_READ | PROT_WRITE);
  std::memcpy(page, g_source, kPage);
}

}  // namespace

Latencies bare_sigsegv_round_trip(std::size_t faults) {
  const std::size_t bytes = faults * kPage;
  g_region = static_cast<char*>(map_anonymous(bytes));
  auto* source = static_cast<char*>(map_anonymous(kPage));
  std::memset(source, 7, kPage);
  std::memset(g_region, 0, bytes);  // populated: only the protection faults
  ::mprotect(g_region, bytes, PROT_NONE);
  g_source = source;
  struct sigaction action{}, before{};
  action.sa_sigaction = resolve_in_place;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  if (::sigaction(SIGSEGV, &action, &before) != 0) throw std::runtime_error("sigaction failed");
  std::vector<double> us;
  us.reserve(faults);
  for (std::size_t i = 0; i < faults; ++i) {
    const auto t0 = Clock::now();
    const char c = *static_cast<volatile char*>(g_region + i * kPage);
    us.push_back(us_since(t0));
    if (c != 7) throw std::runtime_error("bare SIGSEGV: wrong data");
  }
  ::sigaction(SIGSEGV, &before, nullptr);
  ::munmap(g_region, bytes);
  ::munmap(source, kPage);
  return summarize(us);
}

}  // namespace uhmm::bench
