// Context::launch (host kernels, cpu backend) and Context::launch_device
// (kernels the application launches on the device's stream): both run through
// run_device_launch (device_launch.hpp), which migrates and locks the spans,
// uploads their device page tables and drains the stream before unlocking.
#include <vector>

#include <fmt/format.h>

#include "context_impl.hpp"
#include "deferred_signals.hpp"
#include "device_launch.hpp"

namespace uhmm {
namespace {

std::vector<detail::LaunchSpan> to_launch_spans(const auto& spans) {
  std::vector<detail::LaunchSpan> out;
  out.reserve(spans.size());
  for (const auto& s : spans) out.push_back({s.data, s.bytes, s.writable});
  return out;
}

}  // namespace

void Context::launch_impl(OwnerId device, std::size_t n, std::span<const SpanRequest> spans, const LaunchBody& body) {
  detail::DeferSignals defer;
  auto& ctx = *impl_;
  detail::Device& dev = ctx.device(device, "launch");
  if ((dev.info().capabilities & kCapHostKernels) == 0)
    throw Error(Errc::invalid_argument,
                fmt::format("launch: the {} backend runs no host kernels (use launch_device with a kernel compiled "
                            "by nvcc or hipcc)", dev.info().backend));
  if (!body) throw Error(Errc::invalid_argument, "launch: empty kernel");
  const auto launch_spans = to_launch_spans(spans);
  detail::run_device_launch(ctx, device, launch_spans, "launch",
                            [&](const LaunchStream& stream, std::span<const DevicePageTable> tables) {
                              stream.host->enqueue(n, [&body, tables](std::size_t first, std::size_t last) {
                                body(first, last, tables);
                              });
                            });
}

void Context::launch_device_impl(OwnerId device, std::span<const SpanRequest> spans, const DeviceLaunchBody& body) {
  detail::DeferSignals defer;
  const auto launch_spans = to_launch_spans(spans);
  detail::run_device_launch(*impl_, device, launch_spans, "launch_device", body);
}

}  // namespace uhmm
