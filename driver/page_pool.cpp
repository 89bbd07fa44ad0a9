#include "page_pool.hpp"

#include <algorithm>
#include <limits>
#include <utility>

#include <fmt/format.h>

#include "uhmm/detail/log.hpp"
#include "uhmm/detail/test_points.hpp"

namespace uhmm::detail {

std::atomic<void (*)()> test_points::pool_locked{nullptr};

namespace {

constexpr std::size_t kMaxPages = std::size_t{std::numeric_limits<DevicePageIndex>::max()} + 1;

std::size_t chunks_for(std::size_t pages) { return (pages + kPagesPerChunk - 1) / kPagesPerChunk; }

Status oom(std::string message) noexcept { return {Errc::out_of_memory, std::move(message)}; }
// The message made here: without memory for it, the code alone.
Status oom(const char* message) noexcept {
  try {
    return {Errc::out_of_memory, message};
  } catch (...) {
    return {Errc::out_of_memory, std::string()};
  }
}

}  // namespace

PagePool::PagePool(Backend& backend, std::size_t capacity_pages)
    : backend_(backend), capacity_pages_(std::min(capacity_pages, kMaxPages)),
      partial_(chunks_for(capacity_pages_)), empty_(chunks_for(capacity_pages_)), limit_pages_(capacity_pages_) {
  chunks_.reserve(chunks_for(capacity_pages_));
}

PagePool::~PagePool() {
  std::lock_guard lock(mutex_);
  if (in_use_ != 0)
    log().warn("device page pool destroyed with {} pages still in use", in_use_);
  for (const Chunk& chunk : chunks_)
    if (chunk.base != 0) backend_.free_chunk(chunk.base);
}

std::uint32_t PagePool::usable_pages(std::size_t c) const noexcept {
  return static_cast<std::uint32_t>(std::min(kPagesPerChunk, capacity_pages_ - c * kPagesPerChunk));
}

Status PagePool::grow(bool whole, std::uint32_t* grown) noexcept {
  // The lowest number without memory: one given back, else the next new one.
  std::size_t c = 0;
  while (c < chunks_.size() && (chunks_[c].base != 0 || (whole && usable_pages(c) != kPagesPerChunk))) ++c;
  if (c * kPagesPerChunk >= capacity_pages_ || (whole && usable_pages(c) != kPagesPerChunk)) {
    if (whole) return oom("device pool: no entirely free chunk for a 2 MiB run");
    try {
      return oom(fmt::format("device pool exhausted: {} of {} pages in use", in_use_, capacity_pages_));
    } catch (...) {
      return oom(std::string());
    }
  }
  try {
    Chunk chunk;
    chunk.usable = usable_pages(c);
    chunk.used.assign(kPagesPerChunk, false);
    chunk.free_slots.reserve(chunk.usable);
    // Lowest slot on top of the stack.
    for (std::uint32_t s = chunk.usable; s > 0; --s) chunk.free_slots.push_back(static_cast<std::uint16_t>(s - 1));
    Status status = backend_.allocate_chunk(&chunk.base);
    if (!status) {
      if (status.code == Errc::out_of_memory) {
        status.message = fmt::format("device pool cannot grow past {} pages ({} in use): {}",
                                     backed_ * kPagesPerChunk, in_use_, status.message);
      }
      return status;
    }
    // Reserved in the constructor: neither throws.
    if (c < chunks_.size())
      chunks_[c] = std::move(chunk);
    else
      chunks_.push_back(std::move(chunk));
    ++backed_;
    note_chunk(static_cast<std::uint32_t>(c));
    *grown = static_cast<std::uint32_t>(c);
    return Status::ok();
  } catch (...) {
    return oom("device pool: host memory exhausted while growing");
  }
}

void PagePool::note_chunk(std::uint32_t c) noexcept {
  const Chunk& chunk = chunks_[c];
  partial_.erase(c);
  empty_.erase(c);
  if (chunk.free_slots.size() == chunk.usable)
    empty_.insert(c);
  else if (!chunk.free_slots.empty())
    partial_.insert(c);
}

Status PagePool::take_injection(std::size_t pages) noexcept {
  test_points::at(test_points::pool_locked);
  if (alloc_pages_left_ < 0) return Status::ok();
  if (static_cast<std::size_t>(alloc_pages_left_) < pages)
    return oom("injected device page allocation failure");
  alloc_pages_left_ -= static_cast<std::int64_t>(pages);
  return Status::ok();
}

Status PagePool::check_limit(std::size_t pages) const noexcept {
  // At full capacity, grow() reports exhaustion in its own words.
  if (limit_pages_ == capacity_pages_ || in_use_ + pages <= limit_pages_) return Status::ok();
  try {
    return oom(fmt::format("device pool limited to {} pages: {} in use", limit_pages_, in_use_));
  } catch (...) {
    return oom(std::string());
  }
}

void PagePool::set_limit_pages(std::size_t pages) noexcept {
  std::lock_guard lock(mutex_);
  limit_pages_ = std::min(pages, capacity_pages_);
}

std::size_t PagePool::limit_pages() const noexcept {
  std::lock_guard lock(mutex_);
  return limit_pages_;
}

Status PagePool::allocate_page(DevicePageIndex* out) noexcept {
  if (out == nullptr) return {Errc::invalid_argument, "device pool: allocate_page: null output pointer"};
  std::lock_guard lock(mutex_);
  if (Status s = check_limit(1); !s) return s;
  if (Status s = take_injection(1); !s) return s;
  std::uint32_t c = 0;
  if (!partial_.empty()) {
    c = partial_.first();
  } else if (!empty_.empty()) {
    c = empty_.first();
  } else {
    if (Status s = grow(false, &c); !s) {
      if (alloc_pages_left_ >= 0) ++alloc_pages_left_;  // nothing was allocated
      return s;
    }
  }
  Chunk& chunk = chunks_[c];
  const std::uint16_t slot = chunk.free_slots.back();
  chunk.free_slots.pop_back();
  chunk.used[slot] = true;
  ++in_use_;
  note_chunk(c);
  *out = static_cast<DevicePageIndex>(std::size_t{c} * kPagesPerChunk + slot);
  return Status::ok();
}

Status PagePool::allocate_chunk(DevicePageIndex* first) noexcept {
  if (first == nullptr) return {Errc::invalid_argument, "device pool: allocate_chunk: null output pointer"};
  std::lock_guard lock(mutex_);
  if (Status s = check_limit(kPagesPerChunk); !s) return s;
  if (Status s = take_injection(kPagesPerChunk); !s) return s;
  std::uint32_t c = 0;
  // Only a chunk whose every slot is usable can hold a compound run.
  const auto whole = empty_.find_first([&](std::uint32_t e) { return chunks_[e].usable == kPagesPerChunk; });
  if (whole) {
    c = *whole;
  } else if (Status s = grow(true, &c); !s) {
    if (alloc_pages_left_ >= 0) alloc_pages_left_ += static_cast<std::int64_t>(kPagesPerChunk);
    return s;
  }
  Chunk& chunk = chunks_[c];
  chunk.free_slots.clear();
  chunk.used.assign(kPagesPerChunk, true);
  in_use_ += kPagesPerChunk;
  note_chunk(c);
  *first = static_cast<DevicePageIndex>(std::size_t{c} * kPagesPerChunk);
  return Status::ok();
}

void PagePool::free_page(DevicePageIndex page) noexcept {
  std::lock_guard lock(mutex_);
  const std::size_t c = page / kPagesPerChunk;
  const auto slot = static_cast<std::uint16_t>(page % kPagesPerChunk);
  if (c >= chunks_.size() || !chunks_[c].used[slot]) {
    ++invalid_frees_;
    log().error("device pool: free of device page {}, which is not in use (ignored)", page);
    return;
  }
  Chunk& chunk = chunks_[c];
  chunk.used[slot] = false;
  chunk.free_slots.push_back(slot);  // capacity is usable: does not throw
  --in_use_;
  note_chunk(static_cast<std::uint32_t>(c));
}

void PagePool::free_pages(std::span<const DevicePageIndex> pages) noexcept {
  for (DevicePageIndex page : pages) free_page(page);
}

DeviceAddress PagePool::address_of(DevicePageIndex page) const noexcept {
  std::lock_guard lock(mutex_);
  const std::size_t c = page / kPagesPerChunk;
  const std::size_t slot = page % kPagesPerChunk;
  if (c >= chunks_.size() || !chunks_[c].used[slot]) return 0;
  return chunks_[c].base + slot * kPageSize;
}

bool PagePool::in_use(DevicePageIndex page) const noexcept { return address_of(page) != 0; }

std::size_t PagePool::pages_in_use() const noexcept {
  std::lock_guard lock(mutex_);
  return in_use_;
}

std::size_t PagePool::chunks() const noexcept {
  std::lock_guard lock(mutex_);
  return backed_;
}

std::optional<DeviceAddress> PagePool::take_surplus_chunk() noexcept {
  if (backed_ <= chunks_for(limit_pages_) || empty_.empty()) return std::nullopt;
  std::uint32_t highest = 0;
  (void)empty_.find_first([&](std::uint32_t c) {
    highest = c;
    return false;
  });
  Chunk& chunk = chunks_[highest];
  const DeviceAddress base = std::exchange(chunk.base, 0);
  chunk.free_slots.clear();
  empty_.erase(highest);
  --backed_;
  return base;
}

std::size_t PagePool::release_free_chunks() noexcept {
  std::size_t released = 0;
  for (;;) {
    std::optional<DeviceAddress> base;
    {
      std::lock_guard lock(mutex_);
      base = take_surplus_chunk();
    }
    if (!base) return released;
    // Outside the mutex: a GPU backend's free may wait for the device.
    backend_.free_chunk(*base);
    ++released;
  }
}

std::size_t PagePool::free_chunks() const noexcept {
  std::lock_guard lock(mutex_);
  return empty_.size();
}

std::size_t PagePool::invalid_frees() const noexcept {
  std::lock_guard lock(mutex_);
  return invalid_frees_;
}

void PagePool::set_alloc_pages_left(std::int64_t pages) noexcept {
  std::lock_guard lock(mutex_);
  alloc_pages_left_ = pages < 0 ? -1 : pages;
}

std::int64_t PagePool::alloc_pages_left() const noexcept {
  std::lock_guard lock(mutex_);
  return alloc_pages_left_;
}

Status PagePool::validate() const {
  std::lock_guard lock(mutex_);
  const auto fail = [](std::string message) { return Status{Errc::device_error, "device pool: " + message}; };
  std::size_t used_total = 0;
  std::size_t usable_total = 0;
  std::size_t backed = 0;
  for (std::size_t c = 0; c < chunks_.size(); ++c) {
    const Chunk& chunk = chunks_[c];
    const auto c32 = static_cast<std::uint32_t>(c);
    if (chunk.base == 0) {  // given back: no page, in no set
      if (!chunk.free_slots.empty() || std::find(chunk.used.begin(), chunk.used.end(), true) != chunk.used.end() ||
          empty_.contains(c32) || partial_.contains(c32))
        return fail(fmt::format("chunk {} was given back but has pages or is filed as usable", c));
      continue;
    }
    ++backed;
    if (chunk.base % kChunkSize != 0)
      return fail(fmt::format("chunk {} has base {:#x}, not a chunk-aligned address", c, chunk.base));
    if (chunk.usable == 0 || chunk.usable > kPagesPerChunk)
      return fail(fmt::format("chunk {} has {} usable pages", c, chunk.usable));
    if (chunk.used.size() != kPagesPerChunk)
      return fail(fmt::format("chunk {} has a bitmap of {} slots", c, chunk.used.size()));
    std::vector<bool> on_free_list(kPagesPerChunk, false);
    for (std::uint16_t slot : chunk.free_slots) {
      if (slot >= chunk.usable) return fail(fmt::format("chunk {}: free slot {} is not usable", c, slot));
      if (on_free_list[slot]) return fail(fmt::format("chunk {}: slot {} is twice on the free list", c, slot));
      if (chunk.used[slot]) return fail(fmt::format("chunk {}: slot {} is free and in use", c, slot));
      on_free_list[slot] = true;
    }
    std::size_t used = 0;
    for (std::size_t slot = 0; slot < kPagesPerChunk; ++slot) {
      if (chunk.used[slot]) {
        if (slot >= chunk.usable) return fail(fmt::format("chunk {}: unusable slot {} is in use", c, slot));
        ++used;
      } else if (slot < chunk.usable && !on_free_list[slot]) {
        return fail(fmt::format("chunk {}: slot {} is neither in use nor on the free list (leaked)", c, slot));
      }
    }
    const bool is_empty = used == 0;
    const bool is_partial = used != 0 && used != chunk.usable;
    if (empty_.contains(c32) != is_empty)
      return fail(fmt::format("chunk {} ({} of {} pages used) is {}in the free-chunk set", c, used, chunk.usable,
                              is_empty ? "not " : ""));
    if (partial_.contains(c32) != is_partial)
      return fail(fmt::format("chunk {} ({} of {} pages used) is {}in the partly-used set", c, used,
                              chunk.usable, is_partial ? "not " : ""));
    used_total += used;
    usable_total += chunk.usable;
  }
  const auto beyond = [&](std::uint32_t c) { return c >= chunks_.size(); };
  if (const auto c = empty_.find_first(beyond))
    return fail(fmt::format("free-chunk set names chunk {} of {}", *c, chunks_.size()));
  if (const auto c = partial_.find_first(beyond))
    return fail(fmt::format("partly-used set names chunk {} of {}", *c, chunks_.size()));
  if (used_total != in_use_)
    return fail(fmt::format("{} pages are marked in use but the count says {}", used_total, in_use_));
  if (backed != backed_)
    return fail(fmt::format("{} chunks have memory but the count says {}", backed, backed_));
  if (usable_total > capacity_pages_)
    return fail(fmt::format("{} usable pages exceed the capacity of {}", usable_total, capacity_pages_));
  return Status::ok();
}

}  // namespace uhmm::detail
