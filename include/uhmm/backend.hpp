// The one contract every backend (cpu, cuda, hip) meets. host/ never sees a
// vendor type: it reaches a device only through DevicePagemap (migrate.hpp),
// which driver/ builds on top of this interface.
//
// Rules for every call: none throws; a failure comes back as a Status whose
// message names the call and the cause. Work enqueued on a stream runs in
// enqueue order, asynchronously to the caller; memory named by an enqueued
// operation must stay valid until the stream has run it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "uhmm/error.hpp"
#include "uhmm/export.hpp"
#include "uhmm/types.hpp"

namespace uhmm {

// Optional features, queried at run time instead of #ifdef'd in core code.
enum BackendCapability : std::uint32_t {
  kCapPeerCopy = 1u << 0,            // device-to-device copy between devices
  kCapCopyKernels = 1u << 1,         // gather/scatter copy kernels
  kCapVirtualMemory = 1u << 2,       // virtual-memory mapping of chunks
  kCapHostKernels = 1u << 3,         // launch() runs host functions (cpu backend)
  kCapHostVisibleMemory = 1u << 4,   // device addresses are host pointers
  kCapHostMemoryAccess = 1u << 5,    // kernels reach host (managed-range) memory in place
};

struct DeviceInfo {
  std::string backend;  // "cpu", "cuda", "hip"
  std::string name;
  std::uint64_t memory_bytes = 0;  // device memory the backend may use
  std::uint32_t capabilities = 0;
};

// One page (kPageSize bytes) of a batched copy.
struct HostToDevicePage {
  const void* host;
  DeviceAddress device;
};
struct DeviceToHostPage {
  DeviceAddress device;
  void* host;
};
struct DeviceToDevicePage {
  DeviceAddress src;
  DeviceAddress dst;
};

// Completion of one batched operation: pages [0, pages_done) completed; status
// says why the rest did not.
struct BatchResult {
  Status status;
  std::size_t pages_done = 0;
};

using StreamId = std::uint32_t;
using EventId = std::uint32_t;

// A kernel over an index space, as host code: called with [first, last) slices.
using HostKernel = std::function<void(std::size_t first, std::size_t last)>;

class UHMM_EXPORT Backend {
 public:
  virtual ~Backend() = default;
  virtual DeviceInfo info() const = 0;

  // Device memory in chunks of kChunkSize bytes, aligned to kChunkSize,
  // contents undefined. Errc::out_of_memory when the device is full.
  virtual Status allocate_chunk(DeviceAddress* out) noexcept = 0;
  // Pre: chunk came from allocate_chunk and no queued work uses it.
  virtual void free_chunk(DeviceAddress chunk) noexcept = 0;

  // Host memory the device copies to and from at full speed (pinned).
  virtual Status allocate_host(std::size_t bytes, void** out) noexcept = 0;
  virtual void free_host(void* p) noexcept = 0;

  virtual Status create_stream(StreamId* out) noexcept = 0;
  // Waits for the stream's queued work, then destroys it.
  virtual void destroy_stream(StreamId stream) noexcept = 0;

  // Batched page copies and zero-fill, enqueued on a stream. `result` (optional)
  // is written when the batch has run, at the latest by the stream's next
  // synchronize (where the GPU backends write it): read it after that. A
  // failing page stops the batch there.
  virtual Status copy_to_device(StreamId stream, std::span<const HostToDevicePage> pages,
                                BatchResult* result) noexcept = 0;
  virtual Status copy_to_host(StreamId stream, std::span<const DeviceToHostPage> pages,
                              BatchResult* result) noexcept = 0;
  virtual Status copy_device_to_device(StreamId stream, std::span<const DeviceToDevicePage> pages,
                                       BatchResult* result) noexcept = 0;
  virtual Status zero_device(StreamId stream, std::span<const DeviceAddress> pages,
                             BatchResult* result) noexcept = 0;

  // Runs `kernel` over [0, n) (requires kCapHostKernels). `result` gets the
  // kernel's status (Errc::device_fault when it touched a non-resident page).
  virtual Status launch(StreamId stream, std::size_t n, HostKernel kernel,
                        BatchResult* result) noexcept = 0;

  // Blocks until all work enqueued on the stream before the call has run.
  virtual Status synchronize(StreamId stream) noexcept = 0;

  // Fences between streams and with the host (cudaEvent / hipEvent semantics).
  virtual Status create_event(EventId* out) noexcept = 0;
  virtual void destroy_event(EventId event) noexcept = 0;
  virtual Status record_event(StreamId stream, EventId event) noexcept = 0;
  virtual Status stream_wait_event(StreamId stream, EventId event) noexcept = 0;
  virtual Status synchronize_event(EventId event) noexcept = 0;

  // Device buffers: plain device memory outside the page pool, for what a
  // kernel reads besides managed pages (the device page tables of a launch).
  // `bytes` > 0 (else Errc::zero_length); the buffer is aligned to 256 bytes,
  // its contents undefined; Errc::out_of_memory when the device is full.
  virtual Status allocate_device_buffer(std::size_t bytes, DeviceAddress* out) noexcept = 0;
  // Pre: buffer came from allocate_device_buffer and no queued work uses it
  // (synchronize the streams that did). An unknown address is ignored.
  virtual void free_device_buffer(DeviceAddress buffer) noexcept = 0;
  // Byte copies between host memory and a device buffer, enqueued on a stream.
  // Pre: [dst/src, + bytes) lies inside one buffer from allocate_device_buffer
  // (else Errc::invalid_argument, nothing queued); the host memory stays valid
  // and unchanged until the stream has run the copy. bytes == 0 is a no-op.
  virtual Status copy_to_device_buffer(StreamId stream, DeviceAddress dst, const void* src,
                                       std::size_t bytes) noexcept = 0;
  virtual Status copy_from_device_buffer(StreamId stream, void* dst, DeviceAddress src,
                                         std::size_t bytes) noexcept = 0;
  // The runtime's own stream behind `stream` (cudaStream_t / hipStream_t as a
  // void*), for application kernels launched on it; nullptr for a backend
  // without one (cpu) or an unknown stream.
  virtual void* native_stream(StreamId stream) const noexcept = 0;
};

// Test hooks of a device: failures injected into the pool and the copy engine.
// Shared by all backends; -1 / 0 turns an injection off.
struct FaultInjection {
  // Device page allocations succeed this many more times, then fail (-1: off).
  std::int64_t alloc_pages_left = -1;
  // The next `copy_fail_batches` copy batches (either direction) fail at page K (-1: off).
  std::int64_t copy_fail_at_page = -1;
  std::uint32_t copy_fail_batches = 1;
  // Every copy batch sleeps this long first (slow copies, reordering).
  std::uint32_t copy_delay_us = 0;
};

}  // namespace uhmm
