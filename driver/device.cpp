#include "device.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "fault_injection_target.hpp"
#include "uhmm/detail/log.hpp"
#include "uhmm/error.hpp"

namespace uhmm::detail {
namespace {

constexpr unsigned kMaxInternalStreams = 4;

Backend& checked(const std::unique_ptr<Backend>& backend) {
  if (!backend) throw Error(Errc::invalid_argument, "device: null backend");
  return *backend;
}

DeviceAddress host_address(const void* p) noexcept {
  return static_cast<DeviceAddress>(reinterpret_cast<std::uintptr_t>(p));
}

}  // namespace

class DeviceImpl::StreamLease {
 public:
  explicit StreamLease(DeviceImpl& device) noexcept : device_(device) { status_ = device.acquire_stream(&id_); }
  ~StreamLease() {
    if (status_) device_.release_stream(id_);
  }
  StreamLease(const StreamLease&) = delete;
  StreamLease& operator=(const StreamLease&) = delete;
  const Status& status() const noexcept { return status_; }
  StreamId id() const noexcept { return id_; }

 private:
  DeviceImpl& device_;
  StreamId id_ = 0;
  Status status_;
};

DeviceImpl::DeviceImpl(std::unique_ptr<Backend> backend, std::size_t capacity_pages, OwnerId owner,
                       PagemapLookup lookup)
    : backend_(std::move(backend)),
      pool_(checked(backend_), capacity_pages),
      owner_(owner),
      lookup_(std::move(lookup)) {
  if (owner_ == kNoOwner) throw Error(Errc::invalid_argument, "device: owner 0 is reserved for 'no device'");
}

DeviceImpl::~DeviceImpl() {
  std::lock_guard lock(streams_mutex_);
  if (idle_streams_.size() != streams_created_)
    log().error("device {}: destroyed with {} calls in flight", owner_, streams_created_ - idle_streams_.size());
  for (StreamId stream : idle_streams_) backend_->destroy_stream(stream);
}

Status DeviceImpl::acquire_stream(StreamId* out) noexcept {
  std::unique_lock lock(streams_mutex_);
  for (;;) {
    if (!idle_streams_.empty()) {
      *out = idle_streams_.back();
      idle_streams_.pop_back();
      return Status::ok();
    }
    if (streams_created_ < kMaxInternalStreams) break;
    streams_cv_.wait(lock);
  }
  ++streams_created_;
  lock.unlock();
  Status status = backend_->create_stream(out);
  if (!status) {
    lock.lock();
    --streams_created_;
    streams_cv_.notify_one();
  }
  return status;
}

void DeviceImpl::release_stream(StreamId stream) noexcept {
  {
    std::lock_guard lock(streams_mutex_);
    // Capacity was reserved for every stream created: does not throw.
    idle_streams_.push_back(stream);
  }
  streams_cv_.notify_one();
}

Status DeviceImpl::alloc_and_copy(MigrateVma& args) noexcept {
  if (args.src == nullptr || args.dst == nullptr || args.start == nullptr || args.end <= args.start ||
      host_address(args.start) % kPageSize != 0 || host_address(args.end) % kPageSize != 0) {
    return {Errc::invalid_argument,
            fmt::format("device {}: alloc_and_copy with a bad MigrateVma (null arrays, empty or unaligned range)", owner_)};
  }
  auto* const start = static_cast<std::byte*>(args.start);
  const std::size_t n = args.npages();
  const std::uint64_t* const src = args.src;
  std::uint64_t* const dst = args.dst;
  for (std::size_t i = 0; i < n; ++i)
    if ((src[i] & MIGRATE_PFN_MIGRATE) != 0) dst[i] = 0;

  // Everything that can throw happens here, before any page is allocated.
  std::vector<DevicePageIndex> page_of;
  std::vector<std::uint8_t> done;
  std::vector<std::size_t> heads, h2d_at, d2d_at, zero_at;
  std::vector<HostToDevicePage> h2d;
  std::vector<DeviceToDevicePage> d2d;
  std::vector<DeviceAddress> zero;
  try {
    page_of.assign(n, 0);
    done.assign(n, 0);
    heads.reserve(n / kPagesPerChunk + 1);
    h2d_at.reserve(n);
    d2d_at.reserve(n);
    zero_at.reserve(n);
    h2d.reserve(n);
    d2d.reserve(n);
    zero.reserve(n);
    std::lock_guard lock(streams_mutex_);
    idle_streams_.reserve(kMaxInternalStreams);
  } catch (...) {
    try {
      return {Errc::out_of_memory, "device: alloc_and_copy: host memory exhausted"};
    } catch (...) {
      return {Errc::out_of_memory, std::string()};  // not even for the message
    }
  }

  Status first_failure;
  std::size_t failed = 0;
  const auto note_failure = [&](Status&& status) {
    ++failed;
    if (first_failure) first_failure = std::move(status);
  };

  // Plans page i onto device page `page`: into one of the three batches, or
  // released again when its source cannot be reached.
  const auto plan = [&](std::size_t i, DevicePageIndex page) {
    page_of[i] = page;
    const DeviceAddress to = pool_.address_of(page);
    const std::uint64_t s = src[i];
    if ((s & MIGRATE_PFN_DEVICE) != 0) {
      const DevicePage from = migrate_pfn_to_device_page(s);
      const DevicePagemap* pagemap = from.owner == owner_ ? this : nullptr;
      if (pagemap == nullptr && lookup_) {
        try {
          pagemap = lookup_(from.owner);
        } catch (...) {
          pagemap = nullptr;
        }
      }
      const DeviceAddress from_address = pagemap != nullptr ? pagemap->address_of(from.index) : 0;
      if (from_address == 0) {
        pool_.free_page(page);
        Status status{Errc::invalid_argument, {}};
        try {
          status.message = fmt::format("device {}: source device page {} of owner {} cannot be found", owner_,
                                       from.index, from.owner);
        } catch (...) {
        }
        note_failure(std::move(status));
        return;
      }
      d2d_at.push_back(i);
      d2d.push_back({from_address, to});
    } else if ((s & MIGRATE_PFN_VALID) != 0) {
      h2d_at.push_back(i);
      h2d.push_back({start + i * kPageSize, to});
    } else {
      zero_at.push_back(i);
      zero.push_back(to);
    }
  };

  for (std::size_t i = 0; i < n; ++i) {
    if ((src[i] & MIGRATE_PFN_MIGRATE) == 0) continue;
    if ((src[i] & MIGRATE_PFN_COMPOUND) != 0) {
      bool whole_run = i + kPagesPerChunk <= n && host_address(start + i * kPageSize) % kBlockSize == 0;
      for (std::size_t j = i; whole_run && j < i + kPagesPerChunk; ++j)
        whole_run = (src[j] & MIGRATE_PFN_MIGRATE) != 0;
      DevicePageIndex first = 0;
      if (whole_run && pool_.allocate_chunk(&first)) {
        heads.push_back(i);
        for (std::size_t j = 0; j < kPagesPerChunk; ++j)
          plan(i + j, first + static_cast<DevicePageIndex>(j));
        i += kPagesPerChunk - 1;
        continue;
      }
      // No whole free chunk (or not a whole run): the run moves as single pages.
    }
    DevicePageIndex page = 0;
    if (Status status = pool_.allocate_page(&page); !status) {
      note_failure(std::move(status));
      continue;
    }
    plan(i, page);
  }

  // One batch per kind on one leased stream; pages_done says exactly which pages made it.
  BatchResult h2d_result{{Errc::device_error, "not run"}, 0};
  BatchResult d2d_result{{Errc::device_error, "not run"}, 0};
  BatchResult zero_result{{Errc::device_error, "not run"}, 0};
  if (!h2d.empty() || !d2d.empty() || !zero.empty()) {
    StreamLease lease(*this);
    if (!lease.status()) {
      h2d_result.status = d2d_result.status = zero_result.status = lease.status();
    } else {
      const auto enqueue = [&](bool any, BatchResult& result, auto&& call) {
        if (!any) return;
        if (Status status = call(); !status) result.status = std::move(status);
      };
      enqueue(!h2d.empty(), h2d_result, [&] { return backend_->copy_to_device(lease.id(), h2d, &h2d_result); });
      enqueue(!d2d.empty(), d2d_result,
              [&] { return backend_->copy_device_to_device(lease.id(), d2d, &d2d_result); });
      enqueue(!zero.empty(), zero_result, [&] { return backend_->zero_device(lease.id(), zero, &zero_result); });
      // Failures are read from each BatchResult; this only collects them.
      (void)backend_->synchronize(lease.id());
    }
  }

  const auto settle = [&](const std::vector<std::size_t>& at, BatchResult& result) {
    const std::size_t ok = std::min(result.pages_done, at.size());
    for (std::size_t k = 0; k < at.size(); ++k) {
      const std::size_t i = at[k];
      if (k < ok) {
        done[i] = 1;
        dst[i] = migrate_pfn_device({owner_, page_of[i]}) | (src[i] & MIGRATE_PFN_WRITE);
      } else {
        pool_.free_page(page_of[i]);
      }
    }
    if (ok < at.size()) {
      failed += at.size() - ok;
      if (first_failure) first_failure = std::move(result.status);
    }
  };
  settle(h2d_at, h2d_result);
  settle(d2d_at, d2d_result);
  settle(zero_at, zero_result);

  for (std::size_t head : heads) {
    bool all = true;
    for (std::size_t j = head; all && j < head + kPagesPerChunk; ++j) all = done[j] != 0;
    if (all) dst[head] |= MIGRATE_PFN_COMPOUND;
  }
  if (failed != 0)
    log().debug("device {}: alloc_and_copy: {} pages failed: {}", owner_, failed, first_failure.message);
  return first_failure;
}

BatchResult DeviceImpl::copy_to_ram(std::span<const DevicePageIndex> pages,
                                    std::span<std::byte* const> dst) noexcept {
  if (pages.size() != dst.size())
    return {{Errc::invalid_argument, "device: copy_to_ram with page and destination lists of different sizes"}, 0};
  if (pages.empty()) return {};
  std::vector<DeviceToHostPage> copies;
  try {
    copies.reserve(pages.size());
  } catch (...) {
    return {{Errc::out_of_memory, "device: copy_to_ram: host memory exhausted"}, 0};
  }
  Status stop;
  for (std::size_t k = 0; k < pages.size(); ++k) {
    const DeviceAddress from = pool_.address_of(pages[k]);
    if (from == 0 || dst[k] == nullptr) {
      try {
        stop = {Errc::invalid_argument,
                from == 0 ? fmt::format("device {}: copy_to_ram of device page {}, which is not in use", owner_,
                                        pages[k])
                          : fmt::format("device {}: copy_to_ram to a null destination (page {})", owner_, k)};
      } catch (...) {
        stop = {Errc::invalid_argument, {}};
      }
      break;
    }
    copies.push_back({from, dst[k]});
  }
  BatchResult result{Status::ok(), 0};
  if (!copies.empty()) {
    StreamLease lease(*this);
    if (!lease.status()) return {lease.status(), 0};
    result = {{Errc::device_error, "not run"}, 0};
    if (Status status = backend_->copy_to_host(lease.id(), copies, &result); !status) return {status, 0};
    (void)backend_->synchronize(lease.id());
  }
  if (result.status && copies.size() < pages.size()) result.status = std::move(stop);
  return result;
}

void DeviceImpl::page_free(std::span<const DevicePageIndex> pages) noexcept { pool_.free_pages(pages); }

void DeviceImpl::set_fault_injection(const FaultInjection& injection) noexcept {
  pool_.set_alloc_pages_left(injection.alloc_pages_left);
  if (auto* target = dynamic_cast<FaultInjectionTarget*>(backend_.get())) {
    target->set_fault_injection(injection);
  } else if (injection.copy_fail_at_page >= 0 || injection.copy_delay_us != 0) {
    log().warn("device {}: backend does not support injected copy failures or delays (ignored)", owner_);
  }
}

Status DeviceImpl::validate() const {
  Status status = pool_.validate();
  if (!status) status.message = fmt::format("device {}: {}", owner_, status.message);
  return status;
}

}  // namespace uhmm::detail
