// An array of `n` zero-initialized elements in an anonymous MAP_NORESERVE
// mapping: memory is spent only on the pages written, and creating or
// destroying it costs the same for 4 KiB as for 1 TiB of managed memory.
// T must be valid as all-zero bytes (an implicit-lifetime type).
#pragma once

#include <sys/mman.h>

#include <cerrno>
#include <cstddef>
#include <type_traits>

#include <fmt/format.h>

#include "map_count.hpp"
#include "uhmm/error.hpp"

namespace uhmm::detail {

template <class T>
class LazyArray {
  static_assert(std::is_trivially_destructible_v<T>);

 public:
  LazyArray() = default;
  // Throws OutOfMemory, "`what`: <what ran out>", when the mapping fails.
  LazyArray(std::size_t n, const char* what) : n_(n) {
    if (n == 0) return;
    void* p = ::mmap(nullptr, bytes(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw OutOfMemory(fmt::format("{}: {}", what, describe_mapping_failure(errno)));
    data_ = static_cast<T*>(p);
  }
  ~LazyArray() {
    if (data_ != nullptr) ::munmap(data_, bytes());
  }
  LazyArray(const LazyArray&) = delete;
  LazyArray& operator=(const LazyArray&) = delete;

  T& operator[](std::size_t i) const noexcept { return data_[i]; }
  T* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return n_; }
  std::size_t bytes() const noexcept { return n_ * sizeof(T); }

 private:
  std::size_t n_ = 0;
  T* data_ = nullptr;
};

}  // namespace uhmm::detail
