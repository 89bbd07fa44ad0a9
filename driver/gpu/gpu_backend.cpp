#include "gpu_backend.hpp"

#include <algorithm>
#include <cstring>
#include <shared_mutex>
#include <utility>

#include <fmt/format.h>

#include "copy_kernels.hpp"
#include "gpu_status.hpp"

namespace uhmm::gpu {
namespace {

void* as_pointer(std::uint64_t address) noexcept {
  return reinterpret_cast<void*>(static_cast<std::uintptr_t>(address));
}
std::uint64_t as_address(const void* p) noexcept {
  return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(p));
}

Status invalid(std::string message) noexcept { return {Errc::invalid_argument, std::move(message)}; }

// Host page copies (staging fill / drain), dst <- src, kPageSize each. Run on
// the calling thread, never in a stream host function: a copy may take a page
// fault (userfaultfd) whose service needs the runtime, and host functions may
// neither wait for it nor block the runtime thread they share (issue 16, defect 2).
void copy_host_pages(const std::vector<std::pair<void*, const void*>>& pages) noexcept {
  for (const auto& [dst, src] : pages) std::memcpy(dst, src, kPageSize);
}

// True for the error a runtime gives while the process is exiting: teardown
// then has nothing left to release.
bool unloading(gpuError_t error) noexcept { return error == gpuErrorRuntimeUnloading; }

// The slab (by base, in a map of slabs) that holds `address`, or end().
template <class SlabMap>
auto slab_containing(SlabMap& slabs, std::uint64_t address) noexcept {
  auto it = slabs.upper_bound(address);
  if (it == slabs.begin()) return slabs.end();
  --it;
  return address < it->first + it->second.bytes ? it : slabs.end();
}

// Pinned host memory of every backend of this plugin, process-wide. It is
// allocated portable, so memory one device's backend pinned is pinned for
// every device: the context's staging pool, made through the first device's
// backend, must not be staged again by the others (issue 16, defect 5).
class PinnedRegistry {
 public:
  void add(std::uintptr_t base, std::size_t bytes) {
    std::unique_lock lock(mutex_);
    ranges_.emplace(base, bytes);
  }
  void remove(std::uintptr_t base) noexcept {
    std::unique_lock lock(mutex_);
    ranges_.erase(base);
  }
  // Whether the page at `a` lies inside one pinned allocation.
  bool holds_page(std::uintptr_t a) const noexcept {
    std::shared_lock lock(mutex_);
    auto it = ranges_.upper_bound(a);
    if (it == ranges_.begin()) return false;
    --it;
    return a - it->first < it->second && kPageSize <= it->second - (a - it->first);
  }

 private:
  mutable std::shared_mutex mutex_;
  std::map<std::uintptr_t, std::size_t> ranges_;  // base -> bytes
};

// Never destroyed: backends may be torn down by other static destructors.
PinnedRegistry& pinned_registry() noexcept {
  static auto* registry = new PinnedRegistry;
  return *registry;
}

}  // namespace

struct GpuBackend::Stream {
  gpuStream_t handle = nullptr;
  std::byte* staging = nullptr;  // pinned: kStagingBuffers buffers of options_.staging_pages pages
  // Recorded after the last DMA that read or wrote each buffer: the buffer is
  // filled (or drained) again only after it completed.
  std::array<gpuEvent_t, kStagingBuffers> staging_done{};
  std::array<bool, kStagingBuffers> staging_busy{};
  std::size_t next_buffer = 0;
  std::mutex enqueue_mutex;  // one batch at a time: batches share the staging buffers
  std::mutex results_mutex;
  std::vector<std::pair<BatchResult*, std::size_t>> results;  // queued batches: written by drain()

  // Releases what create_stream made (the caller has waited for its work).
  void release() noexcept {
    if (handle != nullptr) (void)gpuStreamDestroy(handle);
    for (gpuEvent_t event : staging_done)
      if (event != nullptr) (void)gpuEventDestroy(event);
    if (staging != nullptr) (void)gpuFreeHost(staging);
  }
};

GpuBackend::GpuBackend(const GpuBackendOptions& options) : options_(options) {
  options_.pool_bytes -= options_.pool_bytes % kChunkSize;
  options_.slab_bytes = std::max<std::uint64_t>(kChunkSize, options_.slab_bytes - options_.slab_bytes % kChunkSize);
  options_.staging_pages = std::max<std::size_t>(1, options_.staging_pages);
}

std::unique_ptr<GpuBackend> GpuBackend::create(const GpuBackendOptions& options, std::string* why) noexcept {
  try {
    std::unique_ptr<GpuBackend> backend(new GpuBackend(options));
    const DeviceScope device(options.device);
    if (Status s = UHMM_GPU_STATUS(device.error()); !s) {
      *why = s.message;
      return nullptr;
    }
    gpuDeviceProp props{};
    if (Status s = UHMM_GPU_STATUS(gpuGetDeviceProperties(&props, options.device)); !s) {
      *why = s.message;
      return nullptr;
    }
    backend->name_ = props.name;
    // The kernel path is taken only when this plugin has code for the device's architecture.
    // A failure (no image for this architecture) is no error: copies take DMA only.
    (void)UHMM_GPU_STATUS(load_copy_kernels(&backend->copy_kernels_));
    backend->capabilities_ = kCapPeerCopy | (backend->copy_kernels_ != nullptr ? kCapCopyKernels : 0u);
    return backend;
  } catch (const std::exception& e) {
    *why = e.what();
    return nullptr;
  }
}

GpuBackend::~GpuBackend() {
  const DeviceScope device(options_.device);
  if (unloading(device.error())) return;  // the runtime already released everything
  for (auto& [id, stream] : streams_) {
    (void)drain(*stream);
    stream->release();
  }
  for (auto& [id, event] : events_) (void)gpuEventDestroy(event);
  unload_copy_kernels(copy_kernels_);
  for (auto& [base, slab] : slabs_) (void)gpuFree(slab.allocation);
  for (auto& [base, bytes] : device_buffers_) (void)gpuFree(as_pointer(base));
  for (auto& [base, bytes] : pinned_) {
    pinned_registry().remove(base);
    (void)gpuFreeHost(as_pointer(base));
  }
}

DeviceInfo GpuBackend::info() const {
  return DeviceInfo{kBackendName, name_, options_.pool_bytes, capabilities_};
}

// ---- device memory: chunks from slabs ----

Status GpuBackend::allocate_chunk(DeviceAddress* out) noexcept {
  if (out == nullptr) return invalid("allocate_chunk: null output");
  if (take_free_chunk(out)) return Status::ok();
  // One grower at a time, and chunks_mutex_ not held across gpuMalloc (which
  // may take long): every copy's page check (owns_chunk_page) takes it.
  std::lock_guard grow(grow_mutex_);
  if (take_free_chunk(out)) return Status::ok();  // another thread grew the pool meanwhile
  std::uint64_t want = 0;
  {
    std::lock_guard lock(chunks_mutex_);  // reserved_bytes_ changes only under grow_mutex_
    if (reserved_bytes_ + kChunkSize > options_.pool_bytes)
      return {Errc::out_of_memory, fmt::format("{} device {}: the pool limit of {} bytes is reached", kBackendName,
                                               options_.device, options_.pool_bytes)};
    want = std::min(options_.slab_bytes, options_.pool_bytes - reserved_bytes_);
  }
  Slab slab;
  if (Status s = allocate_slab(want, &slab); !s) return s;
  try {
    std::lock_guard lock(chunks_mutex_);
    // Room for every chunk of every slab: free_chunk never allocates.
    free_chunks_.reserve((reserved_bytes_ + slab.bytes) / kChunkSize);
    slab.free_chunks = slab.bytes / kChunkSize - 1;  // one is handed out now
    slabs_.emplace(slab.base, slab);
    // Lowest chunk on top of the stack.
    for (std::uint64_t c = slab.bytes / kChunkSize; c-- > 1;) free_chunks_.push_back(slab.base + c * kChunkSize);
    reserved_bytes_ += slab.bytes;
    *out = slab.base;
  } catch (...) {
    (void)gpuFree(slab.allocation);
    return {Errc::out_of_memory, "allocate_chunk: host memory exhausted"};
  }
  return Status::ok();
}

bool GpuBackend::take_free_chunk(DeviceAddress* out) noexcept {
  std::lock_guard lock(chunks_mutex_);
  if (free_chunks_.empty()) return false;
  *out = free_chunks_.back();
  free_chunks_.pop_back();
  --slab_containing(slabs_, *out)->second.free_chunks;
  return true;
}


// A slab of `want` bytes (whole chunks), allocated exactly: both vendors align
// allocations of 2 MiB and more to 2 MiB. Only where the address comes back
// unaligned is it allocated again one chunk larger. Near a full device, falls
// back to a single chunk.
Status GpuBackend::allocate_slab(std::uint64_t want, Slab* out) noexcept {
  UHMM_GPU_ON_DEVICE(options_.device);
  void* p = nullptr;
  gpuError_t error = gpuSuccess;
  for (;;) {
    error = gpuMalloc(&p, want);
    if (error == gpuSuccess || want == kChunkSize || error != gpuErrorMemoryAllocation) break;
    (void)gpuGetLastError();
    want = kChunkSize;
  }
  if (error == gpuSuccess && as_address(p) % kChunkSize != 0) {
    // Rare (no vendor does it); freeing synchronizes the device, but this is not the launch path.
    UHMM_GPU_TRY(gpuFree(p));
    p = nullptr;
    error = gpuMalloc(&p, want + kChunkSize);
  }
  if (Status s = UHMM_GPU_STATUS(error); !s) {
    if (s.code == Errc::out_of_memory)
      s.message = fmt::format("{} device {}: device memory exhausted: {}", kBackendName, options_.device, s.message);
    return s;
  }
  *out = Slab{p, (as_address(p) + kChunkSize - 1) / kChunkSize * kChunkSize, want, 0};
  return Status::ok();
}

void GpuBackend::free_chunk(DeviceAddress chunk) noexcept {
  DeviceAddress unused_slab = 0;
  {
    std::lock_guard lock(chunks_mutex_);
    const auto slab = slab_containing(slabs_, chunk);
    if (chunk % kChunkSize != 0 || slab == slabs_.end()) return;  // not ours: ignored
    free_chunks_.push_back(chunk);  // reserved for every chunk: does not throw
    if (++slab->second.free_chunks == slab->second.bytes / kChunkSize) unused_slab = slab->first;
  }
  if (unused_slab != 0) free_slab_if_unused(unused_slab);
}

// Returns a slab none of whose chunks is handed out to the runtime, so that
// a lowered pool limit shrinks the device allocation (issue 16, defect 8).
// gpuFree may synchronize the device: only the grow mutex is held across it.
void GpuBackend::free_slab_if_unused(DeviceAddress base) noexcept {
  std::lock_guard grow(grow_mutex_);
  Slab slab;
  {
    std::lock_guard lock(chunks_mutex_);
    const auto it = slabs_.find(base);
    // Another thread may have taken a chunk of it (or freed it) meanwhile.
    if (it == slabs_.end() || it->second.free_chunks != it->second.bytes / kChunkSize) return;
    slab = it->second;
    slabs_.erase(it);
    std::erase_if(free_chunks_, [&](DeviceAddress c) { return c >= base && c < base + slab.bytes; });
  }
  const DeviceScope device(options_.device);
  gpuError_t error = device.error();
  if (unloading(error)) return;
  if (error == gpuSuccess) error = gpuFree(slab.allocation);
  std::lock_guard lock(chunks_mutex_);
  if (error == gpuSuccess) {
    reserved_bytes_ -= slab.bytes;
    return;
  }
  // Not freed (the device failed): it stays in the pool, its chunks free again.
  (void)gpuGetLastError();
  try {
    slabs_.emplace(base, slab);
  } catch (...) {
    return;  // no host memory to keep it: lost to the pool
  }
  for (std::uint64_t c = slab.bytes / kChunkSize; c-- > 0;) free_chunks_.push_back(base + c * kChunkSize);
}

bool GpuBackend::owns_chunk_page(DeviceAddress page) const noexcept {
  std::lock_guard lock(chunks_mutex_);
  return slab_containing(slabs_, page) != slabs_.end();
}

// ---- pinned host memory ----

Status GpuBackend::allocate_host(std::size_t bytes, void** out) noexcept {
  if (out == nullptr) return invalid("allocate_host: null output");
  if (bytes == 0) return {Errc::zero_length, "allocate_host: 0 bytes"};
  UHMM_GPU_ON_DEVICE(options_.device);
  void* p = nullptr;
  UHMM_GPU_TRY(gpuHostAlloc(&p, bytes, gpuHostAllocPortableMapped));
  try {
    std::lock_guard lock(host_mutex_);
    pinned_registry().add(as_address(p), bytes);
    try {
      pinned_.emplace(as_address(p), bytes);
    } catch (...) {
      pinned_registry().remove(as_address(p));
      throw;
    }
  } catch (...) {
    (void)gpuFreeHost(p);
    return {Errc::out_of_memory, "allocate_host: host memory exhausted"};
  }
  *out = p;
  return Status::ok();
}

void GpuBackend::free_host(void* p) noexcept {
  {
    std::lock_guard lock(host_mutex_);
    if (pinned_.erase(as_address(p)) == 0) return;  // not ours: ignored
    pinned_registry().remove(as_address(p));
  }
  (void)gpuFreeHost(p);
}

// Pinned by any backend of this plugin (every device's), not only this one.
bool GpuBackend::is_pinned(const void* p) const noexcept {
  return pinned_registry().holds_page(reinterpret_cast<std::uintptr_t>(p));
}

// ---- streams and events ----

Status GpuBackend::create_stream(StreamId* out) noexcept {
  if (out == nullptr) return invalid("create_stream: null output");
  UHMM_GPU_ON_DEVICE(options_.device);
  std::shared_ptr<Stream> stream;
  try {
    stream = std::make_shared<Stream>();
  } catch (...) {
    return {Errc::out_of_memory, "create_stream: host memory exhausted"};
  }
  Status made = UHMM_GPU_STATUS(gpuStreamCreateWithFlags(&stream->handle, gpuStreamNonBlocking));
  void* staging = nullptr;
  if (made)
    made = UHMM_GPU_STATUS(
        gpuHostAlloc(&staging, kStagingBuffers * options_.staging_pages * kPageSize, gpuHostAllocPortableMapped));
  stream->staging = static_cast<std::byte*>(staging);
  for (gpuEvent_t& event : stream->staging_done)
    if (made) made = UHMM_GPU_STATUS(gpuEventCreateWithFlags(&event, gpuEventDisableTiming));
  if (!made) {
    stream->release();
    return made;
  }
  try {
    std::lock_guard lock(streams_mutex_);
    *out = next_stream_++;
    streams_.emplace(*out, stream);
  } catch (...) {
    stream->release();
    return {Errc::out_of_memory, "create_stream: host memory exhausted"};
  }
  return Status::ok();
}

void GpuBackend::destroy_stream(StreamId id) noexcept {
  std::shared_ptr<Stream> stream;
  {
    std::lock_guard lock(streams_mutex_);
    auto it = streams_.find(id);
    if (it == streams_.end()) return;
    stream = std::move(it->second);
    streams_.erase(it);
  }
  const DeviceScope device(options_.device);
  if (unloading(device.error())) return;
  (void)drain(*stream);
  stream->release();
}

std::shared_ptr<GpuBackend::Stream> GpuBackend::find_stream(StreamId id, Status* error) const noexcept {
  std::lock_guard lock(streams_mutex_);
  auto it = streams_.find(id);
  if (it != streams_.end()) return it->second;
  *error = invalid(fmt::format("{}: unknown stream {}", kBackendName, id));
  return nullptr;
}

Status GpuBackend::synchronize(StreamId id) noexcept {
  Status error;
  auto stream = find_stream(id, &error);
  if (!stream) return error;
  UHMM_GPU_ON_DEVICE(options_.device);
  return drain(*stream);
}

// Waits for the stream, then writes the results of the batches queued before
// the call: done, or the stream's failure with no page counted (which pages a
// failed stream finished is unknown). An asynchronous failure (a faulting copy
// kernel) is the runtime's error reported here; enqueue failures were
// returned by the batch call.
Status GpuBackend::drain(Stream& stream) noexcept {
  std::vector<std::pair<BatchResult*, std::size_t>> results;
  {
    std::lock_guard lock(stream.results_mutex);
    results.swap(stream.results);
  }
  const Status status = UHMM_GPU_STATUS(gpuStreamSynchronize(stream.handle));
  for (auto& [result, done] : results) {
    try {
      result->status = status;
    } catch (...) {
      result->status = {status.code, {}};  // no memory for the message
    }
    result->pages_done = status ? done : 0;
  }
  return status;
}

Status GpuBackend::create_event(EventId* out) noexcept {
  if (out == nullptr) return invalid("create_event: null output");
  UHMM_GPU_ON_DEVICE(options_.device);
  gpuEvent_t event = nullptr;
  UHMM_GPU_TRY(gpuEventCreateWithFlags(&event, gpuEventDisableTiming));
  try {
    std::lock_guard lock(streams_mutex_);
    *out = next_event_++;
    events_.emplace(*out, event);
  } catch (...) {
    (void)gpuEventDestroy(event);
    return {Errc::out_of_memory, "create_event: host memory exhausted"};
  }
  return Status::ok();
}

void GpuBackend::destroy_event(EventId id) noexcept {
  gpuEvent_t event = nullptr;
  {
    std::lock_guard lock(streams_mutex_);
    auto it = events_.find(id);
    if (it == events_.end()) return;
    event = it->second;
    events_.erase(it);
  }
  // The runtime defers the release while queued work still refers to it.
  (void)gpuEventDestroy(event);
}

Status GpuBackend::record_event(StreamId stream_id, EventId event_id) noexcept {
  Status error;
  auto stream = find_stream(stream_id, &error);
  if (!stream) return error;
  gpuEvent_t event = nullptr;
  {
    std::lock_guard lock(streams_mutex_);
    auto it = events_.find(event_id);
    if (it == events_.end()) return invalid(fmt::format("{}: unknown event {}", kBackendName, event_id));
    event = it->second;
  }
  UHMM_GPU_ON_DEVICE(options_.device);
  UHMM_GPU_TRY(gpuEventRecord(event, stream->handle));
  return Status::ok();
}

Status GpuBackend::stream_wait_event(StreamId stream_id, EventId event_id) noexcept {
  Status error;
  auto stream = find_stream(stream_id, &error);
  if (!stream) return error;
  gpuEvent_t event = nullptr;
  {
    std::lock_guard lock(streams_mutex_);
    auto it = events_.find(event_id);
    if (it == events_.end()) return invalid(fmt::format("{}: unknown event {}", kBackendName, event_id));
    event = it->second;
  }
  UHMM_GPU_ON_DEVICE(options_.device);
  UHMM_GPU_TRY(gpuStreamWaitEvent(stream->handle, event, 0));
  return Status::ok();
}

Status GpuBackend::synchronize_event(EventId event_id) noexcept {
  gpuEvent_t event = nullptr;
  {
    std::lock_guard lock(streams_mutex_);
    auto it = events_.find(event_id);
    if (it == events_.end()) return invalid(fmt::format("{}: unknown event {}", kBackendName, event_id));
    event = it->second;
  }
  UHMM_GPU_ON_DEVICE(options_.device);
  UHMM_GPU_TRY(gpuEventSynchronize(event));
  return Status::ok();
}

Status GpuBackend::launch(StreamId, std::size_t, HostKernel, BatchResult*) noexcept {
  return invalid(fmt::format("launch: the {} backend runs no host kernels (kCapHostKernels is off)", kBackendName));
}

// ---- batched copies ----

// Enqueues moves[0, n): runs of adjacent pages coalesced, then one DMA per run
// or, for scattered batches on a backend with copy kernels, gather/scatter
// launches of up to PageList::kMaxPages pages. kernel_may_read is false when a
// source is another device's memory, which only DMA reaches without peer
// access. *enqueued counts the pages whose work is queued.
Status GpuBackend::move_pages(Stream& stream, const Move* moves, std::size_t n, bool kernel_may_read,
                              std::size_t* enqueued) noexcept {
  const auto adjacent = [&](std::size_t i) {
    return moves[i].dst == moves[i - 1].dst + kPageSize &&
           ((moves[i].src == 0 && moves[i - 1].src == 0) ||
            (moves[i - 1].src != 0 && moves[i].src == moves[i - 1].src + kPageSize));
  };
  std::size_t runs = n > 0 ? 1 : 0;
  for (std::size_t i = 1; i < n; ++i) runs += adjacent(i) ? 0 : 1;

  if (copy_kernels_ != nullptr && kernel_may_read && runs >= options_.kernel_min_runs) {
    kernels::PageList list;
    for (std::size_t i = 0; i < n;) {
      list.count = static_cast<std::uint32_t>(std::min(n - i, kernels::PageList::kMaxPages));
      for (std::uint32_t k = 0; k < list.count; ++k) {
        list.dst[k] = moves[i + k].dst;
        list.src[k] = moves[i + k].src;
      }
      UHMM_GPU_TRY(enqueue_gather_scatter(*copy_kernels_, stream.handle, list));
      i += list.count;
      *enqueued = i;
    }
    return Status::ok();
  }
  for (std::size_t first = 0; first < n;) {
    std::size_t last = first + 1;
    while (last < n && adjacent(last)) ++last;
    const std::size_t bytes = (last - first) * kPageSize;
    if (moves[first].src == 0)
      UHMM_GPU_TRY(gpuMemsetAsync(as_pointer(moves[first].dst), 0, bytes, stream.handle));
    else
      UHMM_GPU_TRY(gpuMemcpyAsync(as_pointer(moves[first].dst), as_pointer(moves[first].src), bytes,
                                  gpuMemcpyDefault, stream.handle));
    first = last;
    *enqueued = first;
  }
  return Status::ok();
}

// Runs a batch: straight to move_pages, or through staging where a host page
// is not pinned.
Status GpuBackend::run_batch(Stream& stream, const std::vector<Move>& moves, Staging staging,
                             BatchResult* result, bool kernel_may_read) noexcept {
  UHMM_GPU_ON_DEVICE(options_.device);
  std::lock_guard lock(stream.enqueue_mutex);
  std::size_t done = 0;
  Status status;
  try {
    if (staging == Staging::none)
      status = move_pages(stream, moves.data(), moves.size(), kernel_may_read, &done);
    else if (staging == Staging::source)
      status = stage_to_device(stream, moves, &done);
    else
      status = stage_to_host(stream, moves, &done);
  } catch (...) {
    status = {Errc::out_of_memory, "copy: host memory exhausted"};
  }
  return finish_batch(stream, std::move(status), done, result);
}

// Takes the stream's next staging buffer once the DMA that last used it has
// completed (its event): refilling it earlier would change what that DMA
// reads, draining it earlier would read what it has not written yet.
Status GpuBackend::claim_buffer(Stream& stream, std::size_t* buffer) noexcept {
  *buffer = stream.next_buffer;
  stream.next_buffer = (stream.next_buffer + 1) % kStagingBuffers;
  if (stream.staging_busy[*buffer]) {
    UHMM_GPU_TRY(gpuEventSynchronize(stream.staging_done[*buffer]));
    stream.staging_busy[*buffer] = false;
  }
  return Status::ok();
}

// Points the unpinned host side of `moves` (at most staging_pages) at the
// slots of `buffer` (page k at slot k, so runs stay runs) and lists the host
// copies that fill the slots (source) or drain them (destination). Pinned
// pages stay: the DMA reaches them in place.
void GpuBackend::stage(Stream& stream, Staging side, std::size_t buffer, std::vector<Move>& moves,
                       HostCopies* copies) const {
  copies->clear();
  for (std::size_t k = 0; k < moves.size(); ++k) {
    std::uint64_t& host = side == Staging::source ? moves[k].src : moves[k].dst;
    if (is_pinned(as_pointer(host))) continue;
    std::byte* slot = stream.staging + (buffer * options_.staging_pages + k) * kPageSize;
    if (side == Staging::source)
      copies->emplace_back(slot, as_pointer(host));
    else
      copies->emplace_back(as_pointer(host), slot);
    host = as_address(slot);
  }
}

// Host to device: the caller fills buffer-full k + 1 while the DMA of
// buffer-full k runs. The source pages may be reused on return.
Status GpuBackend::stage_to_device(Stream& stream, const std::vector<Move>& moves, std::size_t* done) {
  std::vector<Move> part;
  HostCopies fill;
  for (std::size_t first = 0; first < moves.size(); first += options_.staging_pages) {
    const std::size_t count = std::min(options_.staging_pages, moves.size() - first);
    std::size_t buffer = 0;
    if (Status s = claim_buffer(stream, &buffer); !s) return s;
    part.assign(moves.begin() + static_cast<std::ptrdiff_t>(first),
                moves.begin() + static_cast<std::ptrdiff_t>(first + count));
    stage(stream, Staging::source, buffer, part, &fill);
    copy_host_pages(fill);
    std::size_t enqueued = 0;
    const Status s = move_pages(stream, part.data(), count, true, &enqueued);
    *done = first + enqueued;
    if (!s) return s;
    UHMM_GPU_TRY(gpuEventRecord(stream.staging_done[buffer], stream.handle));
    stream.staging_busy[buffer] = true;
  }
  return Status::ok();
}

// Device to host: the DMA of buffer-full k + 1 runs while the caller drains
// buffer-full k into the final pages; returns when every page arrived.
// *done counts the pages drained (with the pinned pages of their part).
Status GpuBackend::stage_to_host(Stream& stream, const std::vector<Move>& moves, std::size_t* done) {
  struct Part {
    std::size_t end;  // moves[0, end) have arrived once this part is drained
    std::size_t buffer;
    HostCopies drain;
  };
  std::vector<Part> in_flight;  // oldest first, at most kStagingBuffers
  const auto drain_oldest = [&]() -> Status {
    Part& part = in_flight.front();
    UHMM_GPU_TRY(gpuEventSynchronize(stream.staging_done[part.buffer]));
    stream.staging_busy[part.buffer] = false;
    copy_host_pages(part.drain);
    *done = part.end;
    in_flight.erase(in_flight.begin());
    return Status::ok();
  };
  std::vector<Move> part;
  for (std::size_t first = 0; first < moves.size(); first += options_.staging_pages) {
    const std::size_t count = std::min(options_.staging_pages, moves.size() - first);
    if (in_flight.size() == kStagingBuffers)
      if (Status s = drain_oldest(); !s) return s;
    std::size_t buffer = 0;
    if (Status s = claim_buffer(stream, &buffer); !s) return s;
    part.assign(moves.begin() + static_cast<std::ptrdiff_t>(first),
                moves.begin() + static_cast<std::ptrdiff_t>(first + count));
    Part queued{first + count, buffer, {}};
    stage(stream, Staging::destination, buffer, part, &queued.drain);
    std::size_t enqueued = 0;
    // A part that fails part way never reaches the host.
    if (Status s = move_pages(stream, part.data(), count, true, &enqueued); !s) return s;
    UHMM_GPU_TRY(gpuEventRecord(stream.staging_done[buffer], stream.handle));
    stream.staging_busy[buffer] = true;
    in_flight.push_back(std::move(queued));
  }
  while (!in_flight.empty())
    if (Status s = drain_oldest(); !s) return s;
  return Status::ok();
}

// Queues `result` for the next drain of the stream, or, on failure, waits for
// the pages queued so far and writes it now.
Status GpuBackend::finish_batch(Stream& stream, Status status, std::size_t done, BatchResult* result) noexcept {
  if (status && result != nullptr) {
    try {
      std::lock_guard lock(stream.results_mutex);
      stream.results.emplace_back(result, done);
    } catch (...) {
      status = {Errc::out_of_memory, "copy: host memory exhausted"};
    }
  }
  if (status) return status;
  (void)drain(stream);  // the earlier batches' results, and nothing of this one stays queued
  stream.staging_busy.fill(false);
  if (result != nullptr) {
    result->status = status;
    result->pages_done = done;
  }
  return status;
}

Status GpuBackend::copy_to_device(StreamId id, std::span<const HostToDevicePage> pages,
                                  BatchResult* result) noexcept {
  Status error;
  auto stream = find_stream(id, &error);
  if (!stream) return error;
  bool all_pinned = true;
  std::vector<Move> moves;
  try {
    moves.reserve(pages.size());
    for (std::size_t i = 0; i < pages.size(); ++i) {
      const auto& p = pages[i];
      if (p.host == nullptr || as_address(p.host) % kPageSize != 0 || p.device % kPageSize != 0 ||
          !owns_chunk_page(p.device))
        return invalid(fmt::format("copy_to_device: page {} (host {}, device {:#x}) is null, unaligned or not "
                                   "this device's memory", i, p.host, p.device));
      all_pinned = all_pinned && is_pinned(p.host);
      moves.push_back({p.device, as_address(p.host)});
    }
  } catch (...) {
    return {Errc::out_of_memory, "copy_to_device: host memory exhausted"};
  }
  return run_batch(*stream, moves, all_pinned ? Staging::none : Staging::source, result);
}

Status GpuBackend::copy_to_host(StreamId id, std::span<const DeviceToHostPage> pages, BatchResult* result) noexcept {
  Status error;
  auto stream = find_stream(id, &error);
  if (!stream) return error;
  bool all_pinned = true;
  std::vector<Move> moves;
  try {
    moves.reserve(pages.size());
    for (std::size_t i = 0; i < pages.size(); ++i) {
      const auto& p = pages[i];
      if (p.host == nullptr || as_address(p.host) % kPageSize != 0 || p.device % kPageSize != 0 ||
          !owns_chunk_page(p.device))
        return invalid(fmt::format("copy_to_host: page {} (device {:#x}, host {}) is null, unaligned or not this "
                                   "device's memory", i, p.device, p.host));
      all_pinned = all_pinned && is_pinned(p.host);
      moves.push_back({as_address(p.host), p.device});
    }
  } catch (...) {
    return {Errc::out_of_memory, "copy_to_host: host memory exhausted"};
  }
  return run_batch(*stream, moves, all_pinned ? Staging::none : Staging::destination, result);
}

Status GpuBackend::copy_device_to_device(StreamId id, std::span<const DeviceToDevicePage> pages,
                                         BatchResult* result) noexcept {
  Status error;
  auto stream = find_stream(id, &error);
  if (!stream) return error;
  std::vector<Move> moves;
  try {
    moves.reserve(pages.size());
    for (std::size_t i = 0; i < pages.size(); ++i) {
      const auto& p = pages[i];
      // The source may be another device's page (peer copy through unified addressing).
      if (p.src == 0 || p.src % kPageSize != 0 || p.dst % kPageSize != 0 || !owns_chunk_page(p.dst))
        return invalid(fmt::format("copy_device_to_device: page {} ({:#x} -> {:#x}) is null, unaligned or not "
                                   "this device's memory", i, p.src, p.dst));
      moves.push_back({p.dst, p.src});
    }
  } catch (...) {
    return {Errc::out_of_memory, "copy_device_to_device: host memory exhausted"};
  }
  bool kernel_may_read = true;
  if (Status s = peer_sources_readable(moves, &kernel_may_read); !s) return s;
  return run_batch(*stream, moves, Staging::none, result, kernel_may_read);
}

// Enables peer access to the devices whose pages the batch reads (issue 16,
// defect 6: it never was, so every device-to-device copy went through host
// memory). *kernel_may_read: every source is this device's or a peer's it
// reaches; a kernel touching a peer without access faults (sticky). A
// source that is no device memory is invalid_argument, nothing queued.
Status GpuBackend::peer_sources_readable(const std::vector<Move>& moves, bool* kernel_may_read) noexcept {
  UHMM_GPU_ON_DEVICE(options_.device);
  DeviceAddress known_chunk = 0;  // a chunk lies on one device: ask once per chunk
  for (const Move& move : moves) {
    const DeviceAddress chunk = move.src - move.src % kChunkSize;
    if (chunk == known_chunk || owns_chunk_page(move.src)) continue;
    gpuPointerAttributes attributes{};
    const gpuError_t error = gpuPointerGetAttributes(&attributes, as_pointer(move.src));
    if (error != gpuSuccess || attributes.device < 0) {
      (void)gpuGetLastError();
      return invalid(fmt::format("copy_device_to_device: source {:#x} is no device's memory ({})", move.src,
                                 gpuGetErrorName(error)));
    }
    known_chunk = chunk;
    if (attributes.device != options_.device && !enable_peer_access(attributes.device)) *kernel_may_read = false;
  }
  return Status::ok();
}

// This device's access to `peer`'s memory, enabled once where the runtime
// allows it (the peer holds pages, so its context exists already). Without
// it copies still work (the runtime stages them through host memory) but
// kernels must not read the peer.
bool GpuBackend::enable_peer_access(int peer) noexcept {
  std::lock_guard lock(peers_mutex_);
  if (const auto it = peer_access_.find(peer); it != peer_access_.end()) return it->second;
  int can_access = 0;
  gpuError_t error = gpuDeviceCanAccessPeer(&can_access, options_.device, peer);
  if (error == gpuSuccess && can_access != 0) {
    error = gpuDeviceEnablePeerAccess(peer, 0);
    if (error == gpuErrorPeerAccessAlreadyEnabled) {
      // By the application, or by an earlier context in this process.
      (void)gpuGetLastError();
      error = gpuSuccess;
    }
  }
  if (error != gpuSuccess) (void)gpuGetLastError();  // not enabled: not this thread's next error
  const bool enabled = error == gpuSuccess && can_access != 0;
  try {
    peer_access_.emplace(peer, enabled);
  } catch (...) {
    // Asked again next time.
  }
  return enabled;
}

Status GpuBackend::zero_device(StreamId id, std::span<const DeviceAddress> pages, BatchResult* result) noexcept {
  Status error;
  auto stream = find_stream(id, &error);
  if (!stream) return error;
  std::vector<Move> moves;
  try {
    moves.reserve(pages.size());
    for (std::size_t i = 0; i < pages.size(); ++i) {
      if (pages[i] % kPageSize != 0 || !owns_chunk_page(pages[i]))
        return invalid(fmt::format("zero_device: page {} ({:#x}) is unaligned or not this device's memory", i,
                                   pages[i]));
      moves.push_back({pages[i], 0});
    }
  } catch (...) {
    return {Errc::out_of_memory, "zero_device: host memory exhausted"};
  }
  return run_batch(*stream, moves, Staging::none, result);
}

// ---- device buffers ----

Status GpuBackend::allocate_device_buffer(std::size_t bytes, DeviceAddress* out) noexcept {
  if (out == nullptr) return invalid("allocate_device_buffer: null output");
  *out = 0;
  if (bytes == 0) return {Errc::zero_length, "allocate_device_buffer: 0 bytes"};
  UHMM_GPU_ON_DEVICE(options_.device);
  void* p = nullptr;
  UHMM_GPU_TRY(gpuMalloc(&p, bytes));  // 256-byte aligned by both runtimes
  try {
    std::lock_guard lock(buffers_mutex_);
    device_buffers_.emplace(as_address(p), bytes);
  } catch (...) {
    (void)gpuFree(p);
    return {Errc::out_of_memory, "allocate_device_buffer: host memory exhausted"};
  }
  *out = as_address(p);
  return Status::ok();
}

void GpuBackend::free_device_buffer(DeviceAddress buffer) noexcept {
  {
    std::lock_guard lock(buffers_mutex_);
    if (device_buffers_.erase(buffer) == 0) return;  // not ours: ignored
  }
  const DeviceScope device(options_.device);
  if (unloading(device.error())) return;
  (void)gpuFree(as_pointer(buffer));
}

bool GpuBackend::inside_device_buffer(DeviceAddress address, std::size_t bytes) const noexcept {
  std::lock_guard lock(buffers_mutex_);
  auto it = device_buffers_.upper_bound(address);
  if (it == device_buffers_.begin()) return false;
  --it;
  return address >= it->first && bytes <= it->second && address - it->first <= it->second - bytes;
}

Status GpuBackend::copy_to_device_buffer(StreamId id, DeviceAddress dst, const void* src,
                                         std::size_t bytes) noexcept {
  Status error;
  auto stream = find_stream(id, &error);
  if (!stream) return error;
  if (bytes == 0) return Status::ok();
  if (src == nullptr || !inside_device_buffer(dst, bytes))
    return invalid(fmt::format("copy_to_device_buffer: {} bytes from {} to {:#x}: null source, or not inside one "
                               "device buffer", bytes, src, dst));
  UHMM_GPU_ON_DEVICE(options_.device);
  UHMM_GPU_TRY(gpuMemcpyAsync(as_pointer(dst), src, bytes, gpuMemcpyDefault, stream->handle));
  return Status::ok();
}

Status GpuBackend::copy_from_device_buffer(StreamId id, void* dst, DeviceAddress src,
                                           std::size_t bytes) noexcept {
  Status error;
  auto stream = find_stream(id, &error);
  if (!stream) return error;
  if (bytes == 0) return Status::ok();
  if (dst == nullptr || !inside_device_buffer(src, bytes))
    return invalid(fmt::format("copy_from_device_buffer: {} bytes from {:#x} to {}: null destination, or not "
                               "inside one device buffer", bytes, src, dst));
  UHMM_GPU_ON_DEVICE(options_.device);
  UHMM_GPU_TRY(gpuMemcpyAsync(dst, as_pointer(src), bytes, gpuMemcpyDefault, stream->handle));
  return Status::ok();
}

void* GpuBackend::native_stream(StreamId id) const noexcept {
  std::lock_guard lock(streams_mutex_);
  auto it = streams_.find(id);
  return it == streams_.end() ? nullptr : static_cast<void*>(it->second->handle);
}

}  // namespace uhmm::gpu
