// Anonymous private memory starting on a 2 MiB boundary, as every managed range
// does (blocks and compound runs line up with huge pages and device chunks).
#pragma once

#include <sys/mman.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include <fmt/format.h>

#include "map_count.hpp"
#include "uhmm/error.hpp"
#include "uhmm/types.hpp"

namespace uhmm::detail {

// Maps `bytes` with `prot`; throws OutOfMemory naming the cause.
inline std::byte* map_block_aligned(std::size_t bytes, int prot) {
  // Over-map by one block and trim.
  const std::size_t span = bytes + kBlockSize;
  void* raw = ::mmap(nullptr, span, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED)
    throw OutOfMemory(fmt::format("mmap of {} bytes for a managed range failed: {}", bytes,
                                  describe_mapping_failure(errno)));
  auto* start = static_cast<std::byte*>(raw);
  const auto misalign = reinterpret_cast<std::uintptr_t>(start) & (kBlockSize - 1);
  const std::size_t head = misalign == 0 ? 0 : kBlockSize - misalign;
  if (head != 0) ::munmap(start, head);
  std::byte* base = start + head;
  const std::size_t tail = span - head - bytes;
  if (tail != 0) ::munmap(base + bytes, tail);
  return base;
}

}  // namespace uhmm::detail
