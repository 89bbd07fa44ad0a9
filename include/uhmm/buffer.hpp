// uhmm::Buffer<T>: a typed managed allocation that frees itself.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <type_traits>
#include <utility>

#include "uhmm/context.hpp"

namespace uhmm {

template <class T>
class Buffer {
  static_assert(std::is_trivially_copyable_v<T>, "managed memory moves bytes: T must be trivially copyable");

 public:
  Buffer(Context& ctx, std::size_t count)
      : ctx_(&ctx), data_(static_cast<T*>(ctx.allocate(checked_bytes(count)))), count_(count) {}
  Buffer(Buffer&& other) noexcept
      : ctx_(other.ctx_), data_(std::exchange(other.data_, nullptr)), count_(std::exchange(other.count_, 0)) {}
  Buffer& operator=(Buffer&& other) noexcept {
    if (this != &other) {
      reset();
      ctx_ = other.ctx_;
      data_ = std::exchange(other.data_, nullptr);
      count_ = std::exchange(other.count_, 0);
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { reset(); }

  T* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return count_; }
  std::size_t bytes() const noexcept { return count_ * sizeof(T); }
  // Bytes the range really spans (whole pages): what migrations take.
  std::size_t range_bytes() const noexcept { return (bytes() + kPageSize - 1) & ~(kPageSize - 1); }
  T& operator[](std::size_t i) const noexcept { return data_[i]; }
  T* begin() const noexcept { return data_; }
  T* end() const noexcept { return data_ + count_; }
  std::span<T> span() const noexcept { return {data_, count_}; }

  MigrationResult to_device(OwnerId device = kNoOwner) { return ctx_->migrate_to_device(data_, range_bytes(), device); }
  MigrationResult to_host() { return ctx_->migrate_to_host(data_, range_bytes()); }

 private:
  // count * sizeof(T), refusing a count whose size wraps around (which would
  // otherwise allocate a few bytes for a huge buffer).
  static std::size_t checked_bytes(std::size_t count) {
    if (count > ~std::size_t{0} / sizeof(T))
      throw Error(Errc::invalid_argument,
                  "Buffer: " + std::to_string(count) + " elements of " + std::to_string(sizeof(T)) +
                      " bytes overflow the address space");
    return count * sizeof(T);
  }

  void reset() noexcept {
    if (data_ != nullptr) {
      try {
        ctx_->free(data_);
      } catch (...) {
        // free of a live range of this context cannot fail; nothing to report from a destructor
      }
      data_ = nullptr;
    }
  }

  Context* ctx_;
  T* data_;
  std::size_t count_;
};

}  // namespace uhmm
