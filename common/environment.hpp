// Every read of a UHMM_* variable, with secure_getenv's rule: a process that
// runs with privileges it was not started with (setuid, setgid, file
// capabilities: the kernel's AT_SECURE) ignores them, because they name files
// it would load (UHMM_PLUGIN_DIR) or write (UHMM_TRACE) on behalf of the user
// who started it. An ignored variable is logged, so that it is not a mystery.
#pragma once

#include <string>

namespace uhmm::detail {

struct EnvironmentValue {
  const char* value = nullptr;  // nullptr: unset or ignored
  bool ignored = false;         // set, but the process is privileged
};

// Reads `name` and logs nothing (the logger reads UHMM_LOG through it).
EnvironmentValue read_environment(const char* name) noexcept;
// Reads `name`; a variable ignored is logged in one line.
const char* environment_variable(const char* name);
// The line an ignored variable is logged with.
std::string ignored_variable_message(const char* name);

// AT_SECURE (or what a test put in its place).
bool process_is_privileged() noexcept;
using PrivilegeCheck = bool (*)() noexcept;
// Tests: replaces the AT_SECURE check; nullptr puts it back.
void set_privilege_check_for_testing(PrivilegeCheck check) noexcept;

}  // namespace uhmm::detail
