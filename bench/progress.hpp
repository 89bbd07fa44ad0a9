// Progress on stderr for runs longer than a few seconds: one line per step,
// with its number and the time so far; the results table stays on stdout.
#pragma once

#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <string_view>

namespace uhmm::bench {

class Progress {
 public:
  explicit Progress(unsigned steps) : steps_(steps) {}
  void step(std::string_view what) {
    ++done_;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    fmt::print(stderr, "[{:>2}/{}] {:6.1f} s  {}\n", done_, steps_, s, what);
    std::fflush(stderr);
  }

 private:
  unsigned steps_;
  unsigned done_ = 0;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

}  // namespace uhmm::bench
