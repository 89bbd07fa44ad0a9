// Host pages for backend tests: pinned by the backend (allocate_host) or
// pageable (aligned_alloc), filled with a pattern of a seed and checked
// against it. A page's pattern depends on its seed only, so a page copied to
// another index is recognised there; fill_all/first_wrong give page i the
// seed `seed + i`, so a page landing at the wrong index is caught.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "uhmm/backend.hpp"

namespace uhmm::test {

class HostPages {
 public:
  static constexpr std::size_t kWords = kPageSize / 8;
  static std::uint64_t word(std::uint64_t seed, std::size_t w) { return seed * 1'000'003 + w; }

  HostPages(Backend& backend, std::size_t pages, bool pinned) : backend_(backend), pinned_(pinned), pages_(pages) {
    void* p = nullptr;
    if (pinned) {
      const Status s = backend.allocate_host(pages * kPageSize, &p);
      EXPECT_TRUE(s) << s.message;
    } else {
      p = std::aligned_alloc(kPageSize, pages * kPageSize);
    }
    base_ = static_cast<std::uint64_t*>(p);
  }
  ~HostPages() {
    if (pinned_)
      backend_.free_host(base_);
    else
      std::free(base_);
  }
  HostPages(const HostPages&) = delete;
  HostPages& operator=(const HostPages&) = delete;

  std::uint64_t* page(std::size_t i) const { return base_ + i * kWords; }
  void fill(std::size_t i, std::uint64_t seed) const {
    for (std::size_t w = 0; w < kWords; ++w) page(i)[w] = word(seed, w);
  }
  bool has(std::size_t i, std::uint64_t seed) const {
    for (std::size_t w = 0; w < kWords; ++w)
      if (page(i)[w] != word(seed, w)) return false;
    return true;
  }
  bool is_zero(std::size_t i) const {
    for (std::size_t w = 0; w < kWords; ++w)
      if (page(i)[w] != 0) return false;
    return true;
  }
  // Every page i with seed + i; the first page that differs from that (or
  // the page count when none does).
  void fill_all(std::uint64_t seed) const {
    for (std::size_t i = 0; i < pages_; ++i) fill(i, seed + i);
  }
  std::size_t first_wrong(std::uint64_t seed) const {
    for (std::size_t i = 0; i < pages_; ++i)
      if (!has(i, seed + i)) return i;
    return pages_;
  }

 private:
  Backend& backend_;
  bool pinned_;
  std::size_t pages_;
  std::uint64_t* base_ = nullptr;
};

}  // namespace uhmm::test
