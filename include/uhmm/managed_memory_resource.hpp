// Standard allocators over managed memory: uhmm::managed_memory_resource (a
// std::pmr::memory_resource) and uhmm::managed_allocator<T>, so std::vector,
// pmr containers and anything else taking an allocator can live in managed
// memory, used by the CPU and by device kernels alike.
//
// A managed range is 2 MiB-aligned, so small requests (up to
// kLargeAllocation) are carved from shared arenas, one size class per 256 KiB
// slab, and freed slots are reused; a slab left empty gives its pages back
// (Context::discard). Larger requests get a managed range each. Advice and
// prefetch apply to whole pages: for a small object they also reach its
// neighbours in the same pages, so data that needs its own placement should
// be a large allocation (or its own Context::allocate). Thread safe.
#pragma once

#include <cstddef>
#include <limits>
#include <memory>
#include <memory_resource>
#include <new>

#include "uhmm/context.hpp"
#include "uhmm/export.hpp"

namespace uhmm {

class UHMM_EXPORT managed_memory_resource : public std::pmr::memory_resource {
 public:
  // Requests above this many bytes get a managed range of their own.
  static constexpr std::size_t kLargeAllocation = std::size_t{256} << 10;

  explicit managed_memory_resource(Context& context);
  // Frees every range it allocated: what was allocated from it is gone.
  ~managed_memory_resource() override;
  managed_memory_resource(const managed_memory_resource&) = delete;
  managed_memory_resource& operator=(const managed_memory_resource&) = delete;

  Context& context() const noexcept { return context_; }
  // Frees everything allocated from it at once.
  void release() noexcept;
  // Whether `base` starts a managed range this resource allocated.
  bool owns_range(const void* base) const;

 private:
  // Alignments up to kBlockSize (2 MiB); more throws uhmm::Error. Out of
  // memory throws uhmm::OutOfMemory (a std::bad_alloc it is not: it says
  // which memory ran out).
  void* do_allocate(std::size_t bytes, std::size_t alignment) override;
  // A pointer it did not allocate, or one freed already, is logged and ignored.
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override;
  bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override { return this == &other; }

  struct Arenas;
  Context& context_;
  std::unique_ptr<Arenas> arenas_;
};

// The resource over the default context (uhmm/default_context.hpp); created
// with it, destroyed with it by uhmmDeviceReset.
UHMM_EXPORT managed_memory_resource& default_managed_resource();

// An allocator over a managed_memory_resource: the default one unless given.
template <class T>
class managed_allocator {
 public:
  using value_type = T;

  managed_allocator() : resource_(&default_managed_resource()) {}
  explicit managed_allocator(managed_memory_resource& resource) noexcept : resource_(&resource) {}
  template <class U>
  managed_allocator(const managed_allocator<U>& other) noexcept : resource_(other.resource()) {}

  T* allocate(std::size_t n) {
    if (n > std::numeric_limits<std::size_t>::max() / sizeof(T)) throw std::bad_array_new_length();
    return static_cast<T*>(resource_->allocate(n * sizeof(T), alignof(T)));
  }
  void deallocate(T* p, std::size_t n) noexcept { resource_->deallocate(p, n * sizeof(T), alignof(T)); }

  managed_memory_resource* resource() const noexcept { return resource_; }

  template <class U>
  friend bool operator==(const managed_allocator& a, const managed_allocator<U>& b) noexcept {
    return a.resource() == b.resource();
  }

 private:
  managed_memory_resource* resource_;
};

}  // namespace uhmm
