// Launch overhead: an empty kernel (one index, no work) over a 2 MiB span
// already resident on the device, so the migration finds nothing to move and
// the figure is the launch itself (span checks, page locking, the device page
// table, dispatch, unlock). Launches per second.
#include <benchmark/benchmark.h>

#include <cstring>
#include <span>

#include "micro_context.hpp"
#include "startup_floors.hpp"

namespace uhmm::bench::micro {
namespace {

void BM_LaunchEmptyKernel(benchmark::State& state) {
  constexpr std::size_t kBytes = kBlockSize;
  Context ctx(options_with_pool(4 * kBlockSize));
  auto* data = static_cast<std::uint64_t*>(ctx.allocate(kBytes));
  std::memset(data, 1, kBytes);
  if (ctx.migrate_to_device(data, kBytes).migrated != kPagesPerBlock) {
    fail(state, "the span did not reach the device");
    ctx.free(data);
    return;
  }
  const std::span<std::uint64_t> span(data, kBytes / sizeof(std::uint64_t));
  for (auto _ : state) ctx.launch(1, [](std::size_t, device_span<std::uint64_t>) {}, span);
  // Still resident: the launches moved nothing.
  const std::vector<PageState> after = ctx.residency(data, kBytes);
  for (const PageState& page : after)
    if (page.residency != Residency::Device) {
      fail(state, "a page left the device during the launches");
      break;
    }
  ctx.free(data);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_LaunchEmptyKernel)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace
}  // namespace uhmm::bench::micro
