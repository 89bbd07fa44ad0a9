// The device-private page pool of one device (nouveau_dmem's chunk list): 2 MiB
// chunks taken from the backend on demand, up to a page capacity, each cut in
// kPagesPerChunk device pages with a free list. A device page's index is
// chunk_number * kPagesPerChunk + slot, so address_of is arithmetic.
//
// The pool hands out memory whose contents are whatever the last user left:
// only DeviceImpl::alloc_and_copy allocates, and it overwrites (copy) or zeroes
// every page it keeps before the page backs anything (invariant 4).
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "uhmm/backend.hpp"
#include "uhmm/types.hpp"

namespace uhmm::detail {

// Chunk numbers below a bound fixed at construction, as a bitmap: filing a
// chunk never allocates (a chunk left out of its set for want of memory would
// never be handed out again).
class ChunkSet {
 public:
  explicit ChunkSet(std::size_t bound) : words_((bound + 63) / 64, 0) {}
  bool contains(std::uint32_t c) const noexcept {
    return c / 64 < words_.size() && ((words_[c / 64] >> (c % 64)) & 1) != 0;
  }
  // Pre: c below the bound.
  void insert(std::uint32_t c) noexcept {
    if (contains(c)) return;
    words_[c / 64] |= std::uint64_t{1} << (c % 64);
    ++size_;
  }
  void erase(std::uint32_t c) noexcept {
    if (!contains(c)) return;
    words_[c / 64] &= ~(std::uint64_t{1} << (c % 64));
    --size_;
  }
  bool empty() const noexcept { return size_ == 0; }
  std::size_t size() const noexcept { return size_; }
  // The lowest chunk for which pred holds.
  template <class Pred>
  std::optional<std::uint32_t> find_first(Pred pred) const {
    for (std::size_t w = 0; w < words_.size(); ++w)
      for (std::uint64_t bits = words_[w]; bits != 0; bits &= bits - 1) {
        const auto c = static_cast<std::uint32_t>(w * 64 + static_cast<std::size_t>(__builtin_ctzll(bits)));
        if (pred(c)) return c;
      }
    return std::nullopt;
  }
  std::uint32_t first() const noexcept { return *find_first([](std::uint32_t) { return true; }); }

 private:
  std::vector<std::uint64_t> words_;
  std::size_t size_ = 0;
};

class PagePool {
 public:
  // The pool grows by backend.allocate_chunk until it holds capacity_pages
  // usable pages (a capacity that is not a whole number of chunks leaves the
  // last chunk partly unused). backend must outlive the pool.
  PagePool(Backend& backend, std::size_t capacity_pages);
  // Returns every chunk to the backend (pages still in use are logged).
  ~PagePool();
  PagePool(const PagePool&) = delete;
  PagePool& operator=(const PagePool&) = delete;

  // One page. Prefers partly used chunks, so that whole free chunks stay
  // available for compound runs. Errc::out_of_memory when the capacity is used
  // up (or the backend is out of memory, or the injection says so).
  Status allocate_page(DevicePageIndex* out) noexcept;
  // A whole chunk, every one of its kPagesPerChunk pages free; *first is its
  // slot-0 page (pages first .. first + kPagesPerChunk - 1). Errc::out_of_memory
  // when no chunk is entirely free and the pool cannot grow: the caller falls
  // back to single pages. Counts kPagesPerChunk pages against alloc_pages_left.
  Status allocate_chunk(DevicePageIndex* first) noexcept;
  // Pages not in use (double free, bad index) are logged, counted and ignored.
  void free_page(DevicePageIndex page) noexcept;
  void free_pages(std::span<const DevicePageIndex> pages) noexcept;

  // 0 when page is not in use.
  DeviceAddress address_of(DevicePageIndex page) const noexcept;
  bool in_use(DevicePageIndex page) const noexcept;

  std::size_t pages_in_use() const noexcept;
  std::size_t capacity_pages() const noexcept { return capacity_pages_; }
  // A cap below the capacity (a shrunk pool): allocations that would take
  // pages in use above it fail with out_of_memory. Pages already in use above
  // it stay until freed (the host layer evicts them). Clamped to the capacity.
  void set_limit_pages(std::size_t pages) noexcept;
  std::size_t limit_pages() const noexcept;
  // Gives entirely free chunks back to the backend (free_chunk) while the pool
  // holds more chunks than its limit needs, highest chunk first; the pool
  // grows into their numbers again if the limit rises. Returns how many.
  // Called after a shrink's eviction (set_device_pool_limit), not per free:
  // a GPU backend's free synchronizes the device.
  std::size_t release_free_chunks() noexcept;
  // Chunks backed by device memory (those given back are not counted).
  std::size_t chunks() const noexcept;
  // Chunks with every usable page free (compound candidates).
  std::size_t free_chunks() const noexcept;
  // Frees of pages that were not in use, since construction.
  std::size_t invalid_frees() const noexcept;

  // Injection: allocations succeed this many more pages, then fail (-1: off).
  void set_alloc_pages_left(std::int64_t pages) noexcept;
  std::int64_t alloc_pages_left() const noexcept;

  // Walks every chunk: free lists, in-use bitmaps, counts and the chunk sets
  // agree. Errc::device_error naming the first inconsistency.
  Status validate() const;

 private:
  struct Chunk {
    DeviceAddress base = 0;                    // 0: given back (release_free_chunks), no pages
    std::uint32_t usable = 0;                  // slots below capacity
    std::vector<std::uint16_t> free_slots;     // a stack
    std::vector<bool> used;                    // per slot
  };

  // Backs the lowest chunk number that has no memory (a whole chunk's
  // worth of usable pages where `whole`) and sets *grown to it; under mutex_.
  Status grow(bool whole, std::uint32_t* grown) noexcept;
  std::uint32_t usable_pages(std::size_t c) const noexcept;
  std::optional<DeviceAddress> take_surplus_chunk() noexcept;  // under mutex_
  void note_chunk(std::uint32_t c) noexcept;  // files chunk c in partial_ / empty_; under mutex_
  Status take_injection(std::size_t pages) noexcept;  // under mutex_
  Status check_limit(std::size_t pages) const noexcept;  // under mutex_

  Backend& backend_;
  const std::size_t capacity_pages_;
  mutable std::mutex mutex_;
  std::vector<Chunk> chunks_;
  ChunkSet partial_;  // some pages used, some free
  ChunkSet empty_;    // every usable page free
  std::size_t in_use_ = 0;
  std::size_t backed_ = 0;  // chunks with memory
  std::size_t limit_pages_;  // <= capacity_pages_
  std::size_t invalid_frees_ = 0;
  std::int64_t alloc_pages_left_ = -1;
};

}  // namespace uhmm::detail
