// uhmm::Context: the managed-memory manager an application creates once. It
// owns the devices (a backend and its pool each), the managed ranges and the
// CPU fault service that brings device pages back on access.
#pragma once

#include <cstddef>
#include <functional>
#include <future>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "uhmm/advice.hpp"
#include "uhmm/backend.hpp"
#include "uhmm/counters.hpp"
#include "uhmm/export.hpp"
#include "uhmm/latency.hpp"
#include "uhmm/migration_result.hpp"
#include "uhmm/options.hpp"
#include "uhmm/page_state.hpp"
#include "uhmm/types.hpp"
#include "uhmm/device_span.hpp"
#include "uhmm/launch_stream.hpp"

namespace uhmm {

namespace detail {
class ContextImpl;
class StreamImpl;
struct ContextAccess;
}  // namespace detail

// Ordered asynchronous migrations. Work on one stream runs in submission order.
class UHMM_EXPORT Stream {
 public:
  Stream(Stream&&) noexcept;
  Stream& operator=(Stream&&) noexcept;
  ~Stream();  // waits for the stream's work
  // Waits until everything submitted before the call has run.
  void synchronize();
  OwnerId device() const noexcept;

 private:
  friend class Context;
  explicit Stream(std::unique_ptr<detail::StreamImpl> impl);
  std::unique_ptr<detail::StreamImpl> impl_;
};

class UHMM_EXPORT Context {
 public:
  Context();  // options from the environment
  explicit Context(const ContextOptions& options);
  // Frees every range still allocated (contents are gone) and stops the fault service.
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  // Managed memory: `bytes` rounded up to whole pages, the base 2 MiB aligned.
  // Plain memory to the CPU; never-touched pages read as zero.
  void* allocate(std::size_t bytes);
  // Frees a range allocated here. Pages on a device are released, not copied.
  void free(void* base);
  // Size in bytes of the range starting at base (rounded to pages).
  std::size_t range_size(const void* base) const;

  // "userfaultfd" or "signal": the fault mechanism this context runs on.
  const char* fault_mode() const noexcept;

  std::size_t device_count() const noexcept;
  // The owner id of device i (devices are numbered 0..device_count()-1).
  OwnerId device_owner(std::size_t i = 0) const;
  DeviceInfo device_info(OwnerId owner) const;
  // Shrinks (or grows back, up to device_pool_bytes) the pages owner's pool
  // may hand out, then evicts its least recently used chunks until the pages
  // in use fit: their data comes back to host RAM, and chunks left entirely
  // free go back to the device (its memory is freed, per 256 MiB slab on a
  // GPU). Returns the pages evicted.
  // Waits for pages that migrations or kernels hold. Throws uhmm::Error:
  // invalid_argument for an unknown owner or more bytes than the pool has,
  // device_error when pages whose copy back failed keep it above the limit.
  std::size_t set_device_pool_limit(OwnerId owner, std::size_t bytes);
  // CPU-fault policy, changeable while the context runs (from the next fault
  // on): fault-ahead (UHMM_FAULT_AHEAD) and its density threshold
  // (UHMM_PREFETCH_THRESHOLD; a percent above 100 is invalid_argument and
  // changes nothing).
  void set_fault_ahead(bool on) noexcept;
  bool fault_ahead() const noexcept;
  void set_prefetch_threshold(unsigned percent);
  unsigned prefetch_threshold() const noexcept;
  // Thrashing detection, from the next fault on; values outside the ranges
  // above are invalid_argument and change nothing.
  void set_thrashing(const ThrashingOptions& thrashing);
  ThrashingOptions thrashing() const noexcept;
  // A device's backend and injected failures: uhmm/hooks.hpp.

  // Synchronous migrations of [p, p + bytes) (page aligned, inside one range).
  // A device page migration selects host pages, never-touched pages (zero-filled
  // there) and pages of other devices; 2 MiB-aligned runs move as one unit.
  MigrationResult migrate_to_device(void* p, std::size_t bytes, OwnerId device = kNoOwner);
  MigrationResult migrate_to_host(void* p, std::size_t bytes);

  // The same on a stream. Bad arguments throw here, before anything is queued;
  // the future carries the result.
  Stream create_stream(OwnerId device = kNoOwner);
  std::future<MigrationResult> migrate_to_device_async(Stream& stream, void* p, std::size_t bytes);
  std::future<MigrationResult> migrate_to_host_async(Stream& stream, void* p, std::size_t bytes);

  // Pins [p, p + bytes) to host RAM (pages on a device come back first):
  // migrations skip pinned pages, as the kernel skips pages with extra
  // references. unpin makes them migratable again.
  MigrationResult pin(void* p, std::size_t bytes);
  void unpin(void* p, std::size_t bytes);

  // Advice and explicit control, per range (docs/DESIGN.md, "Advice"; as
  // cudaMemAdvise / cudaMemPrefetchAsync). [p, p + bytes) is page aligned,
  // inside one range; bad input throws uhmm::Error and changes nothing.
  // advise: records `advice` for every page of the span; `location` is the
  // host or a device for set_preferred_location, a device for
  // (un)set_accessed_by, ignored otherwise.
  void advise(void* p, std::size_t bytes, Advice advice, Location location = {});
  // The advice of the page holding p.
  RangeAdvice advice(const void* p) const;
  // Migrates the span to `to` (the host, or a device: from the host or from
  // another device). Never evicts pages of the span itself to make room.
  MigrationResult prefetch(void* p, std::size_t bytes, Location to);
  std::future<MigrationResult> prefetch_async(Stream& stream, void* p, std::size_t bytes, Location to);
  // The span's contents become zeros, and nothing is copied anywhere: device
  // pages go back to their pools, host pages are released. Waits for pages a
  // migration, fault or kernel holds; poisoned pages stay poisoned. Returns
  // the pages whose contents were dropped, each counted once (at most the
  // span's pages): a page another thread writes after the discard dropped it,
  // while the call still waits for other pages, keeps that write.
  std::size_t discard(void* p, std::size_t bytes);

  // Each page's state in [p, p + bytes), page aligned, inside one range.
  std::vector<PageState> residency(const void* p, std::size_t bytes) const;

  Counters counters() const;
  // Latency histograms of faults by kind and of migrations each way.
  Latencies latency() const;

  // Checks the mirror page tables and the device pools for consistency (walks
  // everything: for tests and debugging). Call it while no operation runs on
  // the context; a failure names the broken entry.
  Status validate() const;

  // Runs body(i, device_span<T>...) for i in [0, n) on a device, after migrating
  // every span to it (read-mostly pages keep their host copy for a span of
  // const T, and lose it for a span the kernel may write). Every page of every
  // span is resident and locked on the device before the kernel runs, and
  // stays so until it has finished (CPU accesses wait; migrations, eviction
  // and fault-ahead leave them alone); a launch waits for pages other
  // operations hold. Spans that need more than the device's pool throw
  // Errc::out_of_memory before anything moves or runs; a kernel that touches a
  // page outside its spans fails with Errc::device_fault. Returns when the
  // kernel has finished.
  // A span whose first element is not at a multiple of sizeof(T) inside its
  // page (its elements would straddle pages) is Errc::invalid_argument, here
  // and in launch_device, before anything moves.
  template <class F, class... T>
  void launch(std::size_t n, F&& body, std::span<T>... data);
  template <class F, class... T>
  void launch_on(OwnerId device, std::size_t n, F&& body, std::span<T>... data);

  // Kernels the application launches itself (written once for CUDA, HIP and
  // the cpu backend): migrates every span to the device and holds its pages,
  // uploads one device page table per span into device memory, then calls
  // body(const LaunchStream&, device_span<T>...) with the device's launch
  // stream and spans over the uploaded tables; the body enqueues kernels with
  // uhmm::launch(stream, n, functor) (kernels/uhmm/launch.hpp). Returns when
  // the stream has drained, then unlocks the pages. Throws uhmm::Error for bad
  // input (nothing changed), spans that do not fit (out_of_memory, before
  // anything moves or runs; launch() says how pages are held), a failed kernel
  // (Errc::device_fault for a page outside its spans, device_error
  // otherwise); an exception from body propagates after
  // the stream has drained and the pages are unlocked.
  template <class F, class... T>
  void launch_device(F&& body, std::span<T>... data);
  template <class F, class... T>
  void launch_device_on(OwnerId device, F&& body, std::span<T>... data);

 private:
  friend struct detail::ContextAccess;  // the library's way to its ContextImpl (host/api)
  struct SpanRequest {
    const void* data;
    std::size_t bytes;
    bool writable;  // a span of non-const T: the kernel may write it (read-mostly pages collapse to the device)
    std::size_t element_size;  // sizeof(T): no element may straddle a page (launch checks)
  };
  using LaunchBody = std::function<void(std::size_t first, std::size_t last,
                                        std::span<const DevicePageTable> tables)>;
  void launch_impl(OwnerId device, std::size_t n, std::span<const SpanRequest> spans,
                   const LaunchBody& body);
  using DeviceLaunchBody = std::function<void(const LaunchStream& stream,
                                              std::span<const DevicePageTable> tables)>;
  void launch_device_impl(OwnerId device, std::span<const SpanRequest> spans,
                          const DeviceLaunchBody& body);

  std::unique_ptr<detail::ContextImpl> impl_;
};

template <class F, class... T>
void Context::launch(std::size_t n, F&& body, std::span<T>... data) {
  launch_on(kNoOwner, n, std::forward<F>(body), data...);
}

template <class F, class... T>
void Context::launch_on(OwnerId device, std::size_t n, F&& body, std::span<T>... data) {
  const SpanRequest spans[] = {SpanRequest{data.data(), data.size_bytes(), !std::is_const_v<T>, sizeof(T)}..., SpanRequest{}};
  launch_impl(device, n, std::span<const SpanRequest>(spans, sizeof...(T)),
              [&body](std::size_t first, std::size_t last, std::span<const DevicePageTable> tables) {
                [&]<std::size_t... I>(std::index_sequence<I...>) {
                  for (std::size_t i = first; i < last; ++i)
                    body(i, device_span<T>(tables[I])...);
                }(std::index_sequence_for<T...>{});
              });
}

template <class F, class... T>
void Context::launch_device(F&& body, std::span<T>... data) {
  launch_device_on(kNoOwner, std::forward<F>(body), data...);
}

template <class F, class... T>
void Context::launch_device_on(OwnerId device, F&& body, std::span<T>... data) {
  const SpanRequest spans[] = {SpanRequest{data.data(), data.size_bytes(), !std::is_const_v<T>, sizeof(T)}..., SpanRequest{}};
  launch_device_impl(device, std::span<const SpanRequest>(spans, sizeof...(T)),
                     [&body](const LaunchStream& stream, std::span<const DevicePageTable> tables) {
                       (void)tables;  // unused without spans
                       [&]<std::size_t... I>(std::index_sequence<I...>) {
                         body(stream, device_span<T>(tables[I])...);
                       }(std::index_sequence_for<T...>{});
                     });
}

}  // namespace uhmm
