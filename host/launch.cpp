// Context::launch: a kernel over managed spans. The spans are migrated to the
// device, their pages locked for the kernel's duration (CPU accesses park
// until it ends, migrations skip them) and a device page table is built for
// each; then the kernel runs on the device's stream.
#include <algorithm>

#include <fmt/format.h>

#include "context_impl.hpp"
#include "read_mostly.hpp"
#include "uhmm/detail/log.hpp"

namespace uhmm {
namespace {

constexpr std::size_t kMigrateTries = 4;

// The pages of one span, locked on the device for a kernel.
struct HeldSpan {
  detail::RangeSpan span;
  std::vector<std::uint64_t> table;  // device address per page, 0 when not resident
  std::vector<std::size_t> held;     // pages this launch locked
};

}  // namespace

void Context::launch_impl(OwnerId device, std::size_t n, std::span<const SpanRequest> spans, const LaunchBody& body) {
  auto& ctx = *impl_;
  detail::Device& dev = ctx.device(device, "launch");
  if ((dev.info().capabilities & kCapHostKernels) == 0)
    throw Error(Errc::invalid_argument, fmt::format("launch: the {} backend runs no host kernels", dev.info().backend));
  if (!body) throw Error(Errc::invalid_argument, "launch: empty kernel");

  std::vector<HeldSpan> held(spans.size());
  std::vector<DevicePageTable> tables(spans.size());
  // Resolve every span before anything moves, so bad input changes nothing.
  std::vector<std::pair<std::byte*, std::size_t>> pages(spans.size());
  for (std::size_t k = 0; k < spans.size(); ++k) {
    if (spans[k].data == nullptr || spans[k].bytes == 0)
      throw Error(Errc::invalid_argument, fmt::format("launch: span {} is empty or null", k));
    const auto addr = reinterpret_cast<std::uintptr_t>(spans[k].data);
    const std::uintptr_t lo = addr & ~(kPageSize - 1);
    const std::uintptr_t hi = (addr + spans[k].bytes + kPageSize - 1) & ~(kPageSize - 1);
    pages[k] = {reinterpret_cast<std::byte*>(lo), hi - lo};
    held[k].span = ctx.ranges.resolve(pages[k].first, pages[k].second, "launch");
  }

  auto release = [&] {
    for (auto& h : held) {
      if (h.span) ctx.unlock(h.span.range(), h.held);
      h.held.clear();
    }
  };
  try {
    for (std::size_t k = 0; k < spans.size(); ++k) {
      auto& h = held[k];
      auto& table = h.span.range().table();
      h.table.assign(h.span.count(), 0);
      // Migrate, then lock what arrived. Another thread's eviction may take
      // pages between the two steps (they are unlocked then): migrate again
      // while that brings pages, so a kernel whose spans fit gets them all.
      for (std::size_t tries = 0; tries < kMigrateTries && h.held.size() < h.span.count(); ++tries) {
        const std::size_t before = h.held.size();
        ctx.migrate_to_device(pages[k].first, pages[k].second, dev.owner());
        const std::uint64_t now = ctx.recency->tick();  // a kernel's spans are its working set: recently used
        std::vector<std::size_t> collapse;  // read-mostly pages this kernel may write
        for (std::size_t q = h.span.first(); q < h.span.end(); ++q) {
          std::lock_guard lock(table.block_mutex(detail::MirrorTable::block_of(q)));
          detail::MirrorEntry& e = table.entry(q);
          const bool dup = e.residency() == Residency::Duplicated;
          if ((e.residency() != Residency::Device && !dup) || e.device_page().owner != dev.owner() || e.locked())
            continue;
          e.set(detail::MirrorEntry::kLocked | (dup && !spans[k].writable ? 0 : detail::MirrorEntry::kDirty));
          h.held.push_back(q);
          if (dup && spans[k].writable) collapse.push_back(q);
          ctx.recency->touch(e.device_page(), now);
          h.table[q - h.span.first()] = dev.address_of(e.device_page().index);
        }
        detail::collapse_to_device(ctx, h.span.range(), collapse);
        if (h.held.size() == before) break;
      }
      std::sort(h.held.begin(), h.held.end());
      tables[k] = DevicePageTable{h.table.data(), h.table.size(),
                                  static_cast<std::size_t>(static_cast<const std::byte*>(spans[k].data) - pages[k].first),
                                  spans[k].bytes};
    }

    Backend& backend = dev.backend();
    StreamId stream = 0;
    if (Status s = backend.create_stream(&stream); !s) s.raise_if_error();
    BatchResult result;
    Status s = backend.launch(
        stream, n, [&body, &tables](std::size_t first, std::size_t last) { body(first, last, tables); }, &result);
    const Status synced = backend.synchronize(stream);
    backend.destroy_stream(stream);
    if (s) s = synced;
    if (s) s = result.status;
    release();
    s.raise_if_error();
  } catch (...) {
    release();
    throw;
  }
}

}  // namespace uhmm
