// The C API's managed memory: allocation, prefetch, advice and range
// attributes, over the default context.
#include <cstdint>
#include <limits>
#include <mutex>
#include <optional>

#include <fmt/format.h>

#include "c_errors.hpp"
#include "default_state.hpp"

using namespace uhmm;
using namespace uhmm::interop;

namespace {

// [ptr, ptr + bytes) rounded out to whole pages, as CUDA applies advice and
// prefetches to the pages a span touches.
struct PageSpan {
  std::uintptr_t lo = 0, hi = 0;
  void* base() const noexcept { return reinterpret_cast<void*>(lo); }
  std::size_t bytes() const noexcept { return hi - lo; }
};

PageSpan page_span(const void* ptr, std::size_t bytes, const char* call) {
  const auto p = reinterpret_cast<std::uintptr_t>(ptr);
  if (ptr == nullptr) throw CFailure(uhmmErrorInvalidValue, fmt::format("{}: the pointer is null", call));
  if (bytes == 0) throw CFailure(uhmmErrorInvalidValue, fmt::format("{}: the size is zero", call));
  if (bytes > std::numeric_limits<std::uintptr_t>::max() - p - kPageSize)
    throw CFailure(uhmmErrorInvalidValue, fmt::format("{}: {} bytes from {} overflow the address space", call, bytes, ptr));
  const std::uintptr_t mask = kPageSize - 1;
  return {p & ~mask, (p + bytes + mask) & ~mask};
}

// A device ordinal or uhmmCpuDeviceId as a location.
Location location_of(const DefaultSession& s, int device) {
  if (device == uhmmCpuDeviceId) return Location::host();
  return Location::device(s.owner_of(device));
}

// A location as a device ordinal, uhmmCpuDeviceId or uhmmInvalidDeviceId.
int ordinal_of(const Context& ctx, Location where) {
  if (where.is_host()) return uhmmCpuDeviceId;
  for (std::size_t i = 0; where.is_device() && i < ctx.device_count(); ++i)
    if (ctx.device_owner(i) == where.owner) return static_cast<int>(i);
  return uhmmInvalidDeviceId;
}

Advice advice_of(uhmmMemoryAdvise advice) {
  switch (advice) {
    case uhmmMemAdviseSetReadMostly: return Advice::set_read_mostly;
    case uhmmMemAdviseUnsetReadMostly: return Advice::unset_read_mostly;
    case uhmmMemAdviseSetPreferredLocation: return Advice::set_preferred_location;
    case uhmmMemAdviseUnsetPreferredLocation: return Advice::unset_preferred_location;
    case uhmmMemAdviseSetAccessedBy: return Advice::set_accessed_by;
    case uhmmMemAdviseUnsetAccessedBy: return Advice::unset_accessed_by;
  }
  throw CFailure(uhmmErrorInvalidValue, fmt::format("uhmmMemAdvise: {} is no advice", static_cast<int>(advice)));
}

// The location an advice call names (Location{} where it takes none).
Location advice_location(const DefaultSession& s, Advice advice, int device) {
  switch (advice) {
    case Advice::set_preferred_location: return location_of(s, device);
    case Advice::set_accessed_by:
    case Advice::unset_accessed_by:
      if (device == uhmmCpuDeviceId)
        throw CFailure(uhmmErrorNotSupported,
                       "uhmmMemAdvise: accessed-by names a device; the CPU reaches every managed page already");
      return location_of(s, device);
    default: return {};
  }
}

// Every page's advice in the span, folded by `fold(page advice)`.
template <class Fold>
void for_each_page_advice(const Context& ctx, PageSpan span, Fold&& fold) {
  for (std::uintptr_t a = span.lo; a < span.hi; a += kPageSize) fold(ctx.advice(reinterpret_cast<const void*>(a)));
}

void require_int(std::size_t data_size, const char* what) {
  if (data_size != sizeof(int))
    throw CFailure(uhmmErrorInvalidValue,
                   fmt::format("uhmmMemRangeGetAttribute: {} is one int: dataSize must be {}", what, sizeof(int)));
}

void read_attribute(DefaultSession& s, void* data, std::size_t data_size, uhmmMemRangeAttribute attribute,
                    PageSpan span) {
  int* out = static_cast<int*>(data);
  switch (attribute) {
    case uhmmMemRangeAttributeReadMostly: {
      require_int(data_size, "read-mostly");
      bool all = true;
      for_each_page_advice(s.context, span, [&](const RangeAdvice& a) { all = all && a.read_mostly; });
      *out = all ? 1 : 0;
      return;
    }
    case uhmmMemRangeAttributePreferredLocation: {
      require_int(data_size, "the preferred location");
      std::optional<Location> common;
      bool same = true;
      for_each_page_advice(s.context, span, [&](const RangeAdvice& a) {
        if (!common) common = a.preferred;
        same = same && *common == a.preferred;
      });
      *out = same && common ? ordinal_of(s.context, *common) : uhmmInvalidDeviceId;
      return;
    }
    case uhmmMemRangeAttributeAccessedBy: {
      if (data_size == 0 || data_size % sizeof(int) != 0)
        throw CFailure(uhmmErrorInvalidValue, "uhmmMemRangeGetAttribute: accessed-by fills ints: dataSize must be a "
                                              "non-zero multiple of sizeof(int)");
      std::uint64_t all = ~std::uint64_t{0};
      for_each_page_advice(s.context, span, [&](const RangeAdvice& a) { all &= a.accessed_by; });
      const std::size_t slots = data_size / sizeof(int);
      std::size_t n = 0;
      for (std::size_t i = 0; i < s.context.device_count() && n < slots; ++i) {
        const OwnerId owner = s.context.device_owner(i);
        if (owner <= 64 && ((all >> (owner - 1)) & 1) != 0) out[n++] = static_cast<int>(i);
      }
      for (; n < slots; ++n) out[n] = uhmmInvalidDeviceId;
      return;
    }
    case uhmmMemRangeAttributeLastPrefetchLocation: {
      require_int(data_size, "the last prefetch location");
      s.context.advice(span.base());  // not managed memory: an error, as for the other attributes
      std::lock_guard lock(s.mutex);
      *out = s.history.last(span.lo, span.hi);
      return;
    }
  }
  throw CFailure(uhmmErrorInvalidValue,
                 fmt::format("uhmmMemRangeGetAttribute: {} is no attribute", static_cast<int>(attribute)));
}

// A CUDA 13 location as a device ordinal or uhmmCpuDeviceId.
int device_of(uhmmMemLocation location, const char* call) {
  switch (location.type) {
    case uhmmMemLocationTypeDevice: return location.id;
    case uhmmMemLocationTypeHost:
    case uhmmMemLocationTypeHostNumaCurrent: return uhmmCpuDeviceId;
    case uhmmMemLocationTypeHostNuma:
      throw CFailure(uhmmErrorNotSupported, fmt::format("{}: uhmm does not place pages on NUMA nodes", call));
    case uhmmMemLocationTypeInvalid: break;
  }
  throw CFailure(uhmmErrorInvalidValue,
                 fmt::format("{}: location type {} is no location", call, static_cast<int>(location.type)));
}

uhmmError_t prefetch(const void* ptr, std::size_t bytes, int device, uhmmStream_t stream, const char* call) {
  const PageSpan span = page_span(ptr, bytes, call);
  SessionUse s;
  const Location to = location_of(*s, device);
  const std::shared_ptr<uhmmStream_st> queue = s->stream(stream);
  if (queue == nullptr) return fail(uhmmErrorInvalidResourceHandle, fmt::format("{}: no such stream", call).c_str());
  queue->submit(s->context.prefetch_async(queue->stream, span.base(), span.bytes(), to));
  std::lock_guard lock(s->mutex);
  s->history.record(span.lo, span.hi, device);
  return uhmmSuccess;
}

uhmmError_t advise(const void* ptr, std::size_t bytes, uhmmMemoryAdvise advice, int device, const char* call) {
  const PageSpan span = page_span(ptr, bytes, call);
  const Advice what = advice_of(advice);
  SessionUse s;
  s->context.advise(span.base(), span.bytes(), what, advice_location(*s, what, device));
  return uhmmSuccess;
}

}  // namespace

extern "C" {

uhmmError_t uhmmMallocManaged(void** ptr, std::size_t bytes, unsigned int flags) {
  return c_call([&] {
    if (ptr == nullptr) return fail(uhmmErrorInvalidValue, "uhmmMallocManaged: ptr is null");
    if (bytes == 0) return fail(uhmmErrorInvalidValue, "uhmmMallocManaged: the size is zero");
    if (flags == uhmmMemAttachHost)
      return fail(uhmmErrorNotSupported, "uhmmMallocManaged: uhmmMemAttachHost: every managed range is attached "
                                         "globally in uhmm (uhmmMemAttachGlobal)");
    if (flags != uhmmMemAttachGlobal)
      return fail(uhmmErrorInvalidValue,
                  fmt::format("uhmmMallocManaged: flags {:#x} are not uhmmMemAttachGlobal", flags).c_str());
    SessionUse s;
    *ptr = s->context.allocate(bytes);
    return uhmmSuccess;
  });
}

uhmmError_t uhmmFree(void* ptr) {
  return c_call([&] {
    if (ptr == nullptr) return uhmmSuccess;
    SessionUse s;
    if (s->resource->owns_range(ptr))
      return fail(uhmmErrorInvalidValue, "uhmmFree: this range belongs to the default managed_memory_resource");
    const auto lo = reinterpret_cast<std::uintptr_t>(ptr);
    const std::size_t bytes = s->context.range_size(ptr);  // not a range's base (or freed already): an error
    s->context.free(ptr);
    std::lock_guard lock(s->mutex);
    s->history.forget(lo, lo + bytes);
    return uhmmSuccess;
  });
}

uhmmError_t uhmmMemPrefetchAsync(const void* ptr, std::size_t bytes, int dstDevice, uhmmStream_t stream) {
  return c_call([&] { return prefetch(ptr, bytes, dstDevice, stream, "uhmmMemPrefetchAsync"); });
}

uhmmError_t uhmmMemPrefetchAsync_v2(const void* ptr, std::size_t bytes, uhmmMemLocation location, unsigned int flags,
                                    uhmmStream_t stream) {
  return c_call([&] {
    if (flags != 0)
      return fail(uhmmErrorInvalidValue, fmt::format("uhmmMemPrefetchAsync_v2: flags {:#x} are not 0", flags).c_str());
    return prefetch(ptr, bytes, device_of(location, "uhmmMemPrefetchAsync_v2"), stream, "uhmmMemPrefetchAsync_v2");
  });
}

uhmmError_t uhmmMemAdvise(const void* ptr, std::size_t bytes, uhmmMemoryAdvise advice, int device) {
  return c_call([&] { return advise(ptr, bytes, advice, device, "uhmmMemAdvise"); });
}

uhmmError_t uhmmMemAdvise_v2(const void* ptr, std::size_t bytes, uhmmMemoryAdvise advice, uhmmMemLocation location) {
  return c_call([&] { return advise(ptr, bytes, advice, device_of(location, "uhmmMemAdvise_v2"), "uhmmMemAdvise_v2"); });
}

uhmmError_t uhmmMemRangeGetAttribute(void* data, std::size_t dataSize, uhmmMemRangeAttribute attribute,
                                     const void* ptr, std::size_t bytes) {
  return c_call([&] {
    if (data == nullptr) return fail(uhmmErrorInvalidValue, "uhmmMemRangeGetAttribute: data is null");
    const PageSpan span = page_span(ptr, bytes, "uhmmMemRangeGetAttribute");
    SessionUse s;
    read_attribute(*s, data, dataSize, attribute, span);
    return uhmmSuccess;
  });
}

}  // extern "C"
