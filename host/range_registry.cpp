#include "range_registry.hpp"

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
  by_id_.emplace(range->id(), range);
  by_base_.emplace(reinterpret_cast<std::uintptr_t>(range->base()), std::move(range));
}

std::shared_ptr<ManagedRange> RangeRegistry::remove(const void* base, std::string_view call) {
  if (base == nullptr) throw Error(Errc::invalid_argument, fmt::format("{}: null pointer", call));
  std::unique_lock lock(mutex_);
  const auto it = by_base_.find(reinterpret_cast<std::uintptr_t>(base));
  if (it == by_base_.end()) {
    const auto inside = containing(reinterpret_cast<std::uintptr_t>(base));
    throw Error(Errc::unknown_range,
                inside ? fmt::format("{}: {} is inside the managed range at {} but does not start it", call,
                                     base, static_cast<const void*>(inside->base()))
                       : fmt::format("{}: {} is not a live managed range (never allocated, or already freed)",
                                     call, base));
  }
  auto range = std::move(it->second);
  by_base_.erase(it);
  by_id_.erase(range->id());
  return range;
}

std::shared_ptr<ManagedRange> RangeRegistry::containing(std::uintptr_t addr) const {
  auto it = by_base_.upper_bound(addr);
  if (it == by_base_.begin()) return nullptr;
  --it;
  return it->second->contains(reinterpret_cast<const void*>(addr)) ? it->second : nullptr;
}

RangeSpan RangeRegistry::resolve(const void* p, std::size_t bytes, std::string_view call) const {
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  if (p == nullptr) throw Error(Errc::invalid_argument, fmt::format("{}: null pointer", call));
  if (bytes == 0) throw Error(Errc::zero_length, fmt::format("{}: zero-length span at {}", call, p));
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
  std::shared_lock lock(mutex_);
  const auto it = by_base_.find(reinterpret_cast<std::uintptr_t>(base));
  if (it == by_base_.end())
    throw Error(Errc::unknown_range, fmt::format("{}: {} does not start a live managed range", call, base));
  return it->second->bytes();
}

std::vector<std::shared_ptr<ManagedRange>> RangeRegistry::all() const {
  std::shared_lock lock(mutex_);
  std::vector<std::shared_ptr<ManagedRange>> out;
  for (const auto& [base, range] : by_base_) out.push_back(range);
  return out;
}

}  // namespace uhmm::detail
