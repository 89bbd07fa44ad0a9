// A device as a Context holds it: a backend, its page pool and its copy
// engine, seen by host/ as a DevicePagemap. Built by driver/ (open_devices).
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "uhmm/backend.hpp"
#include "uhmm/context.hpp"
#include "uhmm/migrate.hpp"

namespace uhmm::detail {

class Device : public DevicePagemap {
 public:
  virtual Backend& backend() noexcept = 0;
  virtual DeviceInfo info() const = 0;
  virtual void set_fault_injection(const FaultInjection& injection) noexcept = 0;
  // Caps the pages the pool hands out (at most capacity_pages()): a shrunk
  // pool. Allocations above the cap fail with out_of_memory; pages in use
  // above it are the caller's to evict.
  virtual void set_page_limit(std::size_t pages) noexcept = 0;
  virtual std::size_t page_limit() const noexcept = 0;
  // The runtime's ordinal of the device (cudaSetDevice's), -1 on the cpu
  // backend: launch_device makes it current for the application's launches.
  virtual int native_device() const noexcept { return -1; }
  // Gives the pool's entirely free chunks beyond the limit back to the
  // backend (device memory freed); returns how many.
  virtual std::size_t release_free_chunks() noexcept = 0;
  // Checks the pool's free lists and counts (expensive; tests and checked builds).
  virtual Status validate() const = 0;
};

// Finds another device's pagemap by owner (for device-to-device copies).
using PagemapLookup = std::function<DevicePagemap*(OwnerId)>;

// Opens the devices the options ask for; owners are numbered from 1. Throws
// uhmm::Error when the requested backend is unavailable, saying why.
std::vector<std::unique_ptr<Device>> open_devices(const ContextOptions& options, PagemapLookup lookup);

}  // namespace uhmm::detail
