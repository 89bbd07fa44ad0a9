// Launch streams of one device, reused across launches: a launch takes a
// stream (with the device buffer its page tables are uploaded to) for its
// duration and gives it back drained. Creating a backend stream per launch
// costs a thread on the cpu backend and a stream plus pinned staging on a GPU;
// a pool keeps launches cheap and bounds what concurrent launches hold.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "lock_order.hpp"
#include "uhmm/backend.hpp"

namespace uhmm::detail {

class LaunchStreamPool {
 public:
  // One stream and its page-table buffer (grown on demand, never shrunk).
  struct Slot {
    StreamId stream = 0;
    DeviceAddress tables = 0;
    std::size_t table_bytes = 0;
  };

  // A slot held by one launch; back to the pool when it ends. A lease marked
  // broken (its stream failed to drain) destroys the slot instead.
  class Lease {
   public:
    Lease(LaunchStreamPool& pool, Slot slot) noexcept : pool_(&pool), slot_(slot) {}
    Lease(Lease&& other) noexcept : pool_(other.pool_), slot_(other.slot_), broken_(other.broken_) {
      other.pool_ = nullptr;
    }
    Lease& operator=(Lease&&) = delete;
    ~Lease() {
      if (pool_ != nullptr) pool_->release(slot_, broken_);
    }
    StreamId stream() const noexcept { return slot_.stream; }
    // The slot's table buffer, grown to at least `bytes` (> 0). Pre: no queued
    // work reads the buffer (the stream is drained between launches). The
    // buffer it outgrows is retired, not freed: a free may synchronize the
    // whole device (cudaFree), which a launch must not wait for.
    Status reserve_tables(std::size_t bytes, DeviceAddress* out) noexcept;
    void mark_broken() noexcept { broken_ = true; }

   private:
    LaunchStreamPool* pool_;
    Slot slot_;
    bool broken_ = false;
  };

  // Keeps up to `max_idle` idle slots; more are destroyed when released.
  explicit LaunchStreamPool(Backend& backend, std::size_t max_idle = 8) noexcept;
  // Destroys the idle slots. Pre: no lease is outstanding.
  ~LaunchStreamPool();
  LaunchStreamPool(const LaunchStreamPool&) = delete;
  LaunchStreamPool& operator=(const LaunchStreamPool&) = delete;

  // An idle slot, or a new one. Throws uhmm::Error when the backend cannot
  // create a stream.
  Lease acquire();

  std::size_t streams_created() const noexcept;
  std::size_t idle() const noexcept;

 private:
  void release(Slot slot, bool broken) noexcept;
  void destroy(const Slot& slot) noexcept;
  void retire(DeviceAddress tables) noexcept;
  void free_retired() noexcept;

  Backend& backend_;
  const std::size_t max_idle_;
  mutable Ranked<std::mutex, LockRank::launch_stream_pool> mutex_;
  std::vector<Slot> idle_;
  std::vector<DeviceAddress> retired_;  // outgrown table buffers: freed with a slot, or the pool
  std::size_t created_ = 0;
};

// The launch stream pools of a context, one per device, made on first use.
// clear() must run before the devices close (Mm's destructor).
class LaunchStreamPools {
 public:
  LaunchStreamPool& of(OwnerId owner, Backend& backend);
  void clear() noexcept;

 private:
  Ranked<std::mutex, LockRank::launch_stream_pools> mutex_;
  std::map<OwnerId, std::unique_ptr<LaunchStreamPool>> pools_;
};

}  // namespace uhmm::detail
