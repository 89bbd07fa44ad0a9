#include "device_launch.hpp"

#include <algorithm>
#include <chrono>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "migration.hpp"
#include "launch_hold.hpp"
#include "deferred_signals.hpp"
#include "lock_order.hpp"
#include "page_bounces.hpp"
#include "read_mostly.hpp"
#include "uhmm/detail/log.hpp"

namespace uhmm::detail {
namespace {

// Throttling (DESIGN.md, "Thrashing"): where thrashing pages cannot stay on the
// host, the launch waits until each cooling host page of its spans has been
// back on the host for throttle_ms, so the CPU gets to use it before the
// device takes it again (UVM naps the faulting processor for the same reason).
void throttle(Mm& ctx, std::span<const LaunchHold::Span> spans, const ThrashingSettings& thrashing) {
  const std::uint32_t now_ms = monotonic_ms();
  std::uint32_t wait_ms = 0;
  for (const LaunchHold::Span& h : spans) {
    auto& range = h.pages.range();
    auto& table = range.table();
    for (std::size_t q = h.pages.first(); q < h.pages.end(); ++q) {
      std::lock_guard lock(table.block_mutex(MirrorTable::block_of(q)));
      std::uint32_t back_for_ms = 0;
      if (table.entry(q).residency() == Residency::System && range.bounces().cooling(q, now_ms, thrashing, &back_for_ms))
        wait_ms = std::max(wait_ms, thrashing.throttle_ms - std::min(back_for_ms, thrashing.throttle_ms));
    }
  }
  if (wait_ms == 0) return;
  AtomicCounters::add(ctx.counters.thrashing_throttles, 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));
}

// Runs the host-compiled kernels of one launch on its stream and keeps their
// results until the stream has drained.
class HostQueue final : public HostLaunchQueue {
 public:
  HostQueue(Backend& backend, StreamId stream, std::uint32_t capabilities, const char* call, std::string backend_name)
      : backend_(backend), stream_(stream), capabilities_(capabilities), call_(call),
        backend_name_(std::move(backend_name)) {}

  void enqueue(std::size_t n, std::function<void(std::size_t, std::size_t)> kernel) override {
    if (!kernel) throw Error(Errc::invalid_argument, fmt::format("{}: empty kernel", call_));
    if ((capabilities_ & kCapHostKernels) != 0) {
      BatchResult* result = nullptr;
      {
        std::lock_guard lock(mutex_);
        result = &results_.emplace_back();
      }
      backend_.launch(stream_, n, std::move(kernel), result).raise_if_error();
      return;
    }
    if ((capabilities_ & kCapHostVisibleMemory) != 0) {
      // A device whose memory the host reaches but which runs no host kernels:
      // the kernel runs here, after the work queued before it (stream order).
      backend_.synchronize(stream_).raise_if_error();
      if (n == 0) return;
      try {
        kernel(0, n);
      } catch (const DeviceFaultException& fault) {
        throw Error(Errc::device_fault, fmt::format("{}: kernel touched a page that is not resident on the device, "
                                                    "at byte offset {} of a span", call_, fault.byte_offset));
      }
      return;
    }
    throw Error(Errc::invalid_argument,
                fmt::format("{}: this kernel was compiled by the host compiler, and the {} backend runs only kernels "
                            "compiled by nvcc or hipcc (build the source that calls uhmm::launch with them)",
                            call_, backend_name_));
  }

  void report_native_error(const char* name, const char* text) noexcept override {
    std::lock_guard lock(mutex_);
    if (!native_error_) return;  // the first one is the cause
    try {
      native_error_ = {Errc::device_error, fmt::format("{}: kernel launch failed: {} ({})", call_,
                                                       name != nullptr ? name : "?", text != nullptr ? text : "?")};
    } catch (...) {
      native_error_ = {Errc::device_error, {}};
    }
  }

  // Pre: the stream has drained. The first failure of this launch's kernels.
  Status failure() const {
    std::lock_guard lock(mutex_);
    if (!native_error_) return native_error_;
    for (const BatchResult& r : results_)
      if (!r.status) return r.status;
    return Status::ok();
  }

 private:
  Backend& backend_;
  const StreamId stream_;
  const std::uint32_t capabilities_;
  const char* const call_;
  const std::string backend_name_;
  mutable Ranked<std::mutex, LockRank::launch_results> mutex_;
  std::deque<BatchResult> results_;  // stable addresses: the backend writes them asynchronously
  Status native_error_;
};

}  // namespace

namespace {

// Resolves every span to whole pages before anything moves: bad input changes nothing.
std::vector<LaunchHold::Span> resolve_spans(Mm& ctx, std::span<const LaunchSpan> spans, const char* call) {
  std::vector<LaunchHold::Span> out;
  out.reserve(spans.size());
  for (std::size_t k = 0; k < spans.size(); ++k) {
    if (spans[k].data == nullptr || spans[k].bytes == 0)
      throw Error(Errc::invalid_argument, fmt::format("{}: span {} is empty or null", call, k));
    const auto addr = reinterpret_cast<std::uintptr_t>(spans[k].data);
    const std::uintptr_t lo = addr & ~(kPageSize - 1);
    const std::uintptr_t hi = (addr + spans[k].bytes + kPageSize - 1) & ~(kPageSize - 1);
    out.push_back({ctx.ranges.resolve(reinterpret_cast<const void*>(lo), hi - lo, call), spans[k].writable});
  }
  return out;
}

// The launch's device buffer starts with its fault word (padded) and the
// scratch page a miss reaches (DevicePageTable::fault), uploaded as zeros.
constexpr std::size_t kFaultWordBytes = 256;
constexpr std::size_t kFaultAreaWords = (kFaultWordBytes + kPageSize) / sizeof(std::uint64_t);

// A GPU kernel never starts over a page that is not resident and locked: a
// table entry left 0 (a read-mostly page whose host copy could not go) fails
// the launch before anything runs.
void check_resident(std::span<const std::uint64_t> entries, const char* call) {
  if (std::find(entries.begin(), entries.end(), 0) != entries.end())
    throw Error(Errc::device_fault,
                fmt::format("{}: a page of the spans could not be made resident on the device; nothing was run", call));
}

// Every span's table in one host buffer (span k's from first_entry[k]),
// after the fault area, uploaded into the stream's buffer in one copy; the
// kernels queued after it on the stream read them there. `host_tables` must
// live until the stream drains. *fault_word: the fault word's device address.
std::vector<DevicePageTable> upload_tables(Backend& backend, LaunchStreamPool::Lease& lease, const LaunchHold& hold,
                                           std::span<const LaunchSpan> spans,
                                           std::span<const LaunchHold::Span> resolved,
                                           std::vector<std::uint64_t>& host_tables, DeviceAddress* fault_word,
                                           const char* call) {
  host_tables.assign(kFaultAreaWords, 0);
  std::vector<std::size_t> first_entry(spans.size());
  for (std::size_t k = 0; k < spans.size(); ++k) {
    first_entry[k] = host_tables.size();
    host_tables.resize(host_tables.size() + resolved[k].pages.count(), 0);
  }
  for (std::size_t k = 0; k < spans.size(); ++k) hold.table(k, host_tables.data() + first_entry[k]);
  check_resident(std::span(host_tables).subspan(kFaultAreaWords), call);
  std::vector<DevicePageTable> tables(spans.size());
  if (spans.empty()) return tables;
  const std::size_t bytes = host_tables.size() * sizeof(std::uint64_t);
  DeviceAddress buffer = 0;
  lease.reserve_tables(bytes, &buffer).raise_if_error();
  backend.copy_to_device_buffer(lease.stream(), buffer, host_tables.data(), bytes).raise_if_error();
  *fault_word = buffer;
  for (std::size_t k = 0; k < spans.size(); ++k) {
    const auto* device_entries = reinterpret_cast<const std::uint64_t*>(
        static_cast<std::uintptr_t>(buffer + first_entry[k] * sizeof(std::uint64_t)));
    const auto* first_page = resolved[k].pages.range().page_address(resolved[k].pages.first());
    tables[k] = DevicePageTable{device_entries, resolved[k].pages.count(),
                                static_cast<std::size_t>(static_cast<const std::byte*>(spans[k].data) - first_page),
                                spans[k].bytes,
                                reinterpret_cast<std::uint64_t*>(static_cast<std::uintptr_t>(buffer)),
                                reinterpret_cast<void*>(static_cast<std::uintptr_t>(buffer + kFaultWordBytes))};
  }
  return tables;
}

}  // namespace

void run_device_launch(Mm& ctx, OwnerId device, std::span<const LaunchSpan> spans, const char* call,
                       const DeviceLaunchBody& body) {
  Device& dev = ctx.device(device, call);
  if (!body) throw Error(Errc::invalid_argument, fmt::format("{}: empty kernel", call));
  const std::vector<LaunchHold::Span> resolved = resolve_spans(ctx, spans, call);

  Backend& backend = dev.backend();
  const DeviceInfo info = dev.info();
  // Thrashing pages stay on the host where this device's kernels reach host
  // memory (pinning), else the launch waits for them (throttling).
  const ThrashingSettings thrashing = ctx.policy.thrashing();
  const bool pin = thrashing.enabled && thrashing.pin && (info.capabilities & kCapHostMemoryAccess) != 0;
  if (thrashing.enabled && !pin && thrashing.throttle_ms > 0) throttle(ctx, resolved, thrashing);
  LaunchHold hold(ctx, dev, resolved, {pin, thrashing}, call);
  hold.acquire();  // every page resident and locked, or nothing held and nothing run
  LaunchStreamPool::Lease lease = ctx.launch_streams.of(dev.owner(), backend).acquire();
  HostQueue queue(backend, lease.stream(), info.capabilities, call, info.backend);
  std::vector<std::uint64_t> host_tables;  // uploaded from here: valid until the stream drains
  std::vector<DevicePageTable> tables;     // the body's kernels may read them until the stream drains
  DeviceAddress fault_word = 0;
  std::uint64_t fault = 0;  // read back after the body's kernels: 1 + the byte offset of a miss

  const auto drain = [&]() -> Status {
    Status s = backend.synchronize(lease.stream());
    if (!s) lease.mark_broken();  // a stream that failed is not handed to the next launch
    return s;
  };

  try {
    tables = upload_tables(backend, lease, hold, spans, resolved, host_tables, &fault_word, call);
    AtomicCounters::add(ctx.counters.thrashing_pages_pinned, hold.pinned());
    // The application's code: its own mask (a handler there may touch what the body may).
    DeferSignals::run_application_code([&] { body(LaunchStream{backend.native_stream(lease.stream()), &queue, dev.native_device()}, tables); });
    if (fault_word != 0)
      backend.copy_from_device_buffer(lease.stream(), &fault, fault_word, sizeof fault).raise_if_error();
  } catch (...) {
    // The stream must not run on unlocked pages or read a freed host table.
    if (const Status s = drain(); !s) log().warn("{}: draining the launch stream after a failure: {}", call, s.message);
    hold.release();
    throw;
  }
  Status status = drain();
  if (status) status = queue.failure();
  if (status && fault != 0)
    status = {Errc::device_fault, fmt::format("{}: kernel touched a page that is not resident on the device, at byte "
                                              "offset {} of a span",
                                              call, fault - 1)};
  hold.release();
  status.raise_if_error();
}

}  // namespace uhmm::detail
