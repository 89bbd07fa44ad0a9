#include "environment.hpp"

#include <sys/auxv.h>

#include <atomic>
#include <cstdlib>

#include <fmt/format.h>

#include "uhmm/detail/log.hpp"

namespace uhmm::detail {
namespace {

bool at_secure() noexcept { return ::getauxval(AT_SECURE) != 0; }

std::atomic<PrivilegeCheck> privilege_check{&at_secure};

}  // namespace

bool process_is_privileged() noexcept { return privilege_check.load(std::memory_order_relaxed)(); }

void set_privilege_check_for_testing(PrivilegeCheck check) noexcept {
  privilege_check.store(check != nullptr ? check : &at_secure, std::memory_order_relaxed);
}

EnvironmentValue read_environment(const char* name) noexcept {
  const char* value = std::getenv(name);
  if (value == nullptr) return {};
  if (process_is_privileged()) return {nullptr, true};
  return {value, false};
}

const char* environment_variable(const char* name) {
  const EnvironmentValue v = read_environment(name);
  if (v.ignored) log().warn("{}", ignored_variable_message(name));
  return v.value;
}

std::string ignored_variable_message(const char* name) {
  return fmt::format("{} is set but ignored: this process runs with privileges it was not started with (setuid, "
                     "setgid or file capabilities)",
                     name);
}

}  // namespace uhmm::detail
