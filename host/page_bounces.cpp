#include "page_bounces.hpp"

namespace uhmm::detail {

PageBounces::Verdict PageBounces::record(std::size_t page, std::uint32_t now_ms, const ThrashingSettings& s) {
  auto& block = blocks_[page / kPagesPerBlock];
  if (!block) block = std::make_unique<Block>();
  History& h = (*block)[page % kPagesPerBlock];
  // Unsigned differences: the millisecond clock may wrap.
  if (h.cooling && now_ms - h.since_ms < s.cooldown_ms) return Verdict::cooling;
  if (h.cooling || h.bounces == 0 || now_ms - h.since_ms >= s.window_ms) h = History{now_ms, 0, false};
  if (++h.bounces < s.bounces) return Verdict::calm;
  h = History{now_ms, 0, true};
  return Verdict::detected;
}

bool PageBounces::cooling(std::size_t page, std::uint32_t now_ms, const ThrashingSettings& s) const noexcept {
  const auto& block = blocks_[page / kPagesPerBlock];
  if (!block) return false;
  const History& h = (*block)[page % kPagesPerBlock];
  return h.cooling && now_ms - h.since_ms < s.cooldown_ms;
}

}  // namespace uhmm::detail
