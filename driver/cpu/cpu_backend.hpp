// The cpu backend: a device emulated in host memory, faithful enough that
// everything above it runs and fails as it would on a GPU. Device memory is a
// memfd of its own (never a managed range), copies run on one worker thread per
// stream in enqueue order, kernels run as host functions in slices, and
// allocation and copy failures can be injected. The kernel sources of
// kernels/uhmm/page_copy.hpp do every copy and zero-fill, as on a GPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "../fault_injection_target.hpp"
#include "uhmm/backend.hpp"

namespace uhmm::detail {

struct CpuBackendOptions {
  // Device memory; rounded up to whole chunks (kChunkSize). 0 is a device
  // without memory: every allocate_chunk fails with out_of_memory.
  std::uint64_t memory_bytes = std::uint64_t{256} << 20;
  std::string name = "cpu";
  // Threads that copy one batch (split in page slices once a batch is large).
  unsigned copy_threads = 1;
  // Threads that run one launch's slices; 0: the machine's cores (at most 16).
  unsigned kernel_threads = 0;
  FaultInjection injection;
};

class CpuBackend final : public Backend, public FaultInjectionTarget {
 public:
  // Reserves the device memory (a memfd mapped at a kChunkSize-aligned
  // address; pages are only committed when touched). Throws uhmm::Error
  // (Errc::system_error) when the OS refuses the memfd or the mapping.
  explicit CpuBackend(CpuBackendOptions options);
  explicit CpuBackend(std::uint64_t memory_bytes);
  // Drains and destroys every stream, then releases the device memory.
  ~CpuBackend() override;
  CpuBackend(const CpuBackend&) = delete;
  CpuBackend& operator=(const CpuBackend&) = delete;

  DeviceInfo info() const override;

  // Chunks are carved from the memfd, lowest address first. free_chunk punches
  // the chunk out of the memfd, so a freed chunk costs no memory; an address
  // that is not an allocated chunk is logged and ignored.
  Status allocate_chunk(DeviceAddress* out) noexcept override;
  void free_chunk(DeviceAddress chunk) noexcept override;

  // Page-aligned anonymous mappings; bytes is rounded up to whole pages and
  // must not be 0 (Errc::zero_length).
  Status allocate_host(std::size_t bytes, void** out) noexcept override;
  void free_host(void* p) noexcept override;

  // A stream is a worker thread running a FIFO of operations strictly in
  // order. destroy_stream runs what is queued, then joins the worker (from the
  // stream's own worker it cannot join and only closes the stream).
  Status create_stream(StreamId* out) noexcept override;
  void destroy_stream(StreamId stream) noexcept override;

  // Arguments are checked when the batch is enqueued (unknown stream, null or
  // unaligned host pointer, a device address that is not in an allocated chunk
  // of this device, a page not kPageSize aligned): the call then fails with
  // Errc::invalid_argument and nothing is queued, so `result` is not written.
  // The descriptors are copied; the memory they name must stay valid until the
  // batch has run. An empty batch is a no-op that still writes {ok, 0} in
  // order. A device-to-device source may be any device's host-visible address
  // (peer copy); the destination must be this device's.
  //
  // Injection: the next `copy_fail_batches` non-empty copy batches enqueued
  // (any direction, not zero-fill) are armed with copy_fail_at_page = K; an
  // armed batch copies pages [0, K) and fails with Errc::device_error
  // "injected copy failure at page K" (a batch of K pages or fewer completes).
  // copy_delay_us sleeps before every batch, zero-fill included. Both are taken
  // when the batch is enqueued.
  Status copy_to_device(StreamId stream, std::span<const HostToDevicePage> pages,
                        BatchResult* result) noexcept override;
  Status copy_to_host(StreamId stream, std::span<const DeviceToHostPage> pages,
                      BatchResult* result) noexcept override;
  Status copy_device_to_device(StreamId stream, std::span<const DeviceToDevicePage> pages,
                               BatchResult* result) noexcept override;
  Status zero_device(StreamId stream, std::span<const DeviceAddress> pages,
                     BatchResult* result) noexcept override;

  // Runs kernel over [0, n) in slices on the kernel threads, after everything
  // queued before it on the stream. A DeviceFaultException (device_span on a
  // page that is not resident) fails it with Errc::device_fault, any other
  // exception with Errc::device_error; no exception leaves the backend. On
  // failure, result->pages_done is the first index of the lowest failing slice
  // (indices below it all ran); on success it is n. n == 0 is a no-op; an
  // empty kernel is Errc::invalid_argument.
  Status launch(StreamId stream, std::size_t n, HostKernel kernel,
                BatchResult* result) noexcept override;

  // Waits for everything enqueued on the stream before the call, then returns
  // the first failure among the operations that completed since the previous
  // synchronize of this stream and were enqueued before this call (batch and
  // launch failures are otherwise only in their BatchResult): an asynchronous
  // failure is reported by exactly one synchronize. A failure does not poison
  // the stream: later operations run normally.
  Status synchronize(StreamId stream) noexcept override;

  // CUDA event semantics. record_event captures the work enqueued on the stream
  // so far and replaces the event's previous capture; stream_wait_event makes
  // the stream's later work wait for the capture as it is at the call;
  // synchronize_event blocks the caller until it has run. An event never
  // recorded is complete. Destroying an event that queued work still refers
  // to is safe.
  Status create_event(EventId* out) noexcept override;
  void destroy_event(EventId event) noexcept override;
  Status record_event(StreamId stream, EventId event) noexcept override;
  Status stream_wait_event(StreamId stream, EventId event) noexcept override;
  Status synchronize_event(EventId event) noexcept override;

  // Device buffers are host mappings of their own (the cpu device's memory is
  // host-visible), kept apart from the page pool and from allocate_host; the
  // copies run on the stream's worker in order.
  Status allocate_device_buffer(std::size_t bytes, DeviceAddress* out) noexcept override;
  void free_device_buffer(DeviceAddress buffer) noexcept override;
  Status copy_to_device_buffer(StreamId stream, DeviceAddress dst, const void* src,
                               std::size_t bytes) noexcept override;
  Status copy_from_device_buffer(StreamId stream, void* dst, DeviceAddress src,
                                 std::size_t bytes) noexcept override;
  // No runtime stream behind a cpu stream: always nullptr.
  void* native_stream(StreamId stream) const noexcept override;

  void set_fault_injection(const FaultInjection& injection) noexcept override;
  FaultInjection fault_injection() const noexcept;

  // Chunks currently allocated (tests).
  std::size_t chunks_in_use() const noexcept;

 private:
  struct Stream;
  struct Event;
  class HelperPool;
  struct Armed {
    std::int64_t fail_at_page = -1;
    std::uint32_t delay_us = 0;
  };

  std::shared_ptr<Stream> find_stream(StreamId id, Status* error) const noexcept;
  std::shared_ptr<Event> find_event(EventId id, Status* error) const noexcept;
  Armed arm(bool is_copy, std::size_t pages) noexcept;
  bool owns_allocated(DeviceAddress page) const noexcept;  // under chunks_mutex_
  // body(slice, first, last) over [0, n) cut in `slices` slices, on up to
  // `threads` threads (the calling worker included); body must not throw.
  using SliceBody = std::function<void(std::size_t, std::size_t, std::size_t)>;
  void parallel_slices(std::size_t n, std::size_t slices, unsigned threads, const SliceBody& body) noexcept;
  Status run_batch(std::size_t n, Armed armed, BatchResult* result,
                   const std::function<void(std::size_t, std::size_t)>& copy) noexcept;

  CpuBackendOptions options_;
  unsigned kernel_threads_ = 1;

  // Device memory: [base_, base_ + nchunks_ * kChunkSize), a memfd mapping.
  int memfd_ = -1;
  std::byte* base_ = nullptr;
  std::size_t nchunks_ = 0;
  mutable std::mutex chunks_mutex_;
  std::vector<bool> chunk_allocated_;
  std::vector<std::size_t> free_chunks_;  // a stack, lowest chunk on top

  mutable std::mutex host_mutex_;
  std::unordered_map<void*, std::size_t> host_allocations_;

  // True when [address, address + bytes) lies inside one device buffer.
  bool inside_device_buffer(DeviceAddress address, std::size_t bytes) const noexcept;

  mutable std::mutex buffers_mutex_;
  std::map<DeviceAddress, std::size_t> device_buffers_;  // base -> bytes asked for (mapped: whole pages)

  mutable std::mutex injection_mutex_;
  FaultInjection injection_;

  mutable std::mutex streams_mutex_;
  StreamId next_stream_ = 1;
  std::unordered_map<StreamId, std::shared_ptr<Stream>> streams_;
  EventId next_event_ = 1;
  std::unordered_map<EventId, std::shared_ptr<Event>> events_;

  std::unique_ptr<HelperPool> helpers_;
};

}  // namespace uhmm::detail
