// The default context and what the C API keeps beside it: the streams it
// created, each device's default stream, the prefetch history and the
// default managed_memory_resource. Created on first use; uhmmDeviceReset
// destroys it. Every C call holds it shared for its whole duration, so a
// reset waits for the calls in flight.
#pragma once

#include <memory>
#include <mutex>
#include <map>
#include <shared_mutex>
#include <vector>

#include "c_errors.hpp"
#include "c_stream.hpp"
#include "prefetch_history.hpp"
#include "uhmm/context.hpp"
#include "uhmm/managed_memory_resource.hpp"

namespace uhmm::interop {

struct DefaultSession {
  DefaultSession();
  ~DefaultSession();

  // The stream behind a handle: 0 is the current device's default stream;
  // null when `handle` is no live stream. Shared: a concurrent
  // uhmmStreamDestroy does not pull it from under its user.
  std::shared_ptr<uhmmStream_st> stream(uhmmStream_t handle);
  // Every live stream, the default ones included.
  std::vector<std::shared_ptr<uhmmStream_st>> all_streams();
  // The owner id of device ordinal `device`; throws CFailure(uhmmErrorInvalidDevice) otherwise.
  OwnerId owner_of(int device) const;

  Context context;
  std::mutex mutex;  // guards what follows
  std::map<uhmmStream_t, std::shared_ptr<uhmmStream_st>> streams;  // made by uhmmStreamCreate, not destroyed yet
  std::vector<std::shared_ptr<uhmmStream_st>> default_streams;      // per device, made on first use
  PrefetchHistory history;
  // Destroyed before the context: it frees its ranges there.
  std::unique_ptr<managed_memory_resource> resource;
};

// A C call's shared hold on the session, created first if needed (throws
// CFailure(uhmmErrorInitializationError) when it cannot start).
class SessionUse {
 public:
  SessionUse();
  DefaultSession* operator->() const noexcept { return session_; }
  DefaultSession& operator*() const noexcept { return *session_; }

 private:
  std::shared_lock<std::shared_mutex> lock_;
  DefaultSession* session_ = nullptr;
};

// Destroys the session, if there is one (uhmmDeviceReset).
void reset_default_session();

// The calling thread's current device ordinal (uhmmSetDevice).
int& current_device() noexcept;

}  // namespace uhmm::interop
