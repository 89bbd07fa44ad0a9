#include "uhmm/managed_memory_resource.hpp"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "size_classes.hpp"
#include "uhmm/detail/log.hpp"
#include "uhmm/error.hpp"

namespace uhmm {

using interop::kSizeClasses;
using interop::kSlabBytes;

namespace {

constexpr std::size_t kArenaBytes = std::size_t{32} << 20;  // one managed range, 128 slabs
constexpr std::size_t kSlabsPerArena = kArenaBytes / kSlabBytes;
constexpr std::size_t kNoClass = ~std::size_t{0};

// 256 KiB of an arena serving one size class; which slots are free is kept
// here, not in the managed memory (reading it would fault pages back).
struct Slab {
  std::byte* base = nullptr;
  std::size_t size_class = kNoClass;
  std::size_t slot_bytes = 0, slots = 0, used = 0;
  std::vector<std::uint64_t> free;  // bit set: slot free
  bool listed = false;              // in its class's list of slabs with room

  void format(std::size_t c) {
    size_class = c;
    slot_bytes = kSizeClasses[c];
    slots = kSlabBytes / slot_bytes;
    used = 0;
    free.assign((slots + 63) / 64, ~std::uint64_t{0});
    if (slots % 64 != 0) free.back() = (std::uint64_t{1} << (slots % 64)) - 1;
  }
  bool full() const noexcept { return used == slots; }
  void* take() noexcept {
    for (std::size_t w = 0; w < free.size(); ++w)
      if (free[w] != 0) {
        const auto bit = static_cast<std::size_t>(std::countr_zero(free[w]));
        free[w] &= free[w] - 1;
        ++used;
        return base + (w * 64 + bit) * slot_bytes;
      }
    return nullptr;
  }
  // False when p is no slot of this slab, or a free one (a double free).
  bool give_back(const std::byte* p) noexcept {
    const auto offset = static_cast<std::size_t>(p - base);
    if (size_class == kNoClass || offset % slot_bytes != 0 || offset / slot_bytes >= slots) return false;
    const std::size_t slot = offset / slot_bytes;
    std::uint64_t& word = free[slot / 64];
    const std::uint64_t bit = std::uint64_t{1} << (slot % 64);
    if ((word & bit) != 0) return false;
    word |= bit;
    --used;
    return true;
  }
};

struct Arena {
  std::byte* base = nullptr;
  std::size_t carved = 0;  // slabs handed out so far
  std::vector<Slab> slabs = std::vector<Slab>(kSlabsPerArena);
};

}  // namespace

struct managed_memory_resource::Arenas {
  // A slab with room for class c, last in with_room[c]: one listed, an
  // unused one, or a new one (a new arena if need be). Throws what
  // Context::allocate does.
  Slab& slab_with_room(Context& ctx, std::size_t c);
  Slab& carve(Context& ctx);
  // An empty slab that is not its class's only one gives its pages back.
  void retire_if_empty(Context& ctx, Slab& slab) noexcept;

  std::mutex mutex;  // guards everything below
  std::map<std::uintptr_t, Arena> arenas;  // by base
  // Per class: its slabs with room, and how many slabs it has (each list's
  // capacity: a slab getting room back is listed without allocating).
  std::vector<std::vector<Slab*>> with_room = std::vector<std::vector<Slab*>>(kSizeClasses.size());
  std::vector<std::size_t> slabs_of = std::vector<std::size_t>(kSizeClasses.size());
  std::vector<Slab*> unused;                            // empty, pages discarded
  std::unordered_map<const void*, std::size_t> large;  // base -> bytes
};

managed_memory_resource::managed_memory_resource(Context& context)
    : context_(context), arenas_(std::make_unique<Arenas>()) {}

managed_memory_resource::~managed_memory_resource() { release(); }

void managed_memory_resource::release() noexcept {
  std::lock_guard lock(arenas_->mutex);
  auto free_range = [&](void* base) {
    try {
      context_.free(base);
    } catch (const Error& e) {
      detail::log().error("managed_memory_resource: freeing range {} failed: {}", base, e.what());
    }
  };
  for (auto& [base, arena] : arenas_->arenas) free_range(arena.base);
  for (auto& [base, bytes] : arenas_->large) free_range(const_cast<void*>(base));
  arenas_->arenas.clear();
  arenas_->large.clear();
  for (auto& list : arenas_->with_room) list.clear();
  std::fill(arenas_->slabs_of.begin(), arenas_->slabs_of.end(), 0);
  arenas_->unused.clear();
}

bool managed_memory_resource::owns_range(const void* base) const {
  std::lock_guard lock(arenas_->mutex);
  return arenas_->arenas.contains(reinterpret_cast<std::uintptr_t>(base)) || arenas_->large.contains(base);
}

void* managed_memory_resource::do_allocate(std::size_t bytes, std::size_t alignment) {
  if (alignment == 0 || !std::has_single_bit(alignment) || alignment > kBlockSize)
    throw Error(Errc::invalid_argument,
                fmt::format("managed_memory_resource: alignment {} is not a power of two up to 2 MiB", alignment));
  const auto c = alignment <= kPageSize && bytes <= kLargeAllocation ? interop::size_class(bytes, alignment)
                                                                      : std::nullopt;
  std::lock_guard lock(arenas_->mutex);
  if (!c) {
    arenas_->large.reserve(arenas_->large.size() + 1);  // no throw after the range exists
    void* p = context_.allocate(bytes);
    arenas_->large.emplace(p, bytes);
    return p;
  }
  Slab& slab = arenas_->slab_with_room(context_, *c);
  void* p = slab.take();
  if (slab.full()) {
    slab.listed = false;
    arenas_->with_room[*c].pop_back();  // slab_with_room returns the list's last slab
  }
  return p;
}

void managed_memory_resource::do_deallocate(void* p, std::size_t bytes, std::size_t /*alignment*/) {
  std::lock_guard lock(arenas_->mutex);
  if (const auto large = arenas_->large.find(p); large != arenas_->large.end()) {
    arenas_->large.erase(large);
    try {
      context_.free(p);
    } catch (const Error& e) {
      detail::log().error("managed_memory_resource: freeing range {} failed: {}", p, e.what());
    }
    return;
  }
  const auto at = reinterpret_cast<std::uintptr_t>(p);
  auto it = arenas_->arenas.upper_bound(at);
  Slab* slab = nullptr;
  if (it != arenas_->arenas.begin() && at < std::prev(it)->first + kArenaBytes)
    slab = &std::prev(it)->second.slabs[(at - std::prev(it)->first) / kSlabBytes];
  if (slab == nullptr || !slab->give_back(static_cast<const std::byte*>(p))) {
    detail::log().error("managed_memory_resource: deallocate({}, {}) of memory it did not allocate or freed already; "
                        "ignored",
                        p, bytes);
    return;
  }
  if (!slab->listed) {
    arenas_->with_room[slab->size_class].push_back(slab);  // capacity reserved: cannot throw
    slab->listed = true;
  }
  arenas_->retire_if_empty(context_, *slab);
}

void managed_memory_resource::Arenas::retire_if_empty(Context& ctx, Slab& slab) noexcept {
  // Its class's only slab stays: a loop allocating and freeing one object
  // would otherwise discard pages every time.
  if (slab.used != 0 || slabs_of[slab.size_class] == 1) return;
  std::erase(with_room[slab.size_class], &slab);
  --slabs_of[slab.size_class];
  slab.listed = false;
  slab.size_class = kNoClass;
  try {
    ctx.discard(slab.base, kSlabBytes);  // freed memory need not be kept, on the host or a device
  } catch (const Error& e) {
    detail::log().warn("managed_memory_resource: discarding an empty slab failed ({}); its pages stay", e.what());
  }
  unused.push_back(&slab);  // capacity reserved when its arena was made: cannot throw
}

Slab& managed_memory_resource::Arenas::slab_with_room(Context& ctx, std::size_t c) {
  auto& list = with_room[c];
  if (!list.empty()) return *list.back();
  list.reserve(slabs_of[c] + 1);
  Slab* slab = nullptr;
  if (!unused.empty()) {
    slab = unused.back();
    unused.pop_back();
  } else {
    slab = &carve(ctx);
  }
  slab->format(c);
  ++slabs_of[c];
  slab->listed = true;
  list.push_back(slab);
  return *slab;
}

Slab& managed_memory_resource::Arenas::carve(Context& ctx) {
  auto it = std::find_if(arenas.begin(), arenas.end(),
                         [](const auto& entry) { return entry.second.carved < kSlabsPerArena; });
  if (it == arenas.end()) {
    unused.reserve(unused.size() + kSlabsPerArena);
    Arena arena;
    arena.base = static_cast<std::byte*>(ctx.allocate(kArenaBytes));
    try {
      it = arenas.emplace(reinterpret_cast<std::uintptr_t>(arena.base), std::move(arena)).first;
    } catch (...) {
      ctx.free(arena.base);
      throw;
    }
  }
  Arena& arena = it->second;
  Slab& slab = arena.slabs[arena.carved];
  slab.base = arena.base + arena.carved * kSlabBytes;
  ++arena.carved;
  return slab;
}

}  // namespace uhmm
