// The cpu backend's streams, events, memory and copy engine. Everything a
// worker thread runs is wrapped so that no exception leaves it: failures
// become the Status of the operation, reported by its BatchResult and by the
// stream's next synchronize.
#include "cpu_backend.hpp"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include "uhmm/detail/log.hpp"
#include "uhmm/detail/signal_mask.hpp"
#include "uhmm/device_span.hpp"
#include "uhmm/page_copy.hpp"

namespace uhmm::detail {
namespace {

constexpr std::size_t kMaxPendingErrors = 64;
// A batch is split across copy threads only when each gets this many pages.
constexpr std::size_t kMinPagesPerCopySlice = 32;
// MADV_POPULATE_WRITE (Linux 5.14), newer than Debian 12's glibc headers.
constexpr int kMadvPopulateWrite = 23;
// Copy batches up to this size run in the caller when their stream is idle.
constexpr std::size_t kMaxInlineCopyPages = 32;
constexpr unsigned kMaxKernelThreads = 16;

std::uint64_t as_address(const void* p) noexcept {
  return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(p));
}

bool aligned_to(std::uint64_t address, std::uint64_t alignment) noexcept {
  return address % alignment == 0;
}

std::string errno_text(int err) {
  char buf[128];
  // GNU strerror_r returns the message (maybe not in buf).
  return std::string(strerror_r(err, buf, sizeof buf));
}

Status invalid(std::string message) noexcept {
  try {
    return {Errc::invalid_argument, std::move(message)};
  } catch (...) {
    return {Errc::invalid_argument, {}};
  }
}

// Runs f, turning any exception into a Status, so that nothing escapes a
// noexcept call or a worker thread.
template <class F>
Status guarded(const char* what, F&& f) noexcept {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    return {Errc::out_of_memory, {}};
  } catch (const std::exception& e) {
    try {
      return {Errc::device_error, fmt::format("cpu backend: {}: {}", what, e.what())};
    } catch (...) {
      return {Errc::device_error, {}};
    }
  } catch (...) {
    return {Errc::device_error, {}};
  }
}

}  // namespace

// Threads that help a stream worker run one parallel operation. The worker
// claims slices too, so an operation finishes even when every helper is busy
// with another stream's work: helpers add speed, never a dependency.
class CpuBackend::HelperPool {
 public:
  struct Job {
    std::size_t slices = 0;
    const std::function<void(std::size_t)>* fn = nullptr;  // valid while slices are unclaimed
    std::atomic<std::size_t> next{0};
    std::atomic<std::size_t> done{0};
    std::mutex m;
    std::condition_variable cv;

    void work() noexcept {
      for (;;) {
        const std::size_t s = next.fetch_add(1);
        if (s >= slices) return;
        (*fn)(s);  // fn is noexcept by construction (parallel_slices guards it)
        if (done.fetch_add(1) + 1 == slices) {
          std::lock_guard lock(m);
          cv.notify_all();
        }
      }
    }
    void wait() noexcept {
      std::unique_lock lock(m);
      cv.wait(lock, [&] { return done.load() == slices; });
    }
  };

  explicit HelperPool(unsigned threads) {
    try {
      for (unsigned i = 0; i < threads; ++i) threads_.push_back(spawn_library_thread([this] { run(); }));
    } catch (const std::exception& e) {
      stop();
      throw Error(Errc::system_error, fmt::format("cpu backend: cannot start kernel threads: {}", e.what()));
    }
  }
  ~HelperPool() { stop(); }
  HelperPool(const HelperPool&) = delete;
  HelperPool& operator=(const HelperPool&) = delete;

  unsigned size() const noexcept { return static_cast<unsigned>(threads_.size()); }

  // Lets up to `helpers` threads join the job; best effort (no helpers on failure).
  void offer(const std::shared_ptr<Job>& job, unsigned helpers) noexcept {
    try {
      std::lock_guard lock(m_);
      for (unsigned i = 0; i < helpers; ++i) jobs_.push_back(job);
    } catch (...) {
      return;
    }
    cv_.notify_all();
  }

 private:
  void run() noexcept {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock lock(m_);
        cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
        if (stop_) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job->work();
    }
  }
  void stop() noexcept {
    {
      std::lock_guard lock(m_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_)
      if (t.joinable()) t.join();
    threads_.clear();
  }

  std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> jobs_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

struct CpuBackend::Event {
  std::mutex m;
  std::condition_variable cv;
  std::uint64_t recorded = 0;   // records issued
  std::uint64_t completed = 0;  // highest record that has run

  void wait_for(std::uint64_t target) noexcept {
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return completed >= target; });
  }
};

struct CpuBackend::Stream {
  struct Op {
    std::uint64_t seq = 0;
    std::function<Status()> run;
  };

  explicit Stream(StreamId stream_id) : id(stream_id) {}

  // Queues op; fails when the stream is being destroyed. With run_if_idle, an
  // op on an idle stream runs in the caller instead (same order, same result):
  // a tiny copy then costs no thread hand-off, as a GPU driver serves small
  // transfers through a CPU mapping instead of its copy engine.
  Status enqueue(std::function<Status()> run, bool run_if_idle = false) noexcept {
    try {
      std::unique_lock lock(m);
      if (closing) return invalid(fmt::format("cpu backend: stream {} is being destroyed", id));
      if (run_if_idle && queue.empty() && completed == enqueued && !running_inline && !on_worker()) {
        const std::uint64_t seq = ++enqueued;
        running_inline = true;
        lock.unlock();
        Status status = guarded("stream operation", [&] { return run(); });
        run = nullptr;
        lock.lock();
        running_inline = false;
        finish(seq, std::move(status));
        const bool queued_meanwhile = !queue.empty();
        lock.unlock();
        if (queued_meanwhile) work_cv.notify_one();  // the worker held off while this ran
        done_cv.notify_all();
        return Status::ok();
      }
      queue.push_back(Op{enqueued + 1, std::move(run)});
      ++enqueued;
      lock.unlock();
      work_cv.notify_one();
      return Status::ok();
    } catch (...) {
      return {Errc::out_of_memory, fmt::format("cpu backend: cannot queue work on stream {}", id)};
    }
  }

  // Pre: m held. Marks op seq done and keeps its failure for synchronize.
  void finish(std::uint64_t seq, Status status) noexcept {
    completed = seq;
    if (!status && errors.size() < kMaxPendingErrors) {
      try {
        errors.emplace_back(seq, std::move(status));
      } catch (...) {
        // Losing the report is better than losing the worker.
      }
    }
  }

  void worker_loop() noexcept {
    for (;;) {
      Op op;
      {
        std::unique_lock lock(m);
        work_cv.wait(lock, [&] { return (closing && queue.empty()) || (!queue.empty() && !running_inline); });
        if (queue.empty()) return;  // closing and drained
        op = std::move(queue.front());
        queue.pop_front();
      }
      Status status = guarded("stream operation", [&] { return op.run(); });
      op.run = nullptr;  // release captured state before the op counts as done
      {
        std::lock_guard lock(m);
        finish(op.seq, std::move(status));
      }
      done_cv.notify_all();
    }
  }

  bool on_worker() const noexcept { return std::this_thread::get_id() == worker_id; }

  const StreamId id;
  std::mutex m;
  std::condition_variable work_cv;  // the worker waits for work
  std::condition_variable done_cv;  // synchronize waits for completion
  std::deque<Op> queue;
  std::uint64_t enqueued = 0;   // seq of the last op queued
  std::uint64_t completed = 0;  // seq of the last op run
  bool closing = false;
  bool running_inline = false;  // an op runs in its caller (enqueue with run_if_idle)
  std::deque<std::pair<std::uint64_t, Status>> errors;  // failures not yet reported
  std::thread worker;
  std::thread::id worker_id;
};

namespace {
CpuBackendOptions with_memory(std::uint64_t memory_bytes) {
  CpuBackendOptions options;
  options.memory_bytes = memory_bytes;
  return options;
}
}  // namespace

CpuBackend::CpuBackend(std::uint64_t memory_bytes) : CpuBackend(with_memory(memory_bytes)) {}

CpuBackend::CpuBackend(CpuBackendOptions options) : options_(std::move(options)) {
  options_.copy_threads = std::max(1u, options_.copy_threads);
  kernel_threads_ = options_.kernel_threads;
  if (kernel_threads_ == 0) kernel_threads_ = std::max(1u, std::thread::hardware_concurrency());
  kernel_threads_ = std::min(kernel_threads_, kMaxKernelThreads);
  injection_ = options_.injection;

  nchunks_ = static_cast<std::size_t>((options_.memory_bytes + kChunkSize - 1) / kChunkSize);
  if (nchunks_ > 0) {
    const std::size_t bytes = nchunks_ * kChunkSize;
    memfd_ = memfd_create(fmt::format("uhmm-{}", options_.name).c_str(), MFD_CLOEXEC);
    if (memfd_ < 0)
      throw Error(Errc::system_error, fmt::format("cpu backend '{}': memfd_create failed: {}",
                                                  options_.name, errno_text(errno)));
    if (ftruncate(memfd_, static_cast<off_t>(bytes)) != 0) {
      const int err = errno;
      close(memfd_);
      throw Error(Errc::system_error, fmt::format("cpu backend '{}': cannot size device memory to {} bytes: {}",
                                                  options_.name, bytes, errno_text(err)));
    }
    // Reserve a chunk more than needed so that the memfd lands on a chunk boundary.
    void* reserve = mmap(nullptr, bytes + kChunkSize, PROT_NONE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (reserve == MAP_FAILED) {
      const int err = errno;
      close(memfd_);
      throw Error(Errc::system_error, fmt::format("cpu backend '{}': cannot reserve {} bytes: {}",
                                                  options_.name, bytes, errno_text(err)));
    }
    auto* const lo = static_cast<std::byte*>(reserve);
    auto* const aligned = lo + (kChunkSize - as_address(lo) % kChunkSize) % kChunkSize;
    void* mapped = mmap(aligned, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, memfd_, 0);
    if (mapped == MAP_FAILED) {
      const int err = errno;
      munmap(reserve, bytes + kChunkSize);
      close(memfd_);
      throw Error(Errc::system_error, fmt::format("cpu backend '{}': cannot map device memory: {}",
                                                  options_.name, errno_text(err)));
    }
    if (aligned > lo) munmap(lo, static_cast<std::size_t>(aligned - lo));
    auto* const hi = lo + bytes + kChunkSize;
    if (hi > aligned + bytes) munmap(aligned + bytes, static_cast<std::size_t>(hi - (aligned + bytes)));
    base_ = aligned;
  }
  chunk_allocated_.assign(nchunks_, false);
  free_chunks_.reserve(nchunks_);
  for (std::size_t c = nchunks_; c > 0; --c) free_chunks_.push_back(c - 1);

  const unsigned helpers = std::max(options_.copy_threads, kernel_threads_) - 1;
  try {
    helpers_ = std::make_unique<HelperPool>(helpers);
  } catch (...) {
    {
    std::lock_guard lock(buffers_mutex_);
    for (const auto& [base, bytes] : device_buffers_)
      munmap(reinterpret_cast<void*>(static_cast<std::uintptr_t>(base)), (bytes + kPageSize - 1) / kPageSize * kPageSize);
  }
  if (base_ != nullptr) munmap(base_, nchunks_ * kChunkSize);
    if (memfd_ >= 0) close(memfd_);
    throw;
  }
}

CpuBackend::~CpuBackend() {
  std::vector<StreamId> ids;
  {
    std::lock_guard lock(streams_mutex_);
    for (const auto& [id, stream] : streams_) ids.push_back(id);
  }
  for (StreamId id : ids) destroy_stream(id);
  helpers_.reset();
  {
    std::lock_guard lock(host_mutex_);
    for (const auto& [p, bytes] : host_allocations_) munmap(p, bytes);
  }
  {
    std::lock_guard lock(buffers_mutex_);
    for (const auto& [base, bytes] : device_buffers_)
      munmap(reinterpret_cast<void*>(static_cast<std::uintptr_t>(base)), (bytes + kPageSize - 1) / kPageSize * kPageSize);
  }
  if (base_ != nullptr) munmap(base_, nchunks_ * kChunkSize);
  if (memfd_ >= 0) close(memfd_);
}

DeviceInfo CpuBackend::info() const {
  return DeviceInfo{"cpu", options_.name, std::uint64_t{nchunks_} * kChunkSize,
                    kCapHostKernels | kCapHostVisibleMemory | kCapPeerCopy | kCapHostMemoryAccess};
}

// ---- device memory ----

Status CpuBackend::allocate_chunk(DeviceAddress* out) noexcept {
  if (out == nullptr) return invalid("cpu backend: allocate_chunk: null output pointer");
  std::lock_guard lock(chunks_mutex_);
  if (free_chunks_.empty()) {
    try {
      return {Errc::out_of_memory,
              fmt::format("cpu backend '{}': device memory exhausted ({} chunks of {} bytes in use)",
                          options_.name, nchunks_, kChunkSize)};
    } catch (...) {
      return {Errc::out_of_memory, {}};
    }
  }
  const std::size_t c = free_chunks_.back();
  // Device memory is physically there, as VRAM is: populate the chunk now, so
  // that copies into it do not take a first-touch fault per page.
  if (::madvise(base_ + c * kChunkSize, kChunkSize, kMadvPopulateWrite) != 0 && errno == ENOMEM)
    return {Errc::out_of_memory,
            fmt::format("cpu backend '{}': no host memory to back a device chunk", options_.name)};
  free_chunks_.pop_back();
  chunk_allocated_[c] = true;
  *out = as_address(base_ + c * kChunkSize);
  return Status::ok();
}

void CpuBackend::free_chunk(DeviceAddress chunk) noexcept {
  const std::uint64_t base = as_address(base_);
  {
    std::lock_guard lock(chunks_mutex_);
    const bool inside = base_ != nullptr && chunk >= base && chunk < base + nchunks_ * kChunkSize &&
                        aligned_to(chunk - base, kChunkSize);
    const std::size_t c = inside ? static_cast<std::size_t>((chunk - base) / kChunkSize) : 0;
    if (!inside || !chunk_allocated_[c]) {
      log().error("cpu backend '{}': free_chunk of {:#x}, which is not an allocated chunk (ignored)",
                  options_.name, chunk);
      return;
    }
    chunk_allocated_[c] = false;
    // Give the memory back; contents of a free chunk are undefined anyway.
    fallocate(memfd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(c * kChunkSize),
              static_cast<off_t>(kChunkSize));
    free_chunks_.push_back(c);
  }
}

bool CpuBackend::owns_allocated(DeviceAddress page) const noexcept {
  const std::uint64_t base = as_address(base_);
  if (base_ == nullptr || page < base || page >= base + nchunks_ * kChunkSize) return false;
  return chunk_allocated_[static_cast<std::size_t>((page - base) / kChunkSize)];
}

std::size_t CpuBackend::chunks_in_use() const noexcept {
  std::lock_guard lock(chunks_mutex_);
  return nchunks_ - free_chunks_.size();
}

Status CpuBackend::allocate_host(std::size_t bytes, void** out) noexcept {
  if (out == nullptr) return invalid("cpu backend: allocate_host: null output pointer");
  *out = nullptr;
  if (bytes == 0) return {Errc::zero_length, "cpu backend: allocate_host of 0 bytes"};
  if (bytes > (std::size_t{1} << 48)) return invalid(fmt::format("cpu backend: allocate_host of {} bytes", bytes));
  const std::size_t rounded = (bytes + kPageSize - 1) / kPageSize * kPageSize;
  void* p = mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return guarded("allocate_host", [&]() -> Status {
      return {Errc::out_of_memory,
              fmt::format("cpu backend: allocate_host of {} bytes: {}", bytes, errno_text(errno))};
    });
  }
  try {
    std::lock_guard lock(host_mutex_);
    host_allocations_.emplace(p, rounded);
  } catch (...) {
    munmap(p, rounded);
    return {Errc::out_of_memory, "cpu backend: allocate_host: out of memory"};
  }
  *out = p;
  return Status::ok();
}

void CpuBackend::free_host(void* p) noexcept {
  if (p == nullptr) return;
  std::size_t bytes = 0;
  {
    std::lock_guard lock(host_mutex_);
    const auto it = host_allocations_.find(p);
    if (it == host_allocations_.end()) {
      log().error("cpu backend: free_host of {}, which allocate_host did not return (ignored)", p);
      return;
    }
    bytes = it->second;
    host_allocations_.erase(it);
  }
  munmap(p, bytes);
}

// ---- streams ----

std::shared_ptr<CpuBackend::Stream> CpuBackend::find_stream(StreamId id, Status* error) const noexcept {
  {
    std::lock_guard lock(streams_mutex_);
    const auto it = streams_.find(id);
    if (it != streams_.end()) return it->second;
  }
  *error = guarded("find_stream", [&]() -> Status {
    return invalid(fmt::format("cpu backend '{}': unknown stream {}", options_.name, id));
  });
  return nullptr;
}

std::shared_ptr<CpuBackend::Event> CpuBackend::find_event(EventId id, Status* error) const noexcept {
  {
    std::lock_guard lock(streams_mutex_);
    const auto it = events_.find(id);
    if (it != events_.end()) return it->second;
  }
  *error = guarded("find_event", [&]() -> Status {
    return invalid(fmt::format("cpu backend '{}': unknown event {}", options_.name, id));
  });
  return nullptr;
}

Status CpuBackend::create_stream(StreamId* out) noexcept {
  if (out == nullptr) return invalid("cpu backend: create_stream: null output pointer");
  return guarded("create_stream", [&]() -> Status {
    std::lock_guard lock(streams_mutex_);
    const StreamId id = next_stream_++;
    auto stream = std::make_shared<Stream>(id);
    streams_.emplace(id, stream);  // before the thread: nothing may throw after it started
    {
      // The worker reads worker_id only after this lock is released. It holds the
      // stream, so a stream destroyed from its own work outlives destroy_stream.
      std::lock_guard stream_lock(stream->m);
      try {
        stream->worker = spawn_library_thread([stream] { stream->worker_loop(); });
      } catch (const std::system_error& e) {
        streams_.erase(id);
        return {Errc::device_error, fmt::format("cpu backend: cannot start a stream worker: {}", e.what())};
      }
      stream->worker_id = stream->worker.get_id();
    }
    *out = id;
    return Status::ok();
  });
}

void CpuBackend::destroy_stream(StreamId id) noexcept {
  std::shared_ptr<Stream> stream;
  {
    std::lock_guard lock(streams_mutex_);
    const auto it = streams_.find(id);
    if (it == streams_.end()) {
      log().error("cpu backend '{}': destroy_stream of unknown stream {} (ignored)", options_.name, id);
      return;
    }
    stream = std::move(it->second);
    streams_.erase(it);
  }
  {
    std::lock_guard lock(stream->m);
    stream->closing = true;
  }
  stream->work_cv.notify_all();
  if (stream->on_worker()) {
    // Destroyed from its own work: it ends after this op; the thread must not join itself.
    stream->worker.detach();
    return;
  }
  stream->worker.join();
}

Status CpuBackend::synchronize(StreamId id) noexcept {
  Status error;
  const auto stream = find_stream(id, &error);
  if (!stream) return error;
  if (stream->on_worker())
    return invalid(fmt::format("cpu backend: synchronize of stream {} from its own work would never return", id));
  std::unique_lock lock(stream->m);
  const std::uint64_t target = stream->enqueued;
  stream->done_cv.wait(lock, [&] { return stream->completed >= target; });
  Status first;
  while (!stream->errors.empty() && stream->errors.front().first <= target) {
    if (first) first = std::move(stream->errors.front().second);
    stream->errors.pop_front();
  }
  return first;
}

// ---- the copy engine ----

CpuBackend::Armed CpuBackend::arm(bool is_copy, std::size_t pages) noexcept {
  std::lock_guard lock(injection_mutex_);
  Armed armed;
  armed.delay_us = injection_.copy_delay_us;
  if (is_copy && pages > 0 && injection_.copy_fail_at_page >= 0 && injection_.copy_fail_batches > 0) {
    armed.fail_at_page = injection_.copy_fail_at_page;
    if (--injection_.copy_fail_batches == 0) injection_.copy_fail_at_page = -1;
  }
  return armed;
}

void CpuBackend::set_fault_injection(const FaultInjection& injection) noexcept {
  std::lock_guard lock(injection_mutex_);
  injection_ = injection;
}

FaultInjection CpuBackend::fault_injection() const noexcept {
  std::lock_guard lock(injection_mutex_);
  return injection_;
}

void CpuBackend::parallel_slices(std::size_t n, std::size_t slices, unsigned threads,
                                 const SliceBody& body) noexcept {
  slices = std::min(slices, n);
  const auto run_all = [&] {
    for (std::size_t s = 0; s < slices; ++s) body(s, n * s / slices, n * (s + 1) / slices);
  };
  if (slices <= 1 || threads <= 1 || helpers_->size() == 0) {
    run_all();
    return;
  }
  std::shared_ptr<HelperPool::Job> job;
  try {
    job = std::make_shared<HelperPool::Job>();
  } catch (...) {
    run_all();
    return;
  }
  const std::function<void(std::size_t)> slice = [&](std::size_t s) {
    body(s, n * s / slices, n * (s + 1) / slices);
  };
  job->slices = slices;
  job->fn = &slice;
  helpers_->offer(job, static_cast<unsigned>(std::min<std::size_t>(threads, slices)) - 1);
  job->work();
  job->wait();
}

namespace {
Status finish_batch(std::size_t n, std::int64_t fail_at, BatchResult* result) noexcept {
  Status status;
  std::size_t done = n;
  if (fail_at >= 0 && static_cast<std::size_t>(fail_at) < n) {
    done = static_cast<std::size_t>(fail_at);
    status = guarded("copy", [&]() -> Status {
      return {Errc::device_error, fmt::format("injected copy failure at page {}", done)};
    });
  }
  if (result != nullptr) {
    result->status = status;
    result->pages_done = done;
  }
  return status;
}
}  // namespace

// Host pages copied to the device are often managed pages that application
// threads write concurrently. What orders those stores before the copy is the
// kernel (the migration write-protects the pages first), which ThreadSanitizer
// cannot see, so this one loop is not instrumented; copy_page is force-inlined
// into it.
__attribute__((no_sanitize("thread"))) static void copy_pages_from_host(const std::vector<HostToDevicePage>& d,
                                                                        std::size_t first, std::size_t last) {
  for (std::size_t i = first; i < last; ++i) kernels::copy_page(d[i].device, as_address(d[i].host), 0, 1);
}

// Whether a copy batch may run in its caller (Stream::enqueue's run_if_idle):
// small, and not slowed on purpose (a delayed copy must stay asynchronous).
static bool runs_inline(std::uint32_t delay_us, std::size_t pages) noexcept {
  return delay_us == 0 && pages <= kMaxInlineCopyPages;
}

// Runs on the worker: the delay, pages [0, min(n, K)) through copy (which must
// not throw), then the result.
Status CpuBackend::run_batch(std::size_t n, Armed armed, BatchResult* result,
                             const std::function<void(std::size_t, std::size_t)>& copy) noexcept {
  if (armed.delay_us > 0 && n > 0) std::this_thread::sleep_for(std::chrono::microseconds(armed.delay_us));
  const std::size_t limit =
      armed.fail_at_page >= 0 ? std::min(n, static_cast<std::size_t>(armed.fail_at_page)) : n;
  parallel_slices(limit, std::max<std::size_t>(1, limit / kMinPagesPerCopySlice), options_.copy_threads,
                  [&](std::size_t, std::size_t first, std::size_t last) { copy(first, last); });
  return finish_batch(n, armed.fail_at_page, result);
}

Status CpuBackend::copy_to_device(StreamId stream_id, std::span<const HostToDevicePage> pages,
                                  BatchResult* result) noexcept {
  Status error;
  const auto stream = find_stream(stream_id, &error);
  if (!stream) return error;
  return guarded("copy_to_device", [&]() -> Status {
    {
      std::lock_guard lock(chunks_mutex_);
      for (std::size_t i = 0; i < pages.size(); ++i) {
        const auto host = as_address(pages[i].host);
        if (host == 0 || !aligned_to(host, alignof(std::uint64_t)))
          return invalid(fmt::format("cpu backend: copy_to_device: page {}: host pointer {} is null or not "
                                     "8-byte aligned", i, pages[i].host));
        if (!aligned_to(pages[i].device, kPageSize) || !owns_allocated(pages[i].device))
          return invalid(fmt::format("cpu backend: copy_to_device: page {}: {:#x} is not a page of an "
                                     "allocated chunk of device '{}'", i, pages[i].device, options_.name));
      }
    }
    std::vector<HostToDevicePage> descriptors(pages.begin(), pages.end());
    const Armed armed = arm(true, pages.size());
    return stream->enqueue([this, d = std::move(descriptors), armed, result]() -> Status {
      return run_batch(d.size(), armed, result, [&d](std::size_t first, std::size_t last) {
        copy_pages_from_host(d, first, last);
      });
    }, runs_inline(armed.delay_us, pages.size()));
  });
}

Status CpuBackend::copy_to_host(StreamId stream_id, std::span<const DeviceToHostPage> pages,
                                BatchResult* result) noexcept {
  Status error;
  const auto stream = find_stream(stream_id, &error);
  if (!stream) return error;
  return guarded("copy_to_host", [&]() -> Status {
    {
      std::lock_guard lock(chunks_mutex_);
      for (std::size_t i = 0; i < pages.size(); ++i) {
        const auto host = as_address(pages[i].host);
        if (host == 0 || !aligned_to(host, alignof(std::uint64_t)))
          return invalid(fmt::format("cpu backend: copy_to_host: page {}: host pointer {} is null or not "
                                     "8-byte aligned", i, pages[i].host));
        if (!aligned_to(pages[i].device, kPageSize) || !owns_allocated(pages[i].device))
          return invalid(fmt::format("cpu backend: copy_to_host: page {}: {:#x} is not a page of an "
                                     "allocated chunk of device '{}'", i, pages[i].device, options_.name));
      }
    }
    std::vector<DeviceToHostPage> descriptors(pages.begin(), pages.end());
    const Armed armed = arm(true, pages.size());
    return stream->enqueue([this, d = std::move(descriptors), armed, result]() -> Status {
      return run_batch(d.size(), armed, result, [&d](std::size_t first, std::size_t last) {
        for (std::size_t i = first; i < last; ++i) kernels::copy_page(as_address(d[i].host), d[i].device, 0, 1);
      });
    }, runs_inline(armed.delay_us, pages.size()));
  });
}

Status CpuBackend::copy_device_to_device(StreamId stream_id, std::span<const DeviceToDevicePage> pages,
                                         BatchResult* result) noexcept {
  Status error;
  const auto stream = find_stream(stream_id, &error);
  if (!stream) return error;
  return guarded("copy_device_to_device", [&]() -> Status {
    {
      std::lock_guard lock(chunks_mutex_);
      for (std::size_t i = 0; i < pages.size(); ++i) {
        // The source may be a peer's memory: host visible, so only its shape is checked.
        if (pages[i].src == 0 || !aligned_to(pages[i].src, kPageSize))
          return invalid(fmt::format("cpu backend: copy_device_to_device: page {}: source {:#x} is null or "
                                     "not page aligned", i, pages[i].src));
        if (!aligned_to(pages[i].dst, kPageSize) || !owns_allocated(pages[i].dst))
          return invalid(fmt::format("cpu backend: copy_device_to_device: page {}: {:#x} is not a page of "
                                     "an allocated chunk of device '{}'", i, pages[i].dst, options_.name));
      }
    }
    std::vector<DeviceToDevicePage> descriptors(pages.begin(), pages.end());
    const Armed armed = arm(true, pages.size());
    return stream->enqueue([this, d = std::move(descriptors), armed, result]() -> Status {
      return run_batch(d.size(), armed, result, [&d](std::size_t first, std::size_t last) {
        for (std::size_t i = first; i < last; ++i) kernels::copy_page(d[i].dst, d[i].src, 0, 1);
      });
    });
  });
}

Status CpuBackend::zero_device(StreamId stream_id, std::span<const DeviceAddress> pages,
                               BatchResult* result) noexcept {
  Status error;
  const auto stream = find_stream(stream_id, &error);
  if (!stream) return error;
  return guarded("zero_device", [&]() -> Status {
    {
      std::lock_guard lock(chunks_mutex_);
      for (std::size_t i = 0; i < pages.size(); ++i) {
        if (!aligned_to(pages[i], kPageSize) || !owns_allocated(pages[i]))
          return invalid(fmt::format("cpu backend: zero_device: page {}: {:#x} is not a page of an "
                                     "allocated chunk of device '{}'", i, pages[i], options_.name));
      }
    }
    std::vector<DeviceAddress> descriptors(pages.begin(), pages.end());
    const Armed armed = arm(false, pages.size());
    return stream->enqueue([this, d = std::move(descriptors), armed, result]() -> Status {
      return run_batch(d.size(), armed, result, [&d](std::size_t first, std::size_t last) {
        for (std::size_t i = first; i < last; ++i) kernels::zero_page(d[i], 0, 1);
      });
    });
  });
}

// ---- kernels ----

Status CpuBackend::launch(StreamId stream_id, std::size_t n, HostKernel kernel, BatchResult* result) noexcept {
  Status error;
  const auto stream = find_stream(stream_id, &error);
  if (!stream) return error;
  if (!kernel) return invalid("cpu backend: launch of an empty kernel");
  return guarded("launch", [&]() -> Status {
    return stream->enqueue([this, n, k = std::move(kernel), result]() -> Status {
      const std::size_t slices = kernel_threads_ > 1 ? std::min<std::size_t>(n, kernel_threads_ * 4) : 1;
      std::vector<Status> slice_status(std::max<std::size_t>(1, slices));
      std::vector<std::size_t> slice_first(slice_status.size(), 0);
      parallel_slices(n, slices, kernel_threads_, [&](std::size_t s, std::size_t first, std::size_t last) {
        slice_first[s] = first;
        try {
          k(first, last);
        } catch (const DeviceFaultException& fault) {
          slice_status[s] = guarded("launch", [&]() -> Status {
            return {Errc::device_fault,
                    fmt::format("kernel touched a page that is not resident on the device, at byte offset "
                                "{} of a span (indices [{}, {}))", fault.byte_offset, first, last)};
          });
        } catch (const std::exception& e) {
          slice_status[s] = guarded("launch", [&]() -> Status {
            return {Errc::device_error, fmt::format("kernel threw: {}", e.what())};
          });
        } catch (...) {
          slice_status[s] = {Errc::device_error, "kernel threw an exception that is not a std::exception"};
        }
      });
      Status status;
      std::size_t done = n;
      for (std::size_t s = 0; s < slice_status.size(); ++s) {
        if (!slice_status[s]) {
          status = std::move(slice_status[s]);
          done = slice_first[s];
          break;
        }
      }
      if (result != nullptr) {
        result->status = status;
        result->pages_done = done;
      }
      return status;
    });
  });
}

// ---- events ----

Status CpuBackend::create_event(EventId* out) noexcept {
  if (out == nullptr) return invalid("cpu backend: create_event: null output pointer");
  return guarded("create_event", [&]() -> Status {
    auto event = std::make_shared<Event>();
    std::lock_guard lock(streams_mutex_);
    const EventId id = next_event_++;
    events_.emplace(id, std::move(event));
    *out = id;
    return Status::ok();
  });
}

void CpuBackend::destroy_event(EventId id) noexcept {
  std::shared_ptr<Event> event;  // queued work may still hold it
  std::lock_guard lock(streams_mutex_);
  const auto it = events_.find(id);
  if (it == events_.end()) {
    log().error("cpu backend '{}': destroy_event of unknown event {} (ignored)", options_.name, id);
    return;
  }
  event = std::move(it->second);
  events_.erase(it);
}

Status CpuBackend::record_event(StreamId stream_id, EventId event_id) noexcept {
  Status error;
  const auto stream = find_stream(stream_id, &error);
  if (!stream) return error;
  const auto event = find_event(event_id, &error);
  if (!event) return error;
  return guarded("record_event", [&]() -> Status {
    // Held across the enqueue so that records of one event are numbered in queue order.
    std::lock_guard lock(event->m);
    const std::uint64_t record = event->recorded + 1;
    Status status = stream->enqueue([event, record]() -> Status {
      {
        std::lock_guard event_lock(event->m);
        event->completed = std::max(event->completed, record);
      }
      event->cv.notify_all();
      return Status::ok();
    });
    if (status) event->recorded = record;
    return status;
  });
}

Status CpuBackend::stream_wait_event(StreamId stream_id, EventId event_id) noexcept {
  Status error;
  const auto stream = find_stream(stream_id, &error);
  if (!stream) return error;
  const auto event = find_event(event_id, &error);
  if (!event) return error;
  return guarded("stream_wait_event", [&]() -> Status {
    std::uint64_t target = 0;
    {
      std::lock_guard lock(event->m);
      target = event->recorded;
    }
    // Waits only for records queued before this call, so waits never form a cycle.
    return stream->enqueue([event, target]() -> Status {
      event->wait_for(target);
      return Status::ok();
    });
  });
}

Status CpuBackend::synchronize_event(EventId event_id) noexcept {
  Status error;
  const auto event = find_event(event_id, &error);
  if (!event) return error;
  std::uint64_t target = 0;
  {
    std::lock_guard lock(event->m);
    target = event->recorded;
  }
  event->wait_for(target);
  return Status::ok();
}

// ---- device buffers ----

Status CpuBackend::allocate_device_buffer(std::size_t bytes, DeviceAddress* out) noexcept {
  if (out == nullptr) return invalid("cpu backend: allocate_device_buffer: null output pointer");
  *out = 0;
  if (bytes == 0) return {Errc::zero_length, "cpu backend: allocate_device_buffer of 0 bytes"};
  if (bytes > (std::size_t{1} << 48))
    return invalid(fmt::format("cpu backend: allocate_device_buffer of {} bytes", bytes));
  const std::size_t rounded = (bytes + kPageSize - 1) / kPageSize * kPageSize;
  void* p = mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return guarded("allocate_device_buffer", [&]() -> Status {
      return {Errc::out_of_memory,
              fmt::format("cpu backend: allocate_device_buffer of {} bytes: {}", bytes, errno_text(errno))};
    });
  }
  try {
    std::lock_guard lock(buffers_mutex_);
    device_buffers_.emplace(as_address(p), bytes);  // the bytes asked for bound the copies
  } catch (...) {
    munmap(p, rounded);
    return {Errc::out_of_memory, "cpu backend: allocate_device_buffer: out of memory"};
  }
  *out = as_address(p);
  return Status::ok();
}

void CpuBackend::free_device_buffer(DeviceAddress buffer) noexcept {
  std::size_t bytes = 0;
  {
    std::lock_guard lock(buffers_mutex_);
    const auto it = device_buffers_.find(buffer);
    if (it == device_buffers_.end()) {
      if (buffer != 0) log().error("cpu backend: free_device_buffer of {:#x}, not a device buffer (ignored)", buffer);
      return;
    }
    bytes = it->second;
    device_buffers_.erase(it);
  }
  munmap(reinterpret_cast<void*>(static_cast<std::uintptr_t>(buffer)), (bytes + kPageSize - 1) / kPageSize * kPageSize);
}

bool CpuBackend::inside_device_buffer(DeviceAddress address, std::size_t bytes) const noexcept {
  std::lock_guard lock(buffers_mutex_);
  auto it = device_buffers_.upper_bound(address);
  if (it == device_buffers_.begin()) return false;
  --it;
  return address >= it->first && bytes <= it->second && address - it->first <= it->second - bytes;
}

Status CpuBackend::copy_to_device_buffer(StreamId stream_id, DeviceAddress dst, const void* src,
                                         std::size_t bytes) noexcept {
  Status error;
  const auto stream = find_stream(stream_id, &error);
  if (!stream) return error;
  if (bytes == 0) return Status::ok();
  if (src == nullptr || !inside_device_buffer(dst, bytes)) {
    return guarded("copy_to_device_buffer", [&]() -> Status {
      return invalid(fmt::format("cpu backend: copy_to_device_buffer: {} bytes from {} to {:#x}: null source, or "
                                 "not inside one device buffer", bytes, src, dst));
    });
  }
  return guarded("copy_to_device_buffer", [&]() -> Status {
    return stream->enqueue([dst, src, bytes]() -> Status {
      std::memcpy(reinterpret_cast<void*>(static_cast<std::uintptr_t>(dst)), src, bytes);
      return Status::ok();
    });
  });
}

Status CpuBackend::copy_from_device_buffer(StreamId stream_id, void* dst, DeviceAddress src,
                                           std::size_t bytes) noexcept {
  Status error;
  const auto stream = find_stream(stream_id, &error);
  if (!stream) return error;
  if (bytes == 0) return Status::ok();
  if (dst == nullptr || !inside_device_buffer(src, bytes)) {
    return guarded("copy_from_device_buffer", [&]() -> Status {
      return invalid(fmt::format("cpu backend: copy_from_device_buffer: {} bytes from {:#x} to {}: null "
                                 "destination, or not inside one device buffer", bytes, src, dst));
    });
  }
  return guarded("copy_from_device_buffer", [&]() -> Status {
    return stream->enqueue([dst, src, bytes]() -> Status {
      std::memcpy(dst, reinterpret_cast<const void*>(static_cast<std::uintptr_t>(src)), bytes);
      return Status::ok();
    });
  });
}

void* CpuBackend::native_stream(StreamId) const noexcept { return nullptr; }

}  // namespace uhmm::detail
