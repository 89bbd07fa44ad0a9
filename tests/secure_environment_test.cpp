// UHMM_* variables in a file-capability program run by another user (issue 12
// item 14): the kernel marks it AT_SECURE, and the library must ignore
// UHMM_PLUGIN_DIR (which would load that user's shared object into it) and
// UHMM_TRACE (which would write a file of their choosing), saying so. Runs
// tests/secure_environment_probe.cpp through setcap and setpriv as nobody;
// skipped where that cannot be arranged (not root, no libcap2-bin, a nosuid
// mount, TSan, which cannot run a binary whose exec resets ASLR).
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace {

namespace fs = std::filesystem;

struct Outcome {
  int status = -1;
  std::string output;  // stdout and stderr
};

Outcome run(const std::string& command) {
  Outcome r;
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return r;
  std::array<char, 4096> buffer{};
  while (std::fgets(buffer.data(), buffer.size(), pipe) != nullptr) r.output += buffer.data();
  r.status = ::pclose(pipe);
  return r;
}

bool have(const char* tool) { return run(std::string("command -v ") + tool + " >/dev/null").status == 0; }

TEST(SecureEnvironment, AFileCapabilityProgramRunByAnotherUserIgnoresUhmmVariablesAndSaysSo) {
#if defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "TSan cannot run a program whose secure exec turns ASLR back on";
#endif
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (setcap, and a switch to another user)";
  if (!have("setcap") || !have("setpriv")) GTEST_SKIP() << "needs setcap (libcap2-bin) and setpriv (util-linux)";
  // The copy lives beside the probe: its run path (the build tree) stays valid.
  const fs::path probe = UHMM_SECURE_ENVIRONMENT_PROBE;
  const fs::path dir = probe.parent_path() / ("secure-env-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::permissions(dir, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                           fs::perms::others_read | fs::perms::others_exec);
  const fs::path copy = dir / "probe";
  fs::copy_file(probe, copy);
  const std::string as_nobody = "env ASAN_OPTIONS=detect_leaks=0 UHMM_PLUGIN_DIR=/home/someone/plugins "
                                "UHMM_TRACE=/home/someone/trace.json setpriv --reuid=65534 --regid=65534 "
                                "--clear-groups " + copy.string();

  // Without the capability the variables are read: the run itself works.
  const Outcome plain = run(as_nobody);
  if (plain.status != 0) {
    fs::remove_all(dir);
    GTEST_SKIP() << "nobody cannot run a program of the build tree here: " << plain.output;
  }
  EXPECT_NE(plain.output.find("plugin_dir=/home/someone/plugins\n"), std::string::npos) << plain.output;

  ASSERT_EQ(run("setcap cap_net_bind_service+ep " + copy.string()).status, 0);
  const Outcome secure = run(as_nobody);
  fs::remove_all(dir);
  ASSERT_EQ(secure.status, 0) << secure.output;
  if (secure.output.find("secure=1\n") == std::string::npos)
    GTEST_SKIP() << "file capabilities do not take effect here (nosuid mount?): " << secure.output;
  EXPECT_NE(secure.output.find("plugin_dir=\n"), std::string::npos) << secure.output;
  EXPECT_NE(secure.output.find("trace_path=\n"), std::string::npos) << secure.output;
  for (const char* name : {"UHMM_PLUGIN_DIR", "UHMM_TRACE"})
    EXPECT_NE(secure.output.find(std::string(name) + " is set but ignored"), std::string::npos) << secure.output;
}

}  // namespace
