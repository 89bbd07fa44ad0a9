// The emulated GPU runtime (emulated_runtime.hpp; what it models:
// driver/gpu/README.md). Device memory is one memfd mapped twice: PROT_NONE at
// the addresses handed out (the host crashes on them, as on a GPU) and
// read-write at a private address only the copy engine and kernels use. Each
// stream is a queue run by a worker thread of its own; events name a point of
// a stream (its count of queued operations).
#include "emulated_runtime.hpp"

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <random>
#include <shared_mutex>
#include <thread>
#include <unistd.h>
#include <unordered_map>
#include <utility>
#include <vector>

#include <linux/falloc.h>
#include <sys/mman.h>

#include "uhmm/device_span.hpp"

std::atomic<std::uintptr_t> uhmm_emulated_device_lo{0};
std::atomic<std::uintptr_t> uhmm_emulated_device_bytes{0};
std::atomic<std::uintptr_t> uhmm_emulated_device_shift{0};
std::atomic<bool> uhmm_emulated_check_peers{false};

namespace {

constexpr std::size_t kDeviceAlignment = std::size_t{2}
                                         << 20;  // large allocations, as the vendors align them
constexpr std::size_t kSmallAlignment = 256;

// Thrown by a kernel's access to memory a GPU could not reach.
struct IllegalAccess {};

thread_local emuError_t t_last_error = emuSuccess;
thread_local int t_device = 0;
thread_local bool t_in_host_function = false;
thread_local bool t_in_kernel = false;
thread_local int t_kernel_device = -1;  // the device whose kernel runs on this thread
thread_local std::uintptr_t t_pinned_lo = 0, t_pinned_hi = 0;  // the last pinned range a kernel reached

std::size_t env_number(const char* name, std::size_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  return static_cast<std::size_t>(std::strtoull(v, nullptr, 10));
}

bool sticky_kind(emuError_t e) { return e == emuErrorIllegalAddress || e == emuErrorLaunchFailure; }

struct Device {
  int index = 0;
  std::uintptr_t base = 0;  // the host's view: PROT_NONE
  std::size_t bytes = 0;
  std::mutex mutex;
  std::map<std::uintptr_t, std::size_t> allocations;  // base -> bytes
  std::map<std::uintptr_t, std::size_t> free_ranges;  // base -> bytes
  std::size_t used = 0;
  std::size_t limit = 0;
  std::atomic<int> sticky{emuSuccess};
  std::shared_ptr<uhmmEmulatedStream> legacy;  // the null stream
  std::atomic<bool> context{false};            // its primary context exists
  std::atomic<unsigned> contexts_created{0};
  std::atomic<bool> unusable{false};  // exclusive-process, held by another process
  std::atomic<std::uint64_t> peers{0};            // bit p: access to device p's memory enabled
  std::atomic<std::uint64_t> peers_incapable{0};  // bit p: emuDeviceCanAccessPeer says no

  bool reaches(int other) const { return other == index || ((peers.load() >> other) & 1) != 0; }
};

struct Wait {
  std::shared_ptr<uhmmEmulatedStream> stream;
  std::uint64_t point;
};

struct Operation {
  std::function<emuError_t()> run;
  std::vector<Wait> waits;  // run after these points of other streams
  std::uint64_t point = 0;
  emuError_t injected = emuSuccess;
  bool injected_sticky = false;
};

}  // namespace

struct uhmmEmulatedStream {
  Device* device = nullptr;
  bool blocking = false;  // synchronizes with the legacy default stream
  bool legacy = false;
  std::mutex mutex;
  std::condition_variable changed;
  std::deque<Operation> queue;
  std::uint64_t queued = 0, completed = 0;
  bool stopping = false;
  emuError_t async_error = emuSuccess;  // a failure of queued work, reported once
  emuError_t inject = emuSuccess;
  bool inject_sticky = false;
  std::minstd_rand random;
  std::thread worker;
};

struct uhmmEmulatedEvent {
  std::mutex mutex;
  std::shared_ptr<uhmmEmulatedStream> stream;  // where it was last recorded
  std::uint64_t point = 0;
};

namespace {

class Runtime {
 public:
  Runtime() {
    const std::size_t count = env_number("UHMM_EMULATED_DEVICES", 1);
    const std::size_t bytes = env_number("UHMM_EMULATED_DEVICE_MIB", 1024) << 20;
    delay_us_ = static_cast<unsigned>(env_number("UHMM_EMULATED_DELAY_US", 0));
    seed_.store(static_cast<unsigned>(env_number("UHMM_EMULATED_SEED", 1)));
    driver_too_old.store(env_number("UHMM_EMULATED_DRIVER_TOO_OLD", 0) != 0);
    if (count == 0 || count > 64 || bytes < kDeviceAlignment) return;
    const std::size_t total = count * bytes;
    const int fd = ::memfd_create("uhmm-emulated-device", MFD_CLOEXEC);
    if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(total)) != 0) {
      init_error_ = emuErrorInitializationError;
      return;
    }
    // The host's view, 2 MiB aligned, then the runtime's own.
    void* reserve = ::mmap(nullptr, total + kDeviceAlignment, PROT_NONE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    void* shadow = ::mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (reserve == MAP_FAILED || shadow == MAP_FAILED) {
      init_error_ = emuErrorInitializationError;
      return;
    }
    const auto base =
        (reinterpret_cast<std::uintptr_t>(reserve) + kDeviceAlignment - 1) & ~(kDeviceAlignment - 1);
    if (::mmap(reinterpret_cast<void*>(base), total, PROT_NONE, MAP_SHARED | MAP_FIXED, fd, 0) ==
        MAP_FAILED) {
      init_error_ = emuErrorInitializationError;
      return;
    }
    fd_ = fd;
    shadow_ = static_cast<std::byte*>(shadow);
    for (std::size_t d = 0; d < count; ++d) {
      auto device = std::make_unique<Device>();
      device->index = static_cast<int>(d);
      device->base = base + d * bytes;
      device->bytes = bytes;
      device->limit = bytes;
      device->free_ranges.emplace(device->base, bytes);
      devices_.push_back(std::move(device));
    }
    uhmm_emulated_device_shift.store(reinterpret_cast<std::uintptr_t>(shadow) - base);
    uhmm_emulated_device_bytes.store(total);
    uhmm_emulated_device_lo.store(base);
    uhmm_emulated_check_peers.store(count > 1);
    for (auto& device : devices_) device->legacy = start_stream(*device, true, true);
  }

  // At exit: every stream stops after its current operation, and every later
  // call fails with emuErrorRuntimeUnloading, as cudart does while unloading.
  void unload() {
    unloading_.store(true);
    std::vector<std::shared_ptr<uhmmEmulatedStream>> all;
    {
      std::lock_guard lock(mutex_);
      for (auto& [handle, stream] : streams_) all.push_back(stream);
      for (auto& device : devices_) all.push_back(device->legacy);
    }
    for (auto& stream : all) stop(*stream, false);
  }

  bool unloading() const { return unloading_.load(); }
  emuError_t init_error() const { return init_error_; }
  int device_count() const { return static_cast<int>(devices_.size()); }
  Device* device(int index) {
    return index >= 0 && index < device_count() ? devices_[static_cast<std::size_t>(index)].get() : nullptr;
  }
  Device* device_of(std::uintptr_t address) {
    const std::uintptr_t lo = uhmm_emulated_device_lo.load();
    if (devices_.empty() || address - lo >= uhmm_emulated_device_bytes.load()) return nullptr;
    return devices_[(address - lo) / devices_.front()->bytes].get();
  }
  std::byte* shadow(std::uintptr_t device_address) {
    return shadow_ + (device_address - uhmm_emulated_device_lo.load());
  }
  void release_pages(std::uintptr_t address, std::size_t bytes) {
    const std::uintptr_t first = (address + 4095) & ~std::uintptr_t{4095};
    const std::uintptr_t last = (address + bytes) & ~std::uintptr_t{4095};
    if (last > first)
      (void)::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                        static_cast<off_t>(first - uhmm_emulated_device_lo.load()),
                        static_cast<off_t>(last - first));
  }

  std::shared_ptr<uhmmEmulatedStream> start_stream(Device& device, bool blocking, bool legacy = false) {
    auto stream = std::make_shared<uhmmEmulatedStream>();
    stream->device = &device;
    stream->blocking = blocking;
    stream->legacy = legacy;
    stream->random.seed(seed_.load() + static_cast<unsigned>(next_stream_seed_++));
    stream->worker = std::thread([this, s = stream.get()] { work(*s); });
    if (!legacy) {
      std::lock_guard lock(mutex_);
      streams_.emplace(stream.get(), stream);
    }
    return stream;
  }

  // The stream of a handle (null: the current device's legacy stream).
  std::shared_ptr<uhmmEmulatedStream> find_stream(emuStream_t handle) {
    if (handle == nullptr) {
      Device* d = device(t_device);
      return d != nullptr ? d->legacy : nullptr;
    }
    std::lock_guard lock(mutex_);
    auto it = streams_.find(handle);
    return it == streams_.end() ? nullptr : it->second;
  }
  std::shared_ptr<uhmmEmulatedStream> forget_stream(emuStream_t handle) {
    std::lock_guard lock(mutex_);
    auto it = streams_.find(handle);
    if (it == streams_.end()) return nullptr;
    auto stream = std::move(it->second);
    streams_.erase(it);
    return stream;
  }
  std::vector<std::shared_ptr<uhmmEmulatedStream>> streams_of(const Device& device) {
    std::vector<std::shared_ptr<uhmmEmulatedStream>> out{device.legacy};
    std::lock_guard lock(mutex_);
    for (auto& [handle, stream] : streams_)
      if (stream->device == &device) out.push_back(stream);
    return out;
  }

  // Drains the stream's queue (or abandons it when unloading), then joins its worker.
  void stop(uhmmEmulatedStream& stream, bool drain) {
    {
      std::unique_lock lock(stream.mutex);
      if (drain) stream.changed.wait(lock, [&] { return stream.completed == stream.queued || unloading(); });
      stream.stopping = true;
    }
    stream.changed.notify_all();
    if (stream.worker.joinable() && stream.worker.get_id() != std::this_thread::get_id())
      stream.worker.join();
  }

  // Queues `op` on `stream` behind the legacy stream's work (blocking streams)
  // or every blocking stream's (the legacy stream); returns its point.
  std::uint64_t enqueue(uhmmEmulatedStream& stream, Operation op) {
    if (stream.legacy) {
      for (auto& other : streams_of(*stream.device))
        if (other.get() != &stream && other->blocking) op.waits.push_back({other, point_of(*other)});
    } else if (stream.blocking) {
      op.waits.push_back({stream.device->legacy, point_of(*stream.device->legacy)});
    }
    std::uint64_t point = 0;
    {
      std::lock_guard lock(stream.mutex);
      op.point = point = ++stream.queued;
      op.injected = std::exchange(stream.inject, emuSuccess);
      op.injected_sticky = std::exchange(stream.inject_sticky, false);
      stream.queue.push_back(std::move(op));
    }
    stream.changed.notify_all();
    return point;
  }
  static std::uint64_t point_of(uhmmEmulatedStream& stream) {
    std::lock_guard lock(stream.mutex);
    return stream.queued;
  }
  // Waits until `stream` has run everything up to `point`.
  void wait_for(uhmmEmulatedStream& stream, std::uint64_t point) {
    std::unique_lock lock(stream.mutex);
    stream.changed.wait(lock, [&] { return stream.completed >= point || stream.stopping || unloading(); });
  }

  void set_delay(unsigned max_us, unsigned seed) {
    delay_us_.store(max_us);
    seed_.store(seed);
  }
  std::atomic<bool> kernel_image{true};
  std::atomic<bool> driver_too_old{false};
  std::atomic<unsigned long long> copies{0}, memsets{0}, kernels{0}, host_functions{0}, event_waits{0}, frees{0},
      peer_direct{0}, peer_staged{0};
  std::atomic<std::size_t> large_alignment{kDeviceAlignment};
  std::atomic<void (*)(void*)> malloc_hook{nullptr};
  std::atomic<void*> malloc_hook_user{nullptr};
  std::shared_mutex pinned_mutex;
  std::map<std::uintptr_t, std::size_t> pinned;  // gpuHostAlloc base -> bytes
  std::mutex host_function_mutex;                // host functions run one at a time, as on one runtime thread
  std::mutex events_mutex;
  std::unordered_map<emuEvent_t, std::unique_ptr<uhmmEmulatedEvent>> events;

 private:
  void work(uhmmEmulatedStream& stream) {
    for (;;) {
      Operation op;
      {
        std::unique_lock lock(stream.mutex);
        stream.changed.wait(lock, [&] { return !stream.queue.empty() || stream.stopping; });
        if (stream.stopping && (stream.queue.empty() || unloading())) return;
        op = std::move(stream.queue.front());
        stream.queue.pop_front();
      }
      if (const unsigned max_us = delay_us_.load(); max_us > 0)
        std::this_thread::sleep_for(std::chrono::microseconds(stream.random() % (max_us + 1)));
      for (const Wait& w : op.waits) wait_for(*w.stream, w.point);
      run(stream, op);
      {
        std::lock_guard lock(stream.mutex);
        stream.completed = op.point;
      }
      stream.changed.notify_all();
    }
  }

  void run(uhmmEmulatedStream& stream, Operation& op) {
    Device& device = *stream.device;
    if (device.sticky.load() != emuSuccess || unloading()) return;  // a lost device runs nothing more
    emuError_t error = op.injected;
    bool sticky = op.injected_sticky;
    if (error == emuSuccess) {
      error = op.run();
      sticky = sticky_kind(error);
    }
    if (error == emuSuccess) return;
    if (sticky) {
      int expected = emuSuccess;
      device.sticky.compare_exchange_strong(expected, error);
      return;
    }
    std::lock_guard lock(stream.mutex);
    if (stream.async_error == emuSuccess) stream.async_error = error;
  }

  std::vector<std::unique_ptr<Device>> devices_;
  std::byte* shadow_ = nullptr;
  int fd_ = -1;
  emuError_t init_error_ = emuSuccess;
  std::atomic<bool> unloading_{false};
  std::atomic<unsigned> delay_us_{0};
  std::atomic<unsigned> seed_{1};
  std::atomic<int> next_stream_seed_{0};
  std::mutex mutex_;
  std::unordered_map<emuStream_t, std::shared_ptr<uhmmEmulatedStream>> streams_;
};

std::atomic<Runtime*> g_started{nullptr};

// Never destroyed (streams may outlive static destructors); unloaded at exit.
Runtime& runtime() {
  static Runtime* r = [] {
    auto* made = new Runtime();
    g_started.store(made);
    return made;
  }();
  return *r;
}

struct UnloadAtExit {
  ~UnloadAtExit() {
    if (Runtime* r = g_started.load()) r->unload();
  }
} unload_at_exit;

emuError_t fail(emuError_t error) {
  t_last_error = error;
  return error;
}

// The checks of calls that need no context (device properties, bus ids):
// the runtime is up and this is not a host function (which must not call it).
emuError_t enter_without_context() {
  Runtime& r = runtime();
  if (r.unloading()) return fail(emuErrorRuntimeUnloading);
  if (t_in_host_function) return fail(emuErrorNotPermitted);
  if (r.init_error() != emuSuccess) return fail(r.init_error());
  return emuSuccess;
}

// The device's primary context, created by the first call that needs it (as
// the vendors do, at a cost in device memory); none on an unusable device.
emuError_t need_context(Device& device) {
  if (device.unusable.load()) return fail(emuErrorDevicesUnavailable);
  if (!device.context.exchange(true)) device.contexts_created.fetch_add(1);
  return emuSuccess;
}

// The checks every other call makes first: those above, the device's context
// (the current device's by default), and the device is not lost.
emuError_t enter(Device* device = nullptr) {
  if (const emuError_t e = enter_without_context(); e != emuSuccess) return e;
  if (device == nullptr) device = runtime().device(t_device);
  if (device == nullptr) return emuSuccess;
  if (const emuError_t e = need_context(*device); e != emuSuccess) return e;
  if (device->sticky.load() != emuSuccess) return fail(static_cast<emuError_t>(device->sticky.load()));
  return emuSuccess;
}

// Where a copy's side lives: inside one device allocation, pinned host
// memory, or pageable host memory; invalid for device addresses outside any
// allocation.
enum class Side { device, pinned, pageable, invalid };

Side side_of(const void* p, std::size_t bytes) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  Runtime& r = runtime();
  if (Device* d = r.device_of(a)) {
    std::lock_guard lock(d->mutex);
    auto it = d->allocations.upper_bound(a);
    if (it == d->allocations.begin()) return Side::invalid;
    --it;
    return a - it->first <= it->second && bytes <= it->second - (a - it->first) ? Side::device
                                                                                : Side::invalid;
  }
  std::shared_lock lock(r.pinned_mutex);
  auto it = r.pinned.upper_bound(a);
  if (it == r.pinned.begin()) return Side::pageable;
  --it;
  return a - it->first < it->second && bytes <= it->second - (a - it->first) ? Side::pinned : Side::pageable;
}

// Where the copy engine reaches an address of either side.
void* engine_view(void* p) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  return runtime().device_of(a) != nullptr ? static_cast<void*>(runtime().shadow(a)) : p;
}
const void* engine_view(const void* p) { return engine_view(const_cast<void*>(p)); }

emuError_t synchronize_stream(uhmmEmulatedStream& stream) {
  Runtime& r = runtime();
  r.wait_for(stream, Runtime::point_of(stream));
  if (r.unloading()) return fail(emuErrorRuntimeUnloading);
  if (const int sticky = stream.device->sticky.load(); sticky != emuSuccess)
    return fail(static_cast<emuError_t>(sticky));
  std::lock_guard lock(stream.mutex);
  if (const emuError_t e = std::exchange(stream.async_error, emuSuccess); e != emuSuccess) return fail(e);
  return emuSuccess;
}

// Waits for every stream of the device (the implicit synchronization of cudaFree / cudaFreeHost).
void drain_device(Device& device) {
  for (auto& stream : runtime().streams_of(device)) runtime().wait_for(*stream, Runtime::point_of(*stream));
}

struct ErrorText {
  emuError_t error;
  const char* name;
  const char* text;
};
constexpr ErrorText kErrors[] = {
    {emuSuccess, "emuSuccess", "no error"},
    {emuErrorInvalidValue, "emuErrorInvalidValue", "invalid argument"},
    {emuErrorMemoryAllocation, "emuErrorMemoryAllocation", "out of memory"},
    {emuErrorInitializationError, "emuErrorInitializationError", "initialization error"},
    {emuErrorInsufficientDriver, "emuErrorInsufficientDriver",
     "CUDA driver version is insufficient for CUDA runtime version"},
    {emuErrorRuntimeUnloading, "emuErrorRuntimeUnloading", "driver shutting down"},
    {emuErrorDevicesUnavailable, "emuErrorDevicesUnavailable", "all CUDA-capable devices are busy or unavailable"},
    {emuErrorNoDevice, "emuErrorNoDevice", "no emulated device is configured"},
    {emuErrorInvalidDevice, "emuErrorInvalidDevice", "invalid device ordinal"},
    {emuErrorNoKernelImageForDevice, "emuErrorNoKernelImageForDevice",
     "no kernel image is available for execution on the device"},
    {emuErrorInvalidResourceHandle, "emuErrorInvalidResourceHandle", "invalid resource handle"},
    {emuErrorNotReady, "emuErrorNotReady", "device not ready"},
    {emuErrorIllegalAddress, "emuErrorIllegalAddress", "an illegal memory access was encountered"},
    {emuErrorPeerAccessUnsupported, "emuErrorPeerAccessUnsupported",
     "peer access is not supported between these two devices"},
    {emuErrorPeerAccessAlreadyEnabled, "emuErrorPeerAccessAlreadyEnabled", "peer access is already enabled"},
    {emuErrorLaunchFailure, "emuErrorLaunchFailure", "unspecified launch failure"},
    {emuErrorNotPermitted, "emuErrorNotPermitted", "operation not permitted"},
};
const ErrorText* find_error(int error) {
  for (const ErrorText& e : kErrors)
    if (e.error == error) return &e;
  return nullptr;
}

std::size_t align_up(std::size_t v, std::size_t a) { return (v + a - 1) / a * a; }

// A copy that involves another device's memory than the stream's goes
// direct where the stream's device has peer access to it, else (as the
// vendors do without peer access) through host memory: counted apart.
void count_peer_copy(const Device& stream_device, const void* dst, const void* src) {
  Runtime& r = runtime();
  bool peer = false, direct = true;
  for (const void* p : {dst, src}) {
    const Device* d = r.device_of(reinterpret_cast<std::uintptr_t>(p));
    if (d == nullptr || d == &stream_device) continue;
    peer = true;
    direct = direct && stream_device.reaches(d->index);
  }
  if (peer) (direct ? r.peer_direct : r.peer_staged).fetch_add(1);
}

}  // namespace

extern "C" {

std::uintptr_t uhmm_emulated_outside_device(std::uintptr_t address) {
  if (!t_in_kernel || (address >= t_pinned_lo && address < t_pinned_hi)) return address;
  Runtime& r = runtime();
  std::shared_lock lock(r.pinned_mutex);
  auto it = r.pinned.upper_bound(address);
  if (it != r.pinned.begin()) {
    --it;
    if (address - it->first < it->second) {
      t_pinned_lo = it->first;
      t_pinned_hi = it->first + it->second;
      return address;
    }
  }
  throw IllegalAccess{};  // pageable host memory or nothing: a GPU cannot reach it
}

std::uintptr_t uhmm_emulated_device_checked(std::uintptr_t address) {
  Runtime& r = runtime();
  if (t_in_kernel) {
    const Device* d = r.device_of(address);
    const Device* kernel = r.device(t_kernel_device);
    if (d != nullptr && kernel != nullptr && !kernel->reaches(d->index)) throw IllegalAccess{};
  }
  return address + uhmm_emulated_device_shift.load(std::memory_order_relaxed);
}

int uhmm_emulated_launch(uhmmEmulatedStream* handle, std::size_t n, void (*run)(const void*, std::size_t),
                         const void* functor, std::size_t bytes, std::size_t align) {
  Runtime& r = runtime();
  auto stream = r.find_stream(handle);
  if (stream == nullptr) return fail(emuErrorInvalidResourceHandle);
  if (const emuError_t e = enter(stream->device); e != emuSuccess) return e;
  if (stream->device->index != t_device)
    return fail(emuErrorInvalidResourceHandle);  // another device's stream
  if (run == nullptr || functor == nullptr || bytes > 4096) return fail(emuErrorInvalidValue);
  // The parameters are copied at the launch, as the vendors do.
  std::shared_ptr<std::byte> copy(static_cast<std::byte*>(::operator new(bytes, std::align_val_t(align))),
                                  [align](std::byte* p) { ::operator delete(p, std::align_val_t(align)); });
  std::memcpy(copy.get(), functor, bytes);
  Operation op;
  op.run = [run, copy, n, device = stream->device->index]() -> emuError_t {
    runtime().kernels.fetch_add(1);
    t_in_kernel = true;
    t_kernel_device = device;
    t_pinned_lo = t_pinned_hi = 0;
    emuError_t error = emuSuccess;
    try {
      run(copy.get(), n);
    } catch (const uhmm::DeviceFaultException&) {
      error = emuErrorLaunchFailure;  // device code trapped (__trap)
    } catch (const IllegalAccess&) {
      error = emuErrorIllegalAddress;
    } catch (...) {
      error = emuErrorLaunchFailure;  // device code cannot throw; whatever it did ends the kernel
    }
    t_in_kernel = false;
    return error;
  };
  r.enqueue(*stream, std::move(op));
  return emuSuccess;
}

int uhmm_emulated_get_last_error(void) { return emuGetLastError(); }
int uhmm_emulated_get_device(int* device) { return emuGetDevice(device); }
int uhmm_emulated_set_device(int device) { return emuSetDevice(device); }
const char* uhmm_emulated_error_name(int error) { return emuGetErrorName(static_cast<emuError_t>(error)); }
const char* uhmm_emulated_error_string(int error) {
  return emuGetErrorString(static_cast<emuError_t>(error));
}

emuError_t emuDriverGetVersion(int* version) {
  if (version == nullptr) return fail(emuErrorInvalidValue);
  *version = runtime().driver_too_old.load() ? 12040 : EMU_RUNTIME_VERSION;
  return emuSuccess;
}

emuError_t emuGetDeviceCount(int* count) {
  Runtime& r = runtime();
  if (r.unloading()) return fail(emuErrorRuntimeUnloading);
  if (count == nullptr) return fail(emuErrorInvalidValue);
  if (r.driver_too_old.load()) {
    *count = 0;
    return fail(emuErrorInsufficientDriver);
  }
  if (r.init_error() != emuSuccess) return fail(r.init_error());
  *count = r.device_count();
  return r.device_count() == 0 ? fail(emuErrorNoDevice) : emuSuccess;
}

emuError_t emuGetDeviceProperties(emuDeviceProp* props, int device) {
  if (const emuError_t e = enter_without_context(); e != emuSuccess) return e;
  Device* d = runtime().device(device);
  if (d == nullptr) return fail(emuErrorInvalidDevice);
  if (props == nullptr) return fail(emuErrorInvalidValue);
  *props = emuDeviceProp{};
  std::snprintf(props->name, sizeof props->name, "uhmm emulated GPU %d", device);
  props->totalGlobalMem = d->bytes;
  props->pciBusID = 0xe0 + device;
  return emuSuccess;
}

emuError_t emuDeviceGetPCIBusId(char* bus_id, int length, int device) {
  if (const emuError_t e = enter_without_context(); e != emuSuccess) return e;
  if (runtime().device(device) == nullptr) return fail(emuErrorInvalidDevice);
  if (bus_id == nullptr || length <= 0) return fail(emuErrorInvalidValue);
  std::snprintf(bus_id, static_cast<std::size_t>(length), "0000:%02X:00.0", 0xe0 + device);
  return emuSuccess;
}

emuError_t emuSetDevice(int device) {
  Runtime& r = runtime();
  if (r.unloading()) return fail(emuErrorRuntimeUnloading);
  if (t_in_host_function) return fail(emuErrorNotPermitted);
  if (r.device(device) == nullptr) return fail(emuErrorInvalidDevice);
  // CUDA 12 creates the primary context here.
  if (const emuError_t e = need_context(*r.device(device)); e != emuSuccess) return e;
  t_device = device;
  return emuSuccess;
}

emuError_t emuGetDevice(int* device) {
  if (device == nullptr) return fail(emuErrorInvalidValue);
  *device = t_device;
  return emuSuccess;
}

emuError_t emuMemGetInfo(std::size_t* free_bytes, std::size_t* total_bytes) {
  if (const emuError_t e = enter(); e != emuSuccess) return e;
  Device* d = runtime().device(t_device);
  if (d == nullptr) return fail(emuErrorNoDevice);
  if (free_bytes == nullptr || total_bytes == nullptr) return fail(emuErrorInvalidValue);
  std::lock_guard lock(d->mutex);
  *total_bytes = d->bytes;
  *free_bytes = d->limit > d->used ? d->limit - d->used : 0;
  return emuSuccess;
}

emuError_t emuMalloc(void** out, std::size_t bytes) {
  if (const emuError_t e = enter(); e != emuSuccess) return e;
  Device* d = runtime().device(t_device);
  if (d == nullptr) return fail(emuErrorNoDevice);
  if (out == nullptr) return fail(emuErrorInvalidValue);
  *out = nullptr;
  if (bytes == 0) return emuSuccess;
  if (void (*hook)(void*) = runtime().malloc_hook.load()) hook(runtime().malloc_hook_user.load());
  const std::size_t size = align_up(bytes, kSmallAlignment);
  const std::size_t alignment = size >= kDeviceAlignment ? runtime().large_alignment.load() : kSmallAlignment;
  std::lock_guard lock(d->mutex);
  if (size > d->limit || d->used > d->limit - size) return fail(emuErrorMemoryAllocation);
  for (auto it = d->free_ranges.begin(); it != d->free_ranges.end(); ++it) {
    const auto [start, length] = *it;
    const std::uintptr_t at = align_up(start, alignment);
    if (at + size > start + length) continue;
    d->free_ranges.erase(it);
    if (at > start) d->free_ranges.emplace(start, at - start);
    if (at + size < start + length) d->free_ranges.emplace(at + size, start + length - (at + size));
    d->allocations.emplace(at, size);
    d->used += size;
    *out = reinterpret_cast<void*>(at);
    return emuSuccess;
  }
  return fail(emuErrorMemoryAllocation);
}

emuError_t emuFree(void* p) {
  if (p == nullptr) return emuSuccess;
  Runtime& r = runtime();
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  Device* d = r.device_of(a);
  if (d == nullptr) return fail(emuErrorInvalidValue);
  if (const emuError_t e = enter(d); e != emuSuccess) return e;
  r.frees.fetch_add(1);
  drain_device(*d);  // cudaFree synchronizes the device
  std::lock_guard lock(d->mutex);
  auto it = d->allocations.find(a);
  if (it == d->allocations.end()) return fail(emuErrorInvalidValue);
  std::uintptr_t start = it->first;
  std::size_t length = it->second;
  d->used -= length;
  d->allocations.erase(it);
  r.release_pages(start, length);  // freed memory reads zero when handed out again
  auto next = d->free_ranges.lower_bound(start);
  if (next != d->free_ranges.end() && next->first == start + length) {
    length += next->second;
    next = d->free_ranges.erase(next);
  }
  if (next != d->free_ranges.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {
      start = prev->first;
      length += prev->second;
      d->free_ranges.erase(prev);
    }
  }
  d->free_ranges.emplace(start, length);
  return emuSuccess;
}

emuError_t emuHostAlloc(void** out, std::size_t bytes, unsigned flags) {
  if (const emuError_t e = enter(); e != emuSuccess) return e;
  if (out == nullptr || (flags & ~(emuHostAllocPortable | emuHostAllocMapped)) != 0)
    return fail(emuErrorInvalidValue);
  *out = nullptr;
  if (bytes == 0) return fail(emuErrorInvalidValue);
  const std::size_t size = align_up(bytes, 4096);
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return fail(emuErrorMemoryAllocation);
  Runtime& r = runtime();
  std::unique_lock lock(r.pinned_mutex);
  r.pinned.emplace(reinterpret_cast<std::uintptr_t>(p), size);
  *out = p;
  return emuSuccess;
}

emuError_t emuFreeHost(void* p) {
  if (p == nullptr) return emuSuccess;
  if (const emuError_t e = enter(); e != emuSuccess) return e;
  Runtime& r = runtime();
  std::size_t size = 0;
  {
    std::shared_lock lock(r.pinned_mutex);
    auto it = r.pinned.find(reinterpret_cast<std::uintptr_t>(p));
    if (it == r.pinned.end()) return fail(emuErrorInvalidValue);
    size = it->second;
  }
  // cudaFreeHost synchronizes: no queued copy may still use it.
  for (int d = 0; d < r.device_count(); ++d) drain_device(*r.device(d));
  {
    std::unique_lock lock(r.pinned_mutex);
    r.pinned.erase(reinterpret_cast<std::uintptr_t>(p));
  }
  ::munmap(p, size);
  return emuSuccess;
}

emuError_t emuHostGetDevicePointer(void** device, void* host, unsigned flags) {
  if (const emuError_t e = enter(); e != emuSuccess) return e;
  if (device == nullptr || flags != 0 || side_of(host, 1) != Side::pinned) return fail(emuErrorInvalidValue);
  *device = host;  // unified addressing: the mapped pointer is the host pointer
  return emuSuccess;
}

emuError_t emuStreamCreateWithFlags(emuStream_t* out, unsigned flags) {
  if (const emuError_t e = enter(); e != emuSuccess) return e;
  Device* d = runtime().device(t_device);
  if (d == nullptr) return fail(emuErrorNoDevice);
  if (out == nullptr || (flags & ~emuStreamNonBlocking) != 0) return fail(emuErrorInvalidValue);
  *out = runtime().start_stream(*d, (flags & emuStreamNonBlocking) == 0).get();
  return emuSuccess;
}

emuError_t emuStreamDestroy(emuStream_t handle) {
  if (const emuError_t e = enter();
      e != emuSuccess && e != emuErrorLaunchFailure && e != emuErrorIllegalAddress)
    return e;
  if (handle == nullptr) return fail(emuErrorInvalidResourceHandle);
  auto stream = runtime().forget_stream(handle);
  if (stream == nullptr) return fail(emuErrorInvalidResourceHandle);
  // The vendors release the stream once its work is done; here the caller waits for that.
  runtime().stop(*stream, true);
  return emuSuccess;
}

emuError_t emuStreamSynchronize(emuStream_t handle) {
  auto stream = runtime().find_stream(handle);
  if (const emuError_t e = enter(stream ? stream->device : nullptr); e != emuSuccess) return e;
  if (stream == nullptr) return fail(emuErrorInvalidResourceHandle);
  return synchronize_stream(*stream);
}

emuError_t emuStreamQuery(emuStream_t handle) {
  auto stream = runtime().find_stream(handle);
  if (const emuError_t e = enter(stream ? stream->device : nullptr); e != emuSuccess) return e;
  if (stream == nullptr) return fail(emuErrorInvalidResourceHandle);
  {
    std::lock_guard lock(stream->mutex);
    if (stream->completed != stream->queued)
      return emuErrorNotReady;  // not an error: the last error is untouched
  }
  return synchronize_stream(*stream);
}

emuError_t emuEventCreateWithFlags(emuEvent_t* out, unsigned flags) {
  if (const emuError_t e = enter(); e != emuSuccess) return e;
  if (out == nullptr || (flags & ~emuEventDisableTiming) != 0) return fail(emuErrorInvalidValue);
  auto event = std::make_unique<uhmmEmulatedEvent>();
  *out = event.get();
  std::lock_guard lock(runtime().events_mutex);
  runtime().events.emplace(*out, std::move(event));
  return emuSuccess;
}

namespace {
uhmmEmulatedEvent* find_event(emuEvent_t handle) {
  std::lock_guard lock(runtime().events_mutex);
  auto it = runtime().events.find(handle);
  return it == runtime().events.end() ? nullptr : it->second.get();
}
// The point an event names: its stream and count, or no stream when never recorded.
Wait event_point(uhmmEmulatedEvent& event) {
  std::lock_guard lock(event.mutex);
  return {event.stream, event.point};
}
}  // namespace

emuError_t emuEventDestroy(emuEvent_t handle) {
  if (const emuError_t e = enter(); e != emuSuccess) return e;
  std::unique_ptr<uhmmEmulatedEvent> event;
  {
    std::lock_guard lock(runtime().events_mutex);
    auto it = runtime().events.find(handle);
    if (it == runtime().events.end()) return fail(emuErrorInvalidResourceHandle);
    event = std::move(it->second);
    runtime().events.erase(it);
  }
  return emuSuccess;  // queued waits hold the point, not the event
}

emuError_t emuEventRecord(emuEvent_t handle, emuStream_t stream_handle) {
  auto stream = runtime().find_stream(stream_handle);
  if (const emuError_t e = enter(stream ? stream->device : nullptr); e != emuSuccess) return e;
  uhmmEmulatedEvent* event = find_event(handle);
  if (stream == nullptr || event == nullptr) return fail(emuErrorInvalidResourceHandle);
  // A no-op marks the point, so that work on the legacy stream orders it too.
  const std::uint64_t point =
      runtime().enqueue(*stream, Operation{[] { return emuSuccess; }, {}, 0, emuSuccess, false});
  std::lock_guard lock(event->mutex);
  event->stream = stream;
  event->point = point;
  return emuSuccess;
}

emuError_t emuEventSynchronize(emuEvent_t handle) {
  if (const emuError_t e = enter(); e != emuSuccess) return e;
  uhmmEmulatedEvent* event = find_event(handle);
  if (event == nullptr) return fail(emuErrorInvalidResourceHandle);
  const Wait point = event_point(*event);
  if (point.stream == nullptr) return emuSuccess;  // never recorded: complete
  runtime().wait_for(*point.stream, point.point);
  if (runtime().unloading()) return fail(emuErrorRuntimeUnloading);
  if (const int sticky = point.stream->device->sticky.load(); sticky != emuSuccess)
    return fail(static_cast<emuError_t>(sticky));
  return emuSuccess;
}

emuError_t emuEventQuery(emuEvent_t handle) {
  if (const emuError_t e = enter(); e != emuSuccess) return e;
  uhmmEmulatedEvent* event = find_event(handle);
  if (event == nullptr) return fail(emuErrorInvalidResourceHandle);
  const Wait point = event_point(*event);
  if (point.stream == nullptr) return emuSuccess;
  std::lock_guard lock(point.stream->mutex);
  return point.stream->completed >= point.point ? emuSuccess : emuErrorNotReady;
}

emuError_t emuStreamWaitEvent(emuStream_t stream_handle, emuEvent_t handle, unsigned flags) {
  auto stream = runtime().find_stream(stream_handle);
  if (const emuError_t e = enter(stream ? stream->device : nullptr); e != emuSuccess) return e;
  uhmmEmulatedEvent* event = find_event(handle);
  if (stream == nullptr || event == nullptr) return fail(emuErrorInvalidResourceHandle);
  if (flags != 0) return fail(emuErrorInvalidValue);
  Wait point = event_point(*event);  // the record as of this call, as the vendors capture it
  if (point.stream == nullptr) return emuSuccess;
  Operation op{[] {
                 runtime().event_waits.fetch_add(1);
                 return emuSuccess;
               },
               {std::move(point)},
               0,
               emuSuccess,
               false};
  runtime().enqueue(*stream, std::move(op));
  return emuSuccess;
}

emuError_t emuMemcpyAsync(void* dst, const void* src, std::size_t bytes, emuMemcpyKind kind,
                          emuStream_t handle) {
  auto stream = runtime().find_stream(handle);
  if (const emuError_t e = enter(stream ? stream->device : nullptr); e != emuSuccess) return e;
  if (stream == nullptr) return fail(emuErrorInvalidResourceHandle);
  if (kind != emuMemcpyDefault) return fail(emuErrorInvalidValue);
  if (bytes == 0) return emuSuccess;
  if (dst == nullptr || src == nullptr) return fail(emuErrorInvalidValue);
  const Side to = side_of(dst, bytes), from = side_of(src, bytes);
  if (to == Side::invalid || from == Side::invalid) return fail(emuErrorInvalidValue);
  Runtime& r = runtime();
  count_peer_copy(*stream->device, dst, src);
  if (from == Side::pageable && to == Side::device) {
    // Pageable source: staged at the call, so the caller may reuse it on return.
    auto staged = std::make_shared<std::vector<std::byte>>(static_cast<const std::byte*>(src),
                                                           static_cast<const std::byte*>(src) + bytes);
    r.enqueue(*stream, Operation{[dst, staged] {
                                   runtime().copies.fetch_add(1);
                                   std::memcpy(engine_view(dst), staged->data(), staged->size());
                                   return emuSuccess;
                                 },
                                 {},
                                 0,
                                 emuSuccess,
                                 false});
    return emuSuccess;
  }
  const std::uint64_t point =
      r.enqueue(*stream, Operation{[dst, src, bytes] {
                                     runtime().copies.fetch_add(1);
                                     std::memcpy(engine_view(dst), engine_view(src), bytes);
                                     return emuSuccess;
                                   },
                                   {},
                                   0,
                                   emuSuccess,
                                   false});
  if (to == Side::pageable) {
    // Pageable destination: the call returns when the copy is done.
    r.wait_for(*stream, point);
    if (const int sticky = stream->device->sticky.load(); sticky != emuSuccess)
      return fail(static_cast<emuError_t>(sticky));
  }
  return emuSuccess;
}

emuError_t emuMemsetAsync(void* dst, int value, std::size_t bytes, emuStream_t handle) {
  auto stream = runtime().find_stream(handle);
  if (const emuError_t e = enter(stream ? stream->device : nullptr); e != emuSuccess) return e;
  if (stream == nullptr) return fail(emuErrorInvalidResourceHandle);
  if (bytes == 0) return emuSuccess;
  if (side_of(dst, bytes) != Side::device) return fail(emuErrorInvalidValue);
  runtime().enqueue(*stream, Operation{[dst, value, bytes] {
                                         runtime().memsets.fetch_add(1);
                                         std::memset(engine_view(dst), value, bytes);
                                         return emuSuccess;
                                       },
                                       {},
                                       0,
                                       emuSuccess,
                                       false});
  return emuSuccess;
}

emuError_t emuLaunchHostFunc(emuStream_t handle, emuHostFn_t fn, void* user) {
  auto stream = runtime().find_stream(handle);
  if (const emuError_t e = enter(stream ? stream->device : nullptr); e != emuSuccess) return e;
  if (stream == nullptr) return fail(emuErrorInvalidResourceHandle);
  if (fn == nullptr) return fail(emuErrorInvalidValue);
  runtime().enqueue(*stream, Operation{[fn, user] {
                                         Runtime& r = runtime();
                                         std::lock_guard lock(r.host_function_mutex);
                                         r.host_functions.fetch_add(1);
                                         t_in_host_function = true;
                                         fn(user);
                                         t_in_host_function = false;
                                         return emuSuccess;
                                       },
                                       {},
                                       0,
                                       emuSuccess,
                                       false});
  return emuSuccess;
}

emuError_t emuDeviceCanAccessPeer(int* can_access, int device, int peer) {
  if (const emuError_t e = enter_without_context(); e != emuSuccess) return e;
  Device* d = runtime().device(device);
  if (d == nullptr || runtime().device(peer) == nullptr) return fail(emuErrorInvalidDevice);
  if (can_access == nullptr) return fail(emuErrorInvalidValue);
  *can_access = device != peer && ((d->peers_incapable.load() >> peer) & 1) == 0 ? 1 : 0;
  return emuSuccess;
}

emuError_t emuDeviceEnablePeerAccess(int peer, unsigned flags) {
  if (const emuError_t e = enter(); e != emuSuccess) return e;
  Device* d = runtime().device(t_device);
  Device* p = runtime().device(peer);
  if (d == nullptr || p == nullptr || p == d) return fail(emuErrorInvalidDevice);
  if (flags != 0) return fail(emuErrorInvalidValue);
  if (((d->peers_incapable.load() >> peer) & 1) != 0) return fail(emuErrorPeerAccessUnsupported);
  if (const emuError_t e = need_context(*p); e != emuSuccess) return e;
  const std::uint64_t bit = std::uint64_t{1} << peer;
  if ((d->peers.fetch_or(bit) & bit) != 0) return fail(emuErrorPeerAccessAlreadyEnabled);
  return emuSuccess;
}

emuError_t emuPointerGetAttributes(emuPointerAttributes* attributes, const void* p) {
  if (const emuError_t e = enter_without_context(); e != emuSuccess) return e;
  if (attributes == nullptr) return fail(emuErrorInvalidValue);
  *attributes = emuPointerAttributes{emuMemoryTypeUnregistered, -1, nullptr, nullptr};
  switch (side_of(p, 1)) {
    case Side::invalid:
      return fail(emuErrorInvalidValue);  // a device address outside any allocation
    case Side::device:
      *attributes = {emuMemoryTypeDevice, runtime().device_of(reinterpret_cast<std::uintptr_t>(p))->index,
                     const_cast<void*>(p), nullptr};
      return emuSuccess;
    case Side::pinned:
      *attributes = {emuMemoryTypeHost, t_device, const_cast<void*>(p), const_cast<void*>(p)};
      return emuSuccess;
    case Side::pageable:
      return emuSuccess;
  }
  return emuSuccess;
}

emuError_t emuDeviceSynchronize(void) {
  if (const emuError_t e = enter(); e != emuSuccess) return e;
  Device* d = runtime().device(t_device);
  if (d == nullptr) return fail(emuErrorNoDevice);
  emuError_t first = emuSuccess;
  for (auto& stream : runtime().streams_of(*d))
    if (const emuError_t e = synchronize_stream(*stream); e != emuSuccess && first == emuSuccess) first = e;
  return first;
}

const char* emuGetErrorName(emuError_t error) {
  const ErrorText* e = find_error(error);
  return e != nullptr ? e->name : "emuErrorUnknown";
}

const char* emuGetErrorString(emuError_t error) {
  const ErrorText* e = find_error(error);
  return e != nullptr ? e->text : "unknown error";
}

emuError_t emuGetLastError(void) {
  const emuError_t e = emuPeekAtLastError();
  // A lost device keeps reporting its error; anything else is reported once.
  if (!sticky_kind(e)) t_last_error = emuSuccess;
  return e;
}

emuError_t emuPeekAtLastError(void) {
  if (Device* d = runtime().device(t_device); d != nullptr && d->sticky.load() != emuSuccess)
    return static_cast<emuError_t>(d->sticky.load());
  return t_last_error;
}

emuError_t emuKernelImageLoadable(void) {
  if (const emuError_t e = enter(); e != emuSuccess) return e;
  return runtime().kernel_image.load() ? emuSuccess : fail(emuErrorNoKernelImageForDevice);
}

void emuTestSetDelay(unsigned max_us, unsigned seed) { runtime().set_delay(max_us, seed); }

void emuTestSetDeviceLimit(int device, std::size_t bytes) {
  if (Device* d = runtime().device(device)) {
    std::lock_guard lock(d->mutex);
    d->limit = std::min(bytes, d->bytes);
  }
}

void emuTestFailNextOperation(emuStream_t handle, emuError_t error, int sticky) {
  if (auto stream = runtime().find_stream(handle)) {
    std::lock_guard lock(stream->mutex);
    stream->inject = error;
    stream->inject_sticky = sticky != 0;
  }
}

void emuTestClearStickyError(int device) {
  if (Device* d = runtime().device(device)) d->sticky.store(emuSuccess);
  t_last_error = emuSuccess;
}

void emuTestSetKernelImage(int loadable) { runtime().kernel_image.store(loadable != 0); }

emuTestCounts emuTestGetCounts(void) {
  Runtime& r = runtime();
  return {r.copies.load(),      r.memsets.load(), r.kernels.load(),     r.host_functions.load(),
          r.event_waits.load(), r.frees.load(),   r.peer_direct.load(), r.peer_staged.load()};
}

void emuTestSetLargeAlignment(std::size_t bytes) {
  runtime().large_alignment.store(std::clamp(bytes, kSmallAlignment, kDeviceAlignment));
}

std::size_t emuTestDeviceUsed(int device) {
  Device* d = runtime().device(device);
  if (d == nullptr) return 0;
  std::lock_guard lock(d->mutex);
  return d->used;
}

void emuTestSetMallocHook(void (*hook)(void* user), void* user) {
  runtime().malloc_hook_user.store(user);
  runtime().malloc_hook.store(hook);
}

unsigned emuTestContextsCreated(int device) {
  Device* d = runtime().device(device);
  return d != nullptr ? d->contexts_created.load() : 0;
}

void emuTestForgetContexts(void) {
  for (int d = 0; d < runtime().device_count(); ++d) runtime().device(d)->context.store(false);
}

void emuTestSetDeviceUnusable(int device, int unusable) {
  if (Device* d = runtime().device(device)) d->unusable.store(unusable != 0);
}

void emuTestSetPeerCapable(int device, int peer, int capable) {
  Device* d = runtime().device(device);
  if (d == nullptr || peer < 0 || peer >= runtime().device_count()) return;
  const std::uint64_t bit = std::uint64_t{1} << peer;
  if (capable != 0)
    d->peers_incapable.fetch_and(~bit);
  else
    d->peers_incapable.fetch_or(bit);
}

void emuTestSetDriverTooOld(int too_old) { runtime().driver_too_old.store(too_old != 0); }

void emuTestForgetPeerAccess(void) {
  for (int d = 0; d < runtime().device_count(); ++d) runtime().device(d)->peers.store(0);
}

}  // extern "C"
