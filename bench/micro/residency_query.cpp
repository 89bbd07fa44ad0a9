// A residency query of 64 MiB (Context::residency), half of it on the device
// and half on the host: pages reported per second.
#include <benchmark/benchmark.h>

#include <cstring>

#include "micro_context.hpp"
#include "startup_floors.hpp"

namespace uhmm::bench::micro {
namespace {

void BM_ResidencyQuery(benchmark::State& state) {
  constexpr std::size_t kBytes = 64 * kMiB;
  Context ctx(options_with_pool(kBytes / 2 + 2 * kBlockSize));
  auto* data = static_cast<unsigned char*>(ctx.allocate(kBytes));
  std::memset(data, 1, kBytes);
  if (ctx.migrate_to_device(data, kBytes / 2).migrated != kBytes / 2 / kPageSize) {
    fail(state, "the first half did not reach the device");
    ctx.free(data);
    return;
  }
  for (auto _ : state) {
    std::vector<PageState> pages = ctx.residency(data, kBytes);
    benchmark::DoNotOptimize(pages.data());
    if (pages.front().residency != Residency::Device || pages.back().residency != Residency::System) {
      fail(state, "the residency query reports the wrong places");
      break;
    }
  }
  ctx.free(data);
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(kBytes / kPageSize));
}
BENCHMARK(BM_ResidencyQuery)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace
}  // namespace uhmm::bench::micro
