#include "default_state.hpp"

#include <fmt/format.h>

#include "uhmm/default_context.hpp"

namespace uhmm::interop {
namespace {

// Never destroyed: managed memory may be used (and freed) by static
// destructors that run after any destructor of ours would.
struct Lifetime {
  std::shared_mutex mutex;  // shared: a call in flight; exclusive: creating or resetting
  std::unique_ptr<DefaultSession> session;
};

Lifetime& lifetime() {
  static auto* const instance = new Lifetime;
  return *instance;
}

// The session, created if there is none; lifetime().mutex held exclusively.
DefaultSession& create_locked() {
  Lifetime& l = lifetime();
  if (!l.session) l.session = std::make_unique<DefaultSession>();
  return *l.session;
}

}  // namespace

DefaultSession::DefaultSession() : context(ContextOptions::from_environment()) {
  resource = std::make_unique<managed_memory_resource>(context);
}

DefaultSession::~DefaultSession() {
  // What the streams still run is waited for before the context goes.
  streams.clear();
  default_streams.clear();
  resource.reset();
}

std::shared_ptr<uhmmStream_st> DefaultSession::stream(uhmmStream_t handle) {
  std::lock_guard lock(mutex);
  if (handle != nullptr) {
    const auto it = streams.find(handle);
    return it != streams.end() ? it->second : nullptr;
  }
  const int device = current_device();
  if (default_streams.size() < context.device_count()) default_streams.resize(context.device_count());
  auto& slot = default_streams.at(static_cast<std::size_t>(device));
  if (!slot) slot = std::make_shared<uhmmStream_st>(context.create_stream(owner_of(device)));
  return slot;
}

std::vector<std::shared_ptr<uhmmStream_st>> DefaultSession::all_streams() {
  std::lock_guard lock(mutex);
  std::vector<std::shared_ptr<uhmmStream_st>> all;
  for (const auto& [handle, s] : streams) all.push_back(s);
  for (const auto& s : default_streams)
    if (s) all.push_back(s);
  return all;
}

OwnerId DefaultSession::owner_of(int device) const {
  if (device < 0 || static_cast<std::size_t>(device) >= context.device_count())
    throw CFailure(uhmmErrorInvalidDevice,
                   fmt::format("device {} does not exist (there are {})", device, context.device_count()));
  return context.device_owner(static_cast<std::size_t>(device));
}

SessionUse::SessionUse() {
  Lifetime& l = lifetime();
  lock_ = std::shared_lock(l.mutex);
  while (!l.session) {
    lock_.unlock();
    {
      std::unique_lock exclusive(l.mutex);
      try {
        create_locked();
      } catch (const Error& e) {
        throw CFailure(uhmmErrorInitializationError,
                       fmt::format("the default uhmm context could not start: {}", e.what()));
      }
    }
    lock_.lock();  // a reset may come between: look again
  }
  session_ = l.session.get();
}

void reset_default_session() {
  Lifetime& l = lifetime();
  std::unique_lock exclusive(l.mutex);
  l.session.reset();
}

int& current_device() noexcept {
  thread_local int device = 0;
  return device;
}

}  // namespace uhmm::interop

namespace uhmm {

namespace {
interop::DefaultSession& default_session() {
  interop::Lifetime& l = interop::lifetime();
  {
    std::shared_lock shared(l.mutex);
    if (l.session) return *l.session;
  }
  std::unique_lock exclusive(l.mutex);
  return interop::create_locked();
}
}  // namespace

Context& default_context() { return default_session().context; }
managed_memory_resource& default_managed_resource() { return *default_session().resource; }

}  // namespace uhmm
