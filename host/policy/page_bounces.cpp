#include "page_bounces.hpp"

namespace uhmm::detail {

PageBounces::~PageBounces() {
  for (Block* b : allocated_) delete b;
}

PageBounces::Verdict PageBounces::record(std::size_t page, std::uint32_t now_ms, const ThrashingSettings& s) {
  Block*& block = blocks_[page / kPagesPerBlock];
  if (block == nullptr) {
    auto fresh = std::make_unique<Block>();
    std::lock_guard lock(allocated_mutex_);
    allocated_.push_back(fresh.get());
    block = fresh.release();
  }
  History& h = (*block)[page % kPagesPerBlock];
  // Unsigned differences: the millisecond clock may wrap.
  if (h.cooling && now_ms - h.since_ms < s.cooldown_ms) {
    h.back_ms = now_ms;
    return Verdict::cooling;
  }
  if (h.cooling || h.bounces == 0 || now_ms - h.since_ms >= s.window_ms) h = History{now_ms, 0, false, now_ms};
  h.back_ms = now_ms;
  if (++h.bounces < s.bounces) return Verdict::calm;
  h = History{now_ms, 0, true, now_ms};
  return Verdict::detected;
}

bool PageBounces::cooling(std::size_t page, std::uint32_t now_ms, const ThrashingSettings& s,
                          std::uint32_t* back_for_ms) const noexcept {
  const Block* block = blocks_[page / kPagesPerBlock];
  if (block == nullptr) return false;
  const History& h = (*block)[page % kPagesPerBlock];
  if (!h.cooling || now_ms - h.since_ms >= s.cooldown_ms) return false;
  if (back_for_ms != nullptr) *back_for_ms = now_ms - h.back_ms;
  return true;
}

}  // namespace uhmm::detail
