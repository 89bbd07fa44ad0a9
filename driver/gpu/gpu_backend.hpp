// The GPU backend, written once for CUDA and HIP over the shim of
// gpu_runtime.hpp and compiled once per vendor into its plugin.
//
// Device memory: a pool of 2 MiB chunks carved from large device allocations
// (slabs, allocated exactly), grown on demand up to the pool limit without
// holding the chunk mutex across gpuMalloc; freed chunks go back to the
// free list, and a slab whose every chunk is free is returned to the runtime
// (the page pool frees chunks only when its limit is lowered, or at the end). Copies: each batch is coalesced into contiguous runs, then
// moved by one of two paths chosen once per backend: DMA (one async memcpy per
// run) or, when the plugin carries kernels for the device, the gather/scatter
// kernel of kernels/uhmm/page_gather.hpp for scattered batches. Pinned host
// pages (allocate_host) are reached by the DMA in place; the others pass
// through the stream's pinned staging buffers, filled and drained by the
// calling thread, pipelined: while the DMA of one buffer-full runs, the caller
// fills (or drains) the next, each buffer's reuse ordered by an event after its
// DMA. No stream host functions: a batch's result is written by the
// synchronize that finds it done.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "copy_kernels.hpp"
#include "gpu_runtime.hpp"
#include "uhmm/backend.hpp"

namespace uhmm::gpu {

// Pinned staging buffers per stream: one is filled or drained by the caller
// while the stream's DMA uses the other.
inline constexpr std::size_t kStagingBuffers = 2;

struct GpuBackendOptions {
  int device = 0;
  std::uint64_t pool_bytes = 0;                           // chunks never exceed this
  std::uint64_t slab_bytes = std::uint64_t{256} << 20;    // device allocation size (whole chunks)
  std::size_t staging_pages = 256;                        // pages per staging buffer (2 per stream: 2 MiB)
  std::size_t kernel_min_runs = 8;                        // fewer runs than this: DMA per run
};

class GpuBackend final : public Backend {
 public:
  // Selects the device and checks the copy kernels; throws nothing: a backend
  // that cannot be made comes back as nullptr with `why`.
  static std::unique_ptr<GpuBackend> create(const GpuBackendOptions& options, std::string* why) noexcept;
  // Waits for and destroys every stream and event, then frees the slabs and
  // pinned memory; never throws, and tolerates a runtime that is unloading.
  ~GpuBackend() override;
  GpuBackend(const GpuBackend&) = delete;
  GpuBackend& operator=(const GpuBackend&) = delete;

  DeviceInfo info() const override;
  Status allocate_chunk(DeviceAddress* out) noexcept override;
  void free_chunk(DeviceAddress chunk) noexcept override;
  Status allocate_host(std::size_t bytes, void** out) noexcept override;
  void free_host(void* p) noexcept override;
  Status create_stream(StreamId* out) noexcept override;
  void destroy_stream(StreamId stream) noexcept override;
  // A failure while enqueueing page k waits for pages [0, k) and writes
  // result = {failure, k} before returning the failure. Argument errors
  // (unknown stream, null or unaligned address) queue nothing. Otherwise
  // `result` is written by the next synchronize (or destroy_stream) of the
  // stream. Unpinned host pages are staged by the calling thread: the source
  // may be reused on return; copy_to_host returns once they have arrived.
  Status copy_to_device(StreamId stream, std::span<const HostToDevicePage> pages,
                        BatchResult* result) noexcept override;
  Status copy_to_host(StreamId stream, std::span<const DeviceToHostPage> pages,
                      BatchResult* result) noexcept override;
  Status copy_device_to_device(StreamId stream, std::span<const DeviceToDevicePage> pages,
                               BatchResult* result) noexcept override;
  Status zero_device(StreamId stream, std::span<const DeviceAddress> pages,
                     BatchResult* result) noexcept override;
  // Host kernels do not run on a GPU (no kCapHostKernels): Errc::invalid_argument.
  Status launch(StreamId stream, std::size_t n, HostKernel kernel, BatchResult* result) noexcept override;
  Status synchronize(StreamId stream) noexcept override;
  Status create_event(EventId* out) noexcept override;
  void destroy_event(EventId event) noexcept override;
  Status record_event(StreamId stream, EventId event) noexcept override;
  Status stream_wait_event(StreamId stream, EventId event) noexcept override;
  Status synchronize_event(EventId event) noexcept override;
  // gpuMalloc'd buffers (outside the chunk pool), freed with the backend at
  // the latest; copies are gpuMemcpyAsync on the stream (pageable host memory
  // is staged by the runtime).
  Status allocate_device_buffer(std::size_t bytes, DeviceAddress* out) noexcept override;
  void free_device_buffer(DeviceAddress buffer) noexcept override;
  Status copy_to_device_buffer(StreamId stream, DeviceAddress dst, const void* src,
                               std::size_t bytes) noexcept override;
  Status copy_from_device_buffer(StreamId stream, void* dst, DeviceAddress src,
                                 std::size_t bytes) noexcept override;
  // The cudaStream_t / hipStream_t of the stream.
  void* native_stream(StreamId stream) const noexcept override;

 private:
  struct Stream;
  // One page to move: dst <- src (src 0: zero-fill).
  struct Move {
    std::uint64_t dst;
    std::uint64_t src;
  };
  // Which side of a batch is host memory, moved through staging where unpinned.
  enum class Staging { none, source, destination };
  // Host page copies into or out of staging, dst <- src, one page each.
  using HostCopies = std::vector<std::pair<void*, const void*>>;

  explicit GpuBackend(const GpuBackendOptions& options);
  std::shared_ptr<Stream> find_stream(StreamId id, Status* error) const noexcept;
  // One device allocation of the pool: chunks [base, base + bytes).
  struct Slab {
    void* allocation = nullptr;
    DeviceAddress base = 0;
    std::uint64_t bytes = 0;
    std::size_t free_chunks = 0;  // of its chunks, how many are on free_chunks_
  };
  using Slabs = std::map<DeviceAddress, Slab>;  // by base
  bool take_free_chunk(DeviceAddress* out) noexcept;
  Status allocate_slab(std::uint64_t want, Slab* out) noexcept;
  void free_slab_if_unused(DeviceAddress base) noexcept;
  bool is_pinned(const void* p) const noexcept;
  bool owns_chunk_page(DeviceAddress page) const noexcept;
  Status run_batch(Stream& stream, const std::vector<Move>& moves, Staging staging, BatchResult* result,
                   bool kernel_may_read = true) noexcept;
  Status move_pages(Stream& stream, const Move* moves, std::size_t n, bool kernel_may_read,
                    std::size_t* enqueued) noexcept;
  Status finish_batch(Stream& stream, Status status, std::size_t done, BatchResult* result) noexcept;
  Status stage_to_device(Stream& stream, const std::vector<Move>& moves, std::size_t* done);
  Status stage_to_host(Stream& stream, const std::vector<Move>& moves, std::size_t* done);
  void stage(Stream& stream, Staging side, std::size_t buffer, std::vector<Move>& moves,
             HostCopies* copies) const;
  Status claim_buffer(Stream& stream, std::size_t* buffer) noexcept;
  Status peer_sources_readable(const std::vector<Move>& moves, bool* kernel_may_read) noexcept;
  bool enable_peer_access(int peer) noexcept;
  Status drain(Stream& stream) noexcept;

  GpuBackendOptions options_;
  std::string name_;
  std::uint32_t capabilities_ = 0;
  CopyKernels* copy_kernels_ = nullptr;  // null: DMA only (no image for this device); freed by the destructor

  std::mutex grow_mutex_;  // one allocate_slab at a time; taken before chunks_mutex_
  mutable std::mutex chunks_mutex_;
  Slabs slabs_;
  std::vector<DeviceAddress> free_chunks_;
  std::uint64_t reserved_bytes_ = 0;  // the slabs' bytes

  bool inside_device_buffer(DeviceAddress address, std::size_t bytes) const noexcept;
  mutable std::mutex buffers_mutex_;
  std::map<DeviceAddress, std::size_t> device_buffers_;  // gpuMalloc base -> bytes

  mutable std::mutex host_mutex_;
  // This backend's allocate_host base -> bytes, freed with it (is_pinned
  // asks the process-wide registry of every backend's).
  std::map<std::uintptr_t, std::size_t> pinned_;

  std::mutex peers_mutex_;
  std::map<int, bool> peer_access_;  // peer device -> access enabled (tried once each)

  mutable std::mutex streams_mutex_;
  StreamId next_stream_ = 1;
  std::unordered_map<StreamId, std::shared_ptr<Stream>> streams_;
  EventId next_event_ = 1;
  std::unordered_map<EventId, gpuEvent_t> events_;
};

}  // namespace uhmm::gpu
