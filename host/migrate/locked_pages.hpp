// The pages one operation has LOCKED in one range, unlocked through
// unlock_pages (LOCKED cleared, the unlock announced, their faults
// woken) when the operation is done with them or, at the latest, when it
// unwinds: an exception between locking and unlocking (host memory running
// out) never leaves a page LOCKED, which would park every later fault on it
// forever (docs/DESIGN.md, "When an operation fails part way").
//
// Room is reserved before the first page is locked, so taking a page never
// allocates: no page is ever locked without being recorded here.
#pragma once

#include <cassert>
#include <cstddef>
#include <span>
#include <vector>

#include "migration.hpp"
#include "mirror_entry.hpp"

namespace uhmm::detail {

class LockedPages {
 public:
  LockedPages(Mm& ctx, ManagedRange& range) noexcept : ctx_(ctx), range_(range) {}
  ~LockedPages() { unlock(); }
  LockedPages(const LockedPages&) = delete;
  LockedPages& operator=(const LockedPages&) = delete;

  // Room for `count` pages. Before locking any: throws std::bad_alloc with
  // nothing locked.
  void reserve(std::size_t count) { pages_.reserve(count); }
  // Sets LOCKED on `page`, whose entry is `e` (the caller holds its block
  // mutex), and records it. Pre: room reserved; pages taken in ascending order.
  void take(MirrorEntry& e, std::size_t page) noexcept {
    assert(pages_.size() < pages_.capacity());
    e.set(MirrorEntry::kLocked);
    pages_.push_back(page);  // within the reserved room: never allocates
  }
  std::span<const std::size_t> pages() const noexcept { return pages_; }
  bool empty() const noexcept { return pages_.empty(); }
  std::size_t size() const noexcept { return pages_.size(); }
  // Leaves the pages `handed_over` selects LOCKED: the caller holds them now.
  template <class Pred>
  void hand_over_if(Pred handed_over) noexcept {
    std::erase_if(pages_, handed_over);
  }
  // Unlocks every page taken (an operation done with them, or unwinding).
  void unlock() noexcept {
    unlock_pages(ctx_, range_, pages_);
    pages_.clear();
  }

 private:
  Mm& ctx_;
  ManagedRange& range_;
  std::vector<std::size_t> pages_;
};

}  // namespace uhmm::detail
