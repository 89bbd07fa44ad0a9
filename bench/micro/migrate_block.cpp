// One 2 MiB block to the device and back (it moves as one compound unit),
// cache-warm like the floor: bytes moved per second, and the ratio to memcpy
// of 2 MiB (x_memcpy; 1.0 would be a migration as cheap as a plain copy).
#include <benchmark/benchmark.h>

#include <cstring>

#include "micro_context.hpp"
#include "startup_floors.hpp"

namespace uhmm::bench::micro {
namespace {

void BM_MigrateBlockRoundTrip(benchmark::State& state) {
  constexpr std::size_t kBytes = kBlockSize;
  Context ctx(options_with_pool(4 * kBlockSize));
  auto* block = static_cast<unsigned char*>(ctx.allocate(kBytes));  // 2 MiB aligned
  std::memset(block, 1, kBytes);
  double seconds = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    const MigrationResult out = ctx.migrate_to_device(block, kBytes);
    const MigrationResult in = ctx.migrate_to_host(block, kBytes);
    const double s = seconds_since(t0);
    if (out.migrated != kPagesPerBlock || in.migrated != kPagesPerBlock) {
      fail(state, "a migration left pages behind: " + out.status.message + in.status.message);
      break;
    }
    state.SetIterationTime(s);
    seconds += s;
  }
  if (block[0] != 1 || block[kBytes - 1] != 1) fail(state, "migrated data is wrong");
  ctx.free(block);
  // Each way copies the block once: 2 x 2 MiB per round trip.
  const double bytes = 2.0 * kBytes * static_cast<double>(state.iterations());
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes));
  if (seconds > 0 && startup_floors().memcpy_2mib_gbps > 0)
    state.counters["x_memcpy"] = bytes / seconds / 1e9 / startup_floors().memcpy_2mib_gbps;
}
BENCHMARK(BM_MigrateBlockRoundTrip)->UseManualTime()->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace uhmm::bench::micro
