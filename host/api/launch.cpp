// Context::launch (host kernels, cpu backend) and Context::launch_device
// (kernels the application launches on the device's stream): both run through
// run_device_launch (device_launch.hpp), which migrates and locks the spans,
// uploads their device page tables and drains the stream before unlocking.
#include <cstdint>
#include <vector>

#include <fmt/format.h>

#include "context_core.hpp"
#include "migration.hpp"
#include "deferred_signals.hpp"
#include "device_launch.hpp"
#include "out_of_memory.hpp"

namespace uhmm {
namespace {

// device_span<T> reads element i whole from the page its first byte is in, so
// an element that straddles two pages would have its tail read from the wrong
// page. With 4096 % sizeof(T) == 0 (device_span's static_assert) none does iff
// the span starts at a multiple of sizeof(T) inside its page.
void check_no_element_straddles(const void* data, std::size_t element_size, std::size_t k, const char* call) {
  const std::size_t offset = reinterpret_cast<std::uintptr_t>(data) % kPageSize;
  if (element_size == 0 || offset % element_size == 0) return;
  throw Error(Errc::invalid_argument,
              fmt::format("{}: span {} starts {} bytes into its page, not at a multiple of its element size ({} "
                          "bytes): its elements would straddle pages",
                          call, k, offset, element_size));
}

// Checks every span before anything moves.
std::vector<detail::LaunchSpan> to_launch_spans(const auto& spans, const char* call) {
  std::vector<detail::LaunchSpan> out;
  out.reserve(spans.size());
  for (const auto& s : spans) {
    check_no_element_straddles(s.data, s.element_size, out.size(), call);
    out.push_back({s.data, s.bytes, s.writable});
  }
  return out;
}

}  // namespace

void Context::launch_impl(OwnerId device, std::size_t n, std::span<const SpanRequest> spans, const LaunchBody& body) {
  detail::DeferSignals defer;
  detail::out_of_memory_as_error("launch", [&] {
    auto& ctx = detail::core(*this);
    detail::Device& dev = ctx.device(device, "launch");
    if ((dev.info().capabilities & kCapHostKernels) == 0)
      throw Error(Errc::invalid_argument,
                  fmt::format("launch: the {} backend runs no host kernels (use launch_device with a kernel compiled "
                              "by nvcc or hipcc)", dev.info().backend));
    if (!body) throw Error(Errc::invalid_argument, "launch: empty kernel");
    const auto launch_spans = to_launch_spans(spans, "launch");
    detail::run_device_launch(ctx, device, launch_spans, "launch",
                              [&](const LaunchStream& stream, std::span<const DevicePageTable> tables) {
                                stream.host->enqueue(n, [&body, tables](std::size_t first, std::size_t last) {
                                  body(first, last, tables);
                                });
                              });
  });
}

void Context::launch_device_impl(OwnerId device, std::span<const SpanRequest> spans, const DeviceLaunchBody& body) {
  detail::DeferSignals defer;
  detail::out_of_memory_as_error("launch_device", [&] {
    const auto launch_spans = to_launch_spans(spans, "launch_device");
    detail::run_device_launch(detail::core(*this), device, launch_spans, "launch_device", body);
  });
}

}  // namespace uhmm
