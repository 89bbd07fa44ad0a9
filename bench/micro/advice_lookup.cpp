// Context::advice: the advice of one page, looked up in a 64 MiB range whose
// 2 MiB blocks carry alternating advice (so the table holds many intervals),
// at pseudo-random pages. Lookups per second.
#include <benchmark/benchmark.h>

#include <vector>

#include "micro_context.hpp"
#include "startup_floors.hpp"

namespace uhmm::bench::micro {
namespace {

void BM_AdviceLookup(benchmark::State& state) {
  constexpr std::size_t kBytes = 64 * kMiB;
  constexpr std::size_t kPages = kBytes / kPageSize;
  Context ctx(options_with_pool(2 * kBlockSize));
  auto* data = static_cast<std::byte*>(ctx.allocate(kBytes));
  for (std::size_t off = 0; off < kBytes; off += 2 * kBlockSize) ctx.advise(data + off, kBlockSize, Advice::set_read_mostly);
  // The pages to look up, chosen before the loop so that it times the lookups alone.
  std::vector<const std::byte*> pages(4096);
  std::uint64_t x = 0x9e3779b97f4a7c15ull;
  for (auto& page : pages) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    page = data + (x % kPages) * kPageSize;
  }
  std::size_t i = 0, read_mostly = 0;
  for (auto _ : state) {
    const RangeAdvice a = ctx.advice(pages[i]);
    read_mostly += a.read_mostly ? 1 : 0;
    benchmark::DoNotOptimize(a);
    i = (i + 1) % pages.size();
  }
  // Every looked-up page is checked against the advice it was given.
  for (const std::byte* page : pages)
    if (ctx.advice(page).read_mostly != (((page - data) / kBlockSize) % 2 == 0)) {
      fail(state, "a lookup returned another page's advice");
      break;
    }
  benchmark::DoNotOptimize(read_mostly);
  ctx.free(data);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_AdviceLookup)->UseRealTime();

}  // namespace
}  // namespace uhmm::bench::micro
