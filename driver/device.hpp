// DeviceImpl: one device as host/ sees it (a DevicePagemap), built on any
// Backend — the driver's half of migrate_vma (alloc-and-copy), migrate_to_ram's
// copy, page_free, and the pool. Backend-agnostic: the cpu backend and the GPU
// backends all sit under this one class.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

#include "page_pool.hpp"
#include "uhmm/backend.hpp"
#include "uhmm/detail/device.hpp"
#include "uhmm/migrate.hpp"

namespace uhmm::detail {

class DeviceImpl final : public Device {
 public:
  // Owns backend; the pool grows up to capacity_pages device pages. lookup
  // finds the pagemap of another owner for device-to-device copies (it may be
  // empty: pages whose source is on another device then fail). Throws
  // uhmm::Error (invalid_argument) for a null backend or owner kNoOwner.
  DeviceImpl(std::unique_ptr<Backend> backend, std::size_t capacity_pages, OwnerId owner,
             PagemapLookup lookup);
  // Pre: no call is in flight. Pages still in use are logged and released.
  ~DeviceImpl() override;
  DeviceImpl(const DeviceImpl&) = delete;
  DeviceImpl& operator=(const DeviceImpl&) = delete;

  // DevicePagemap.
  OwnerId owner() const noexcept override { return owner_; }
  std::size_t capacity_pages() const noexcept override { return pool_.capacity_pages(); }
  // Allocates, then copies in at most three batches (host to device, device to
  // device, zero-fill) on one internal stream, and keeps exactly the pages the
  // batches report done. A src[i] with COMPOUND heading 512 selected pages at a
  // 2 MiB-aligned address gets a whole chunk, and dst[i] gets COMPOUND when all
  // 512 made it; without a free chunk the run falls back to single pages.
  // dst[i] also carries src[i]'s WRITE. Returns the first failure (pool
  // exhaustion or injection: out_of_memory; a copy: device_error; a device
  // source that no pagemap knows: invalid_argument). Safe from several threads.
  Status alloc_and_copy(MigrateVma& args) noexcept override;
  // pages not in use stop the copy there (Errc::invalid_argument).
  BatchResult copy_to_ram(std::span<const DevicePageIndex> pages,
                          std::span<std::byte* const> dst) noexcept override;
  void page_free(std::span<const DevicePageIndex> pages) noexcept override;
  DeviceAddress address_of(DevicePageIndex page) const noexcept override { return pool_.address_of(page); }
  std::size_t pages_in_use() const noexcept override { return pool_.pages_in_use(); }

  // Device.
  Backend& backend() noexcept override { return *backend_; }
  DeviceInfo info() const override { return backend_->info(); }
  // alloc_pages_left goes to the pool, the copy part to the backend when it
  // implements FaultInjectionTarget (otherwise it is logged as unsupported).
  void set_fault_injection(const FaultInjection& injection) noexcept override;
  void set_page_limit(std::size_t pages) noexcept override { pool_.set_limit_pages(pages); }
  std::size_t page_limit() const noexcept override { return pool_.limit_pages(); }
  std::size_t release_free_chunks() noexcept override { return pool_.release_free_chunks(); }
  int native_device() const noexcept override { return native_device_; }
  void set_native_device(int ordinal) noexcept { native_device_ = ordinal; }
  Status validate() const override;

  PagePool& pool() noexcept { return pool_; }
  const PagePool& pool() const noexcept { return pool_; }

 private:
  // Internal streams are leased one per call, created lazily up to a few, so
  // that concurrent calls copy in parallel and never share a synchronize.
  class StreamLease;
  Status acquire_stream(StreamId* out) noexcept;
  void release_stream(StreamId stream) noexcept;

  // Declared first so that it is destroyed last (the pool frees chunks into it).
  std::unique_ptr<Backend> backend_;
  PagePool pool_;
  const OwnerId owner_;
  const PagemapLookup lookup_;

  std::mutex streams_mutex_;
  std::condition_variable streams_cv_;
  std::vector<StreamId> idle_streams_;
  unsigned streams_created_ = 0;
  int native_device_ = -1;  // the runtime's ordinal (GPU plugins), for launch_device
};

}  // namespace uhmm::detail
