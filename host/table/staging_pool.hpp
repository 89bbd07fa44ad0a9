// Block-sized (2 MiB) host staging buffers, pinned by a backend, reused across
// migrations to host: device pages are copied here, then mapped into the
// managed range with UFFDIO_COPY.
#pragma once

#include <cstddef>
#include <mutex>
#include <vector>

#include "lock_order.hpp"
#include "uhmm/backend.hpp"

namespace uhmm::detail {

class StagingPool {
 public:
  explicit StagingPool(Backend& backend) : backend_(backend) {}
  ~StagingPool() {
    for (std::byte* b : all_) backend_.free_host(b);
  }
  StagingPool(const StagingPool&) = delete;
  StagingPool& operator=(const StagingPool&) = delete;

  // A kBlockSize buffer, or nullptr if host memory is exhausted.
  std::byte* acquire() noexcept {
    {
      std::lock_guard lock(mutex_);
      if (!free_.empty()) {
        std::byte* b = free_.back();
        free_.pop_back();
        return b;
      }
    }
    void* p = nullptr;
    if (!backend_.allocate_host(kBlockSize, &p)) return nullptr;
    std::lock_guard lock(mutex_);
    try {
      all_.push_back(static_cast<std::byte*>(p));
      free_.reserve(all_.size());
    } catch (...) {
      backend_.free_host(p);
      return nullptr;
    }
    return static_cast<std::byte*>(p);
  }
  void release(std::byte* b) noexcept {
    std::lock_guard lock(mutex_);
    free_.push_back(b);  // capacity reserved: all_ holds at least as many
  }

 private:
  Backend& backend_;
  Ranked<std::mutex, LockRank::staging> mutex_;
  std::vector<std::byte*> all_;
  std::vector<std::byte*> free_;
};

// Holds one staging buffer for a scope.
class StagingBuffer {
 public:
  explicit StagingBuffer(StagingPool& pool) noexcept : pool_(pool), data_(pool.acquire()) {}
  ~StagingBuffer() {
    if (data_ != nullptr) pool_.release(data_);
  }
  StagingBuffer(const StagingBuffer&) = delete;
  StagingBuffer& operator=(const StagingBuffer&) = delete;
  std::byte* get() const noexcept { return data_; }

 private:
  StagingPool& pool_;
  std::byte* data_;
};

}  // namespace uhmm::detail
