// One CPU read fault on a device-resident page, fault-ahead off, so each
// iteration brings exactly one 4 KiB page back: mean time per fault, and its
// ratio to the bare round trip of the mechanism the context runs on
// (x_bare_uffd: handler thread + UFFDIO_COPY; x_bare_sigsegv in signal mode).
// Percentiles are uhmm-bench's job.
#include <benchmark/benchmark.h>

#include <cstring>

#include "micro_context.hpp"
#include "startup_floors.hpp"

namespace uhmm::bench::micro {
namespace {

constexpr std::size_t kPages = 4096;  // 16 MiB: migrated back to the device (untimed) when all have faulted

void BM_DeviceFault(benchmark::State& state) {
  constexpr std::size_t kBytes = kPages * kPageSize;
  Context ctx(options_with_pool(kBytes + 2 * kBlockSize, /*fault_ahead=*/false));
  auto* base = static_cast<unsigned char*>(ctx.allocate(kBytes));
  for (std::size_t i = 0; i < kPages; ++i) base[i * kPageSize] = static_cast<unsigned char>(i);
  const bool signal_mode = std::strcmp(ctx.fault_mode(), "signal") == 0;
  std::size_t next = kPages;
  double seconds = 0;
  for (auto _ : state) {
    if (next == kPages) {
      if (ctx.migrate_to_device(base, kBytes).migrated != kPages) {
        fail(state, "pages did not all reach the device");
        break;
      }
      next = 0;
    }
    const auto t0 = Clock::now();
    const unsigned char c = static_cast<volatile unsigned char*>(base)[next * kPageSize];
    const double s = seconds_since(t0);
    if (c != static_cast<unsigned char>(next)) {
      fail(state, "a faulted page has the wrong data");
      break;
    }
    state.SetIterationTime(s);
    seconds += s;
    ++next;
  }
  ctx.free(base);
  const auto faults = static_cast<double>(state.iterations());
  state.SetItemsProcessed(state.iterations());
  const double floor_us = signal_mode ? startup_floors().bare_sigsegv_us : startup_floors().bare_uffd_us;
  if (seconds > 0 && floor_us > 0)
    state.counters[signal_mode ? "x_bare_sigsegv" : "x_bare_uffd"] = seconds * 1e6 / faults / floor_us;
  state.SetLabel(ctx.fault_mode());
}
BENCHMARK(BM_DeviceFault)->UseManualTime()->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace uhmm::bench::micro
