// The C API's streams and devices, over the default context.
#include <fmt/format.h>

#include "c_errors.hpp"
#include "default_state.hpp"

using namespace uhmm;
using namespace uhmm::interop;

void uhmmStream_st::harvest(std::future<MigrationResult>& result) {
  uhmmError_t error = uhmmSuccess;
  std::string message;
  try {
    const MigrationResult r = result.get();
    if (!r.status) {
      error = to_c_error(r.status.code);
      message = fmt::format("a prefetch left {} of {} pages where they were: {}", r.failed, r.pages, r.status.message);
    }
  } catch (const Error& e) {
    error = to_c_error(e.code());
    message = e.what();
  } catch (const std::exception& e) {
    error = uhmmErrorUnknown;
    message = e.what();
  }
  if (error != uhmmSuccess && first_error_ == uhmmSuccess) {
    first_error_ = error;
    first_message_ = std::move(message);
  }
}

void uhmmStream_st::submit(std::future<MigrationResult> result) {
  std::lock_guard lock(mutex_);
  // What has finished is folded in now: a stream never synchronized does not grow.
  std::erase_if(pending_, [&](std::future<MigrationResult>& f) {
    if (f.wait_for(std::chrono::seconds(0)) != std::future_status::ready) return false;
    harvest(f);
    return true;
  });
  pending_.push_back(std::move(result));
}

uhmmError_t uhmmStream_st::synchronize() {
  stream.synchronize();
  std::lock_guard lock(mutex_);
  for (auto& f : pending_) harvest(f);
  pending_.clear();
  const uhmmError_t error = first_error_;
  first_error_ = uhmmSuccess;
  return error == uhmmSuccess ? uhmmSuccess : fail(error, first_message_.c_str());
}

namespace {

std::shared_ptr<uhmmStream_st> live_stream(DefaultSession& s, uhmmStream_t handle, const char* call) {
  auto stream = s.stream(handle);
  if (!stream) throw CFailure(uhmmErrorInvalidResourceHandle, fmt::format("{}: no such stream", call));
  return stream;
}

}  // namespace

extern "C" {

uhmmError_t uhmmStreamCreate(uhmmStream_t* stream) {
  return c_call([&] {
    if (stream == nullptr) return fail(uhmmErrorInvalidValue, "uhmmStreamCreate: stream is null");
    SessionUse s;
    auto created = std::make_shared<uhmmStream_st>(s->context.create_stream(s->owner_of(current_device())));
    std::lock_guard lock(s->mutex);
    s->streams.emplace(created.get(), created);
    *stream = created.get();
    return uhmmSuccess;
  });
}

uhmmError_t uhmmStreamDestroy(uhmmStream_t stream) {
  return c_call([&] {
    if (stream == nullptr) return fail(uhmmErrorInvalidResourceHandle, "uhmmStreamDestroy: the default stream stays");
    SessionUse s;
    std::shared_ptr<uhmmStream_st> doomed;
    {
      std::lock_guard lock(s->mutex);
      const auto it = s->streams.find(stream);
      if (it == s->streams.end()) return fail(uhmmErrorInvalidResourceHandle, "uhmmStreamDestroy: no such stream");
      doomed = std::move(it->second);
      s->streams.erase(it);
    }
    return doomed->synchronize();  // its failures are the caller's to hear of; then it goes
  });
}

uhmmError_t uhmmStreamSynchronize(uhmmStream_t stream) {
  return c_call([&] {
    SessionUse s;
    return live_stream(*s, stream, "uhmmStreamSynchronize")->synchronize();
  });
}

uhmmError_t uhmmDeviceSynchronize(void) {
  return c_call([&] {
    SessionUse s;
    uhmmError_t first = uhmmSuccess;
    for (const auto& stream : s->all_streams())
      if (const uhmmError_t e = stream->synchronize(); first == uhmmSuccess) first = e;
    return first;  // recorded, with its message, by the stream that failed
  });
}

uhmmError_t uhmmDeviceReset(void) {
  return c_call([&] {
    reset_default_session();
    return uhmmSuccess;
  });
}

uhmmError_t uhmmGetDeviceCount(int* count) {
  return c_call([&] {
    if (count == nullptr) return fail(uhmmErrorInvalidValue, "uhmmGetDeviceCount: count is null");
    SessionUse s;
    *count = static_cast<int>(s->context.device_count());
    return uhmmSuccess;
  });
}

uhmmError_t uhmmSetDevice(int device) {
  return c_call([&] {
    SessionUse s;
    s->owner_of(device);  // checks that it exists
    current_device() = device;
    return uhmmSuccess;
  });
}

uhmmError_t uhmmGetDevice(int* device) {
  return c_call([&] {
    if (device == nullptr) return fail(uhmmErrorInvalidValue, "uhmmGetDevice: device is null");
    *device = current_device();
    return uhmmSuccess;
  });
}

}  // extern "C"
