// uhmm::Stream: migrations submitted in order and run by one worker thread,
// so the caller goes on while pages move.
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "context_core.hpp"
#include "migration.hpp"
#include "deferred_signals.hpp"
#include "out_of_memory.hpp"
#include "range_advice.hpp"
#include "uhmm/detail/log.hpp"
#include "uhmm/detail/signal_mask.hpp"

namespace uhmm {
namespace detail {

class StreamImpl {
 public:
  StreamImpl(Mm& ctx, OwnerId device) : ctx_(ctx), device_(device), worker_(spawn_library_thread([this] { run(); })) {}
  ~StreamImpl() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    ready_.notify_all();
    worker_.join();
  }

  Mm& ctx() noexcept { return ctx_; }
  OwnerId device() const noexcept { return device_; }

  std::future<MigrationResult> submit(std::packaged_task<MigrationResult()> task) {
    auto future = task.get_future();
    {
      std::lock_guard lock(mutex_);
      queue_.push_back(std::move(task));
    }
    ready_.notify_all();
    return future;
  }

  void synchronize() {
    std::unique_lock lock(mutex_);
    idle_.wait(lock, [this] { return queue_.empty() && !busy_; });
  }

 private:
  void run() {
    std::unique_lock lock(mutex_);
    for (;;) {
      ready_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and everything submitted has run
      auto task = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      lock.unlock();
      task();  // a packaged_task stores exceptions in its future
      lock.lock();
      busy_ = false;
      if (queue_.empty()) idle_.notify_all();
    }
  }

  Mm& ctx_;
  OwnerId device_;
  std::mutex mutex_;
  std::condition_variable ready_, idle_;
  std::deque<std::packaged_task<MigrationResult()>> queue_;
  bool busy_ = false;
  bool stopping_ = false;
  std::thread worker_;
};

}  // namespace detail

Stream::Stream(std::unique_ptr<detail::StreamImpl> impl) : impl_(std::move(impl)) {}
Stream::Stream(Stream&&) noexcept = default;
Stream& Stream::operator=(Stream&& other) noexcept {
  detail::DeferSignals defer;  // the stream it held goes here
  impl_ = std::move(other.impl_);
  return *this;
}
Stream::~Stream() {
  detail::DeferSignals defer;
  impl_.reset();
}
void Stream::synchronize() {
  detail::DeferSignals defer;
  if (impl_) impl_->synchronize();
}
OwnerId Stream::device() const noexcept { return impl_ ? impl_->device() : kNoOwner; }

Stream Context::create_stream(OwnerId device) {
  detail::DeferSignals defer;
  const OwnerId owner = detail::core(*this).device(device, "create_stream").owner();
  return Stream(std::make_unique<detail::StreamImpl>(detail::core(*this), owner));
}

namespace {
detail::StreamImpl& checked(detail::StreamImpl* impl, const detail::Mm& ctx, const char* call) {
  if (impl == nullptr) throw Error(Errc::invalid_argument, std::string(call) + ": the stream was moved from");
  if (&impl->ctx() != &ctx)
    throw Error(Errc::invalid_argument, std::string(call) + ": the stream belongs to another context");
  return *impl;
}
}  // namespace

std::future<MigrationResult> Context::migrate_to_device_async(Stream& stream, void* p, std::size_t bytes) {
  detail::DeferSignals defer;
  auto& s = checked(stream.impl_.get(), detail::core(*this), "migrate_to_device_async");
  detail::core(*this).ranges.resolve(p, bytes, "migrate_to_device_async");  // bad input throws here, nothing queued
  const OwnerId owner = s.device();
  return s.submit(std::packaged_task<MigrationResult()>(
      [ctx = &detail::core(*this), p, bytes, owner] {
        return detail::out_of_memory_as_error("migrate_to_device_async",
                                              [&] { return detail::migrate_to_device(*ctx, p, bytes, owner); });
      }));
}

std::future<MigrationResult> Context::migrate_to_host_async(Stream& stream, void* p, std::size_t bytes) {
  detail::DeferSignals defer;
  auto& s = checked(stream.impl_.get(), detail::core(*this), "migrate_to_host_async");
  detail::core(*this).ranges.resolve(p, bytes, "migrate_to_host_async");
  return s.submit(std::packaged_task<MigrationResult()>(
      [ctx = &detail::core(*this), p, bytes] {
        return detail::out_of_memory_as_error("migrate_to_host_async", [&] { return detail::migrate_to_host(*ctx, p, bytes); });
      }));
}

std::future<MigrationResult> Context::prefetch_async(Stream& stream, void* p, std::size_t bytes, Location to) {
  detail::DeferSignals defer;
  auto& s = checked(stream.impl_.get(), detail::core(*this), "prefetch_async");
  detail::check_prefetch_location(detail::core(*this), to, "prefetch_async");
  detail::core(*this).ranges.resolve(p, bytes, "prefetch_async");
  // The stream orders the work; the destination need not be its device.
  return s.submit(std::packaged_task<MigrationResult()>(
      [ctx = &detail::core(*this), p, bytes, to] {
        return detail::out_of_memory_as_error("prefetch_async", [&] { return detail::prefetch(*ctx, p, bytes, to); });
      }));
}

}  // namespace uhmm
