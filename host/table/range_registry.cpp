#include "range_registry.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "uhmm/error.hpp"

namespace uhmm::detail {

RangeSpan::RangeSpan(std::shared_ptr<ManagedRange> range, std::size_t first, std::size_t count) noexcept
    : range_(std::move(range)), first_(first), count_(count) {
  if (range_) range_->begin_op();
}

RangeSpan& RangeSpan::operator=(RangeSpan&& other) noexcept {
  if (this != &other) {
    if (range_) range_->end_op();
    range_ = std::move(other.range_);
    first_ = other.first_;
    count_ = other.count_;
  }
  return *this;
}

RangeSpan::~RangeSpan() {
  if (range_) range_->end_op();
}

void RangeRegistry::add(std::shared_ptr<ManagedRange> range) {
  std::unique_lock lock(mutex_);
  max_bytes_ = std::max(max_bytes_, range->bytes());
  by_id_.emplace(range->id(), range);
  by_base_.emplace(reinterpret_cast<std::uintptr_t>(range->base()), std::move(range));
}

std::shared_ptr<ManagedRange> RangeRegistry::remove(const void* base, std::string_view call) {
  if (base == nullptr) throw Error(Errc::invalid_argument, fmt::format("{}: null pointer", call));
  std::unique_lock lock(mutex_);
  const auto it = starting_at(reinterpret_cast<std::uintptr_t>(base));
  if (it == by_base_.end()) {
    const auto inside = containing(reinterpret_cast<std::uintptr_t>(base));
    throw Error(Errc::unknown_range,
                inside ? fmt::format("{}: {} is inside the managed range at {} but does not start it", call,
                                     base, static_cast<const void*>(inside->base()))
                       : fmt::format("{}: {} is not a live managed range (never allocated, already freed, or "
                                     "unmapped by the application)",
                                     call, base));
  }
  auto range = std::move(it->second);
  by_base_.erase(it);
  by_id_.erase(range->id());
  return range;
}

RangeRegistry::ByBase::const_iterator RangeRegistry::starting_at(std::uintptr_t base) const {
  const auto [first, last] = by_base_.equal_range(base);
  for (auto it = first; it != last; ++it)
    if (!it->second->any_unmapped(0, 1)) return it;
  return first != last ? first : by_base_.end();
}

std::shared_ptr<ManagedRange> RangeRegistry::containing(std::uintptr_t addr) const {
  auto it = by_base_.upper_bound(addr);
  if (it == by_base_.begin()) return nullptr;
  --it;
  const auto* p = reinterpret_cast<const void*>(addr);
  auto live_at = [&](const ManagedRange& r) {
    return r.contains(p) && !r.any_unmapped(r.page_of(p), r.page_of(p) + 1);
  };
  if (live_at(*it->second)) return it->second;
  // A range allocated in a hole another range's owner unmapped lies inside
  // that range's span: look further down for the range that owns addr, else
  // name the one whose hole it is (resolve then says so).
  std::shared_ptr<ManagedRange> hole_of = it->second->contains(p) ? it->second : nullptr;
  while (it != by_base_.begin()) {
    --it;
    if (it->first + max_bytes_ <= addr) break;  // nothing further down reaches addr
    if (live_at(*it->second)) return it->second;
    if (!hole_of && it->second->contains(p)) hole_of = it->second;
  }
  return hole_of;
}

RangeSpan RangeRegistry::resolve(const void* p, std::size_t bytes, std::string_view call,
                                 bool wait_for_events) const {
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  if (p == nullptr) throw Error(Errc::invalid_argument, fmt::format("{}: null pointer", call));
  if (bytes == 0) throw Error(Errc::zero_length, fmt::format("{}: zero-length span at {}", call, p));
  if (wait_for_events) gate_.wait_applied();
  if ((addr & (kPageSize - 1)) != 0 || (bytes & (kPageSize - 1)) != 0)
    throw Error(Errc::not_aligned,
                fmt::format("{}: span [{}, +{:#x}) is not aligned to {}-byte pages", call, p, bytes, kPageSize));
  std::shared_lock lock(mutex_);
  auto range = containing(addr);
  if (!range)
    throw Error(Errc::out_of_range, fmt::format("{}: {} is not in any managed range", call, p));
  const std::uintptr_t range_end = reinterpret_cast<std::uintptr_t>(range->base()) + range->bytes();
  if (bytes > range_end - addr) {
    // Another range starting before the span ends means the span crosses into it.
    const auto next = by_base_.lower_bound(range_end);
    const bool into_other = next != by_base_.end() && next->first - addr < bytes;
    throw Error(into_other ? Errc::crosses_ranges : Errc::out_of_range,
                fmt::format("{}: span [{}, +{:#x}) runs past the end of its managed range [{}, +{:#x}){}", call, p,
                            bytes, static_cast<const void*>(range->base()), range->bytes(),
                            into_other ? " into another range" : ""));
  }
  if (range->any_unmapped(range->page_of(p), range->page_of(p) + bytes / kPageSize))
    throw Error(Errc::out_of_range,
                fmt::format("{}: span [{}, +{:#x}) was unmapped by the application (munmap or mremap of the "
                            "managed range at {})",
                            call, p, bytes, static_cast<const void*>(range->base())));
  return RangeSpan(range, range->page_of(p), bytes / kPageSize);
}

RangeSpan RangeRegistry::find(const void* addr) const noexcept {
  std::shared_lock lock(mutex_);
  auto range = containing(reinterpret_cast<std::uintptr_t>(addr));
  if (!range) return {};
  const std::size_t page = range->page_of(addr);
  return RangeSpan(std::move(range), page, 1);
}

RangeSpan RangeRegistry::find_by_id(std::uint32_t id) const noexcept {
  std::shared_lock lock(mutex_);
  const auto it = by_id_.find(id);
  if (it == by_id_.end()) return {};
  return RangeSpan(it->second, 0, it->second->npages());
}

std::size_t RangeRegistry::size_of(const void* base, std::string_view call) const {
  if (base == nullptr) throw Error(Errc::invalid_argument, fmt::format("{}: null pointer", call));
  gate_.wait_applied();
  std::shared_lock lock(mutex_);
  const auto it = starting_at(reinterpret_cast<std::uintptr_t>(base));
  if (it == by_base_.end())
    throw Error(Errc::unknown_range, fmt::format("{}: {} does not start a live managed range", call, base));
  return it->second->bytes();
}

std::vector<std::shared_ptr<ManagedRange>> RangeRegistry::overlapping(std::uintptr_t lo,
                                                                     std::uintptr_t hi) const noexcept {
  std::vector<std::shared_ptr<ManagedRange>> out;
  try {
    std::shared_lock lock(mutex_);
    for (auto it = by_base_.lower_bound(hi); it != by_base_.begin();) {
      --it;
      if (it->first + max_bytes_ <= lo) break;  // nothing further down reaches lo
      if (it->first + it->second->bytes() > lo) out.push_back(it->second);
    }
  } catch (const std::bad_alloc&) {
  }
  return out;
}

bool RangeRegistry::retire(const ManagedRange& range) noexcept {
  std::unique_lock lock(mutex_);
  const auto [first, last] = by_base_.equal_range(reinterpret_cast<std::uintptr_t>(range.base()));
  const auto it = std::find_if(first, last, [&](const auto& entry) { return entry.second.get() == &range; });
  if (it == last) return false;
  by_base_.erase(it);
  by_id_.erase(range.id());
  return true;
}

std::vector<std::shared_ptr<ManagedRange>> RangeRegistry::all() const {
  std::shared_lock lock(mutex_);
  std::vector<std::shared_ptr<ManagedRange>> out;
  for (const auto& [base, range] : by_base_) out.push_back(range);
  return out;
}

}  // namespace uhmm::detail
