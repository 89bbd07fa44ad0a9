// UHMM_* variables in a process that runs with privileges it was not started
// with (common/environment.hpp): ignored, each with a log line, as glibc's
// secure_getenv ignores the environment there. The AT_SECURE check is replaced
// by one the test sets; tests/secure_environment_test.cpp runs the real thing.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "environment.hpp"
#include "uhmm/context.hpp"

namespace {

using namespace uhmm;
using namespace uhmm::detail;

bool privileged() noexcept { return true; }

class SecureEnvironmentReader : public testing::Test {
 protected:
  void SetUp() override {
    ::setenv("UHMM_PLUGIN_DIR", "/home/someone/evil", 1);
    ::setenv("UHMM_TRACE", "/etc/passwd", 1);
    ::setenv("UHMM_DEVICES", "not a number", 1);  // not even parsed
  }
  void TearDown() override {
    set_privilege_check_for_testing(nullptr);
    for (const char* name : {"UHMM_PLUGIN_DIR", "UHMM_TRACE", "UHMM_DEVICES"}) ::unsetenv(name);
  }
};

TEST_F(SecureEnvironmentReader, AnUnprivilegedProcessReadsItsVariables) {
  EXPECT_FALSE(process_is_privileged());  // the test runs without setuid or file capabilities
  EXPECT_STREQ(environment_variable("UHMM_PLUGIN_DIR"), "/home/someone/evil");
  EXPECT_THROW((void)ContextOptions::from_environment(), Error);  // UHMM_DEVICES is parsed, and malformed
}

TEST_F(SecureEnvironmentReader, APrivilegedProcessIgnoresEveryVariableSayingSoInOneLineEach) {
  set_privilege_check_for_testing(&privileged);
  const ContextOptions defaults;
  testing::internal::CaptureStderr();
  const ContextOptions o = ContextOptions::from_environment();
  const std::string logged = testing::internal::GetCapturedStderr();
  EXPECT_EQ(o.plugin_dir, defaults.plugin_dir);
  EXPECT_EQ(o.trace_path, defaults.trace_path);
  EXPECT_EQ(o.devices, defaults.devices);
  for (const char* name : {"UHMM_PLUGIN_DIR", "UHMM_TRACE", "UHMM_DEVICES"})
    EXPECT_NE(logged.find(ignored_variable_message(name)), std::string::npos) << name << " not in: " << logged;

  const EnvironmentValue v = read_environment("UHMM_PLUGIN_DIR");
  EXPECT_EQ(v.value, nullptr);
  EXPECT_TRUE(v.ignored);
  EXPECT_FALSE(read_environment("UHMM_NO_SUCH_VARIABLE").ignored);  // unset: nothing to ignore
}

}  // namespace
