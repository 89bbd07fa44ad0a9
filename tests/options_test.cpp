// ContextOptions::from_environment(): every UHMM_* variable is parsed (sizes
// with K/M/G, booleans in each accepted spelling, counts and their bounds), a
// malformed value is Errc::invalid_argument naming the variable, and a backend
// that is not on this machine fails Context construction with a clear error.
#include <dlfcn.h>
#include <unistd.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "uhmm/uhmm.hpp"

namespace {

using namespace uhmm;

constexpr std::size_t KiB = std::size_t{1} << 10;
constexpr std::size_t MiB = std::size_t{1} << 20;
constexpr std::size_t GiB = std::size_t{1} << 30;

const char* const kVariables[] = {"UHMM_BACKEND",       "UHMM_DEVICE_POOL",   "UHMM_DEVICES",
                                  "UHMM_FAULT_AHEAD",   "UHMM_FAULT_SPIN_US", "UHMM_CPU_COPY_THREADS", "UHMM_STATS",
                                  "UHMM_PLUGIN_DIR",
                                  "UHMM_FAULT_MODE",    "UHMM_PREFETCH_THRESHOLD", "UHMM_THRASHING",
                                  "UHMM_THRASHING_BOUNCES", "UHMM_THRASHING_WINDOW_MS", "UHMM_THRASHING_COOLDOWN_MS",
                                  "UHMM_THRASHING_PIN", "UHMM_THRASHING_THROTTLE_MS", "UHMM_LOG"};

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// Every test starts with no UHMM_* variable set and leaves the environment
// as it found it.
class OptionsTest : public testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : kVariables) {
      const char* v = std::getenv(name);
      saved_.emplace_back(name, v ? std::optional<std::string>(v) : std::nullopt);
      ::unsetenv(name);
    }
  }
  void TearDown() override {
    for (const auto& [name, value] : saved_) {
      if (value)
        ::setenv(name.c_str(), value->c_str(), 1);
      else
        ::unsetenv(name.c_str());
    }
  }

  static void set(const char* name, const std::string& value) { ASSERT_EQ(::setenv(name, value.c_str(), 1), 0); }

  // from_environment() with name=value must fail with invalid_argument naming
  // the variable and the value.
  static void expect_rejected(const char* name, const std::string& value) {
    SCOPED_TRACE(std::string(name) + "=\"" + value + "\"");
    set(name, value);
    try {
      (void)ContextOptions::from_environment();
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::invalid_argument) << e.what();
      const std::string what = e.what();
      EXPECT_NE(what.find(std::string(name) + "=" + value), std::string::npos)
          << "message does not name the variable and its value: " << what;
      EXPECT_NE(what.find("expected"), std::string::npos) << "message does not say what is expected: " << what;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not a uhmm::Error: " << e.what();
    }
    ::unsetenv(name);
  }

  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

TEST_F(OptionsTest, NoVariablesGiveTheDefaults) {
  const ContextOptions d;
  const ContextOptions o = ContextOptions::from_environment();
  EXPECT_EQ(o.backend, d.backend);
  EXPECT_EQ(o.device_pool_bytes, d.device_pool_bytes);
  EXPECT_EQ(o.devices, d.devices);
  EXPECT_EQ(o.fault_ahead, d.fault_ahead);
  EXPECT_EQ(o.fault_spin_us, d.fault_spin_us);
  EXPECT_EQ(o.cpu_copy_threads, d.cpu_copy_threads);
}

// ---- UHMM_DEVICE_POOL ----

TEST_F(OptionsTest, DevicePoolTakesBytesOrAKMGSuffixInEitherCase) {
  const std::pair<const char*, std::size_t> cases[] = {
      {"2097152", 2 * MiB}, {"2048K", 2 * MiB}, {"2048k", 2 * MiB}, {"4096K", 4 * MiB}, {"64M", 64 * MiB},
      {"64m", 64 * MiB},    {"3M", 3 * MiB},    {"1G", GiB},        {"1g", GiB},        {"16G", 16 * GiB},
      {"3000000", 3000000},
  };
  for (const auto& [text, bytes] : cases) {
    SCOPED_TRACE(text);
    set("UHMM_DEVICE_POOL", text);
    EXPECT_EQ(ContextOptions::from_environment().device_pool_bytes, bytes);
  }
  (void)KiB;
}

TEST_F(OptionsTest, DevicePoolMalformedIsInvalidArgumentNamingIt) {
  for (const char* bad : {"", "abc", "M", "64MB", "64 M", " 64M", "64M ", "-1M", "+4M", "1.5G", "0x200000", "4T",
                          "2M2", "99999999999999999999", "17179869184G"})
    expect_rejected("UHMM_DEVICE_POOL", bad);
}

TEST_F(OptionsTest, DevicePoolBelowOneChunkIsInvalidArgument) {
  for (const char* small : {"0", "0M", "4096", "1M", "2047K", "2097151"}) expect_rejected("UHMM_DEVICE_POOL", small);
}

// ---- UHMM_DEVICES ----

TEST_F(OptionsTest, DevicesTakesACountFromOneTo255) {
  for (unsigned n : {1u, 2u, 8u, 255u}) {
    set("UHMM_DEVICES", std::to_string(n));
    EXPECT_EQ(ContextOptions::from_environment().devices, n);
  }
}

TEST_F(OptionsTest, DevicesMalformedOrOutOfBoundsIsInvalidArgumentNamingIt) {
  for (const char* bad : {"", "0", "256", "-1", "two", "1.0", "1 ", "2x", "4294967297"})
    expect_rejected("UHMM_DEVICES", bad);
}

// ---- UHMM_FAULT_AHEAD ----

TEST_F(OptionsTest, FaultAheadAcceptsEveryDocumentedSpelling) {
  for (const char* yes : {"1", "on", "true", "yes"}) {
    SCOPED_TRACE(yes);
    set("UHMM_FAULT_AHEAD", yes);
    EXPECT_TRUE(ContextOptions::from_environment().fault_ahead);
  }
  for (const char* no : {"0", "off", "false", "no"}) {
    SCOPED_TRACE(no);
    set("UHMM_FAULT_AHEAD", no);
    EXPECT_FALSE(ContextOptions::from_environment().fault_ahead);  // the default is true
  }
}

TEST_F(OptionsTest, FaultAheadInOtherLetterCasesIsParsedRightOrRejectedClearly) {
  // Upper-case spellings are not documented; they must never be misread.
  const std::pair<const char*, bool> cases[] = {{"ON", true},   {"True", true},   {"YES", true},
                                                {"OFF", false}, {"False", false}, {"NO", false}};
  for (const auto& [text, value] : cases) {
    SCOPED_TRACE(text);
    set("UHMM_FAULT_AHEAD", text);
    try {
      EXPECT_EQ(ContextOptions::from_environment().fault_ahead, value);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::invalid_argument) << e.what();
      EXPECT_NE(std::string(e.what()).find("UHMM_FAULT_AHEAD"), std::string::npos) << e.what();
    }
  }
}

TEST_F(OptionsTest, FaultAheadMalformedIsInvalidArgumentNamingIt) {
  for (const char* bad : {"", "2", "-1", "maybe", "tru", "y", "n", "enable", " on", "on ", "yes please"})
    expect_rejected("UHMM_FAULT_AHEAD", bad);
}

// ---- UHMM_PREFETCH_THRESHOLD ----

TEST_F(OptionsTest, PrefetchThresholdTakesAPercentWithOrWithoutTheSign) {
  EXPECT_EQ(ContextOptions::from_environment().prefetch_threshold, 0u);  // default: the whole block
  const std::pair<const char*, unsigned> cases[] = {{"0", 0}, {"51", 51}, {"51%", 51}, {"100", 100}, {"100%", 100}};
  for (const auto& [text, value] : cases) {
    SCOPED_TRACE(text);
    set("UHMM_PREFETCH_THRESHOLD", text);
    EXPECT_EQ(ContextOptions::from_environment().prefetch_threshold, value);
  }
}

TEST_F(OptionsTest, PrefetchThresholdMalformedOrAbove100IsInvalidArgumentNamingIt) {
  for (const char* bad : {"", "%", "101", "101%", "-1", "51.5", "half", "51 %", " 51", "4294967347"})
    expect_rejected("UHMM_PREFETCH_THRESHOLD", bad);
}

// ---- UHMM_THRASHING* ----

TEST_F(OptionsTest, ThrashingKnobsParseWithinTheirRanges) {
  const ContextOptions d;
  EXPECT_TRUE(d.thrashing.enabled);
  set("UHMM_THRASHING", "off");
  set("UHMM_THRASHING_BOUNCES", "3");
  set("UHMM_THRASHING_WINDOW_MS", "1");
  set("UHMM_THRASHING_COOLDOWN_MS", "600000");
  set("UHMM_THRASHING_PIN", "0");
  set("UHMM_THRASHING_THROTTLE_MS", "1000");
  const ContextOptions o = ContextOptions::from_environment();
  EXPECT_FALSE(o.thrashing.enabled);
  EXPECT_EQ(o.thrashing.bounces, 3u);
  EXPECT_EQ(o.thrashing.window_ms, 1u);
  EXPECT_EQ(o.thrashing.cooldown_ms, 600000u);
  EXPECT_TRUE(d.thrashing.pin);
  EXPECT_FALSE(o.thrashing.pin);
  EXPECT_EQ(o.thrashing.throttle_ms, 1000u);
}

TEST_F(OptionsTest, ThrashingKnobsOutOfRangeOrMalformedAreInvalidArgumentNamingThem) {
  for (const char* bad : {"", "1", "65536", "-2", "eight", "8ms"}) expect_rejected("UHMM_THRASHING_BOUNCES", bad);
  for (const char* bad : {"", "0", "60001", "50ms", "1.5"}) expect_rejected("UHMM_THRASHING_WINDOW_MS", bad);
  for (const char* bad : {"", "0", "600001", "-1", "soon"}) expect_rejected("UHMM_THRASHING_COOLDOWN_MS", bad);
  for (const char* bad : {"", "2", "maybe"}) expect_rejected("UHMM_THRASHING", bad);
  for (const char* bad : {"", "2", "sometimes"}) expect_rejected("UHMM_THRASHING_PIN", bad);
  for (const char* bad : {"", "1001", "-1", "2ms"}) expect_rejected("UHMM_THRASHING_THROTTLE_MS", bad);
}

// ---- UHMM_FAULT_SPIN_US ----

TEST_F(OptionsTest, FaultSpinTakesMicrosecondsUpTo100000) {
  for (const unsigned us : {0u, 1u, 250u, 99999u, 100000u}) {
    set("UHMM_FAULT_SPIN_US", std::to_string(us));
    EXPECT_EQ(ContextOptions::from_environment().fault_spin_us, us);
  }
}

TEST_F(OptionsTest, FaultSpinMalformedOrTooLongIsInvalidArgumentNamingIt) {
  for (const char* bad : {"", "100001", "1000000", "-1", "1ms", "10us", "1e3", "18446744073709551616"})
    expect_rejected("UHMM_FAULT_SPIN_US", bad);
}

// ---- UHMM_DEVICE_POOL as a percentage ----

TEST_F(OptionsTest, DevicePoolTakesAPercentageOfFreeDeviceMemory) {
  for (const unsigned pct : {1u, 50u, 100u}) {
    set("UHMM_DEVICE_POOL", std::to_string(pct) + "%");
    const ContextOptions o = ContextOptions::from_environment();
    EXPECT_EQ(o.device_pool_percent, pct);
  }
  set("UHMM_DEVICE_POOL", "64M");
  const ContextOptions o = ContextOptions::from_environment();
  EXPECT_EQ(o.device_pool_percent, 0u);
  EXPECT_EQ(o.device_pool_bytes, 64 * MiB);
}

TEST_F(OptionsTest, DevicePoolPercentageOutOfBoundsOrMalformedIsInvalidArgumentNamingIt) {
  for (const char* bad : {"%", "0%", "101%", "-5%", "50%%", "half%", "5.5%"}) expect_rejected("UHMM_DEVICE_POOL", bad);
}

TEST_F(OptionsTest, CpuContextWithAPercentagePoolOpens) {
  set("UHMM_BACKEND", "cpu");
  set("UHMM_DEVICE_POOL", "1%");  // of the host's available memory on the cpu backend
  Context ctx;
  const std::uint64_t bytes = ctx.device_info(ctx.device_owner(0)).memory_bytes;
  EXPECT_GE(bytes, kChunkSize);
  EXPECT_EQ(bytes % kChunkSize, 0u);
}

// ---- UHMM_PLUGIN_DIR ----

TEST_F(OptionsTest, PluginDirTakesADirectory) {
  set("UHMM_PLUGIN_DIR", "/opt/uhmm/plugins");
  EXPECT_EQ(ContextOptions::from_environment().plugin_dir, "/opt/uhmm/plugins");
  expect_rejected("UHMM_PLUGIN_DIR", "");
}

// ---- UHMM_CPU_COPY_THREADS ----

TEST_F(OptionsTest, CpuCopyThreadsTakesACountFromOneTo64) {
  for (const unsigned n : {1u, 2u, 16u, 64u}) {
    set("UHMM_CPU_COPY_THREADS", std::to_string(n));
    EXPECT_EQ(ContextOptions::from_environment().cpu_copy_threads, n);
  }
}

TEST_F(OptionsTest, CpuCopyThreadsMalformedOrOutOfBoundsIsInvalidArgumentNamingIt) {
  for (const char* bad : {"", "0", "65", "1000", "-2", "four", "2.5"}) expect_rejected("UHMM_CPU_COPY_THREADS", bad);
}

// ---- UHMM_BACKEND ----

TEST_F(OptionsTest, BackendTakesEachKnownName) {
  for (const char* name : {"auto", "cpu", "cuda", "hip"}) {
    set("UHMM_BACKEND", name);
    EXPECT_EQ(ContextOptions::from_environment().backend, name);
  }
}

TEST_F(OptionsTest, FaultModeTakesEachKnownNameInEitherCase) {
  for (const auto& [text, mode] : {std::pair{"auto", "auto"}, std::pair{"userfaultfd", "userfaultfd"},
                                   std::pair{"signal", "signal"}, std::pair{"SIGNAL", "signal"}}) {
    set("UHMM_FAULT_MODE", text);
    EXPECT_EQ(ContextOptions::from_environment().fault_mode, mode);
  }
}

TEST_F(OptionsTest, FaultModeUnknownNameIsInvalidArgumentNamingIt) {
  for (const char* bad : {"", "uffd", "sigsegv", "signal "}) expect_rejected("UHMM_FAULT_MODE", bad);
}

TEST_F(OptionsTest, BackendUnknownNameIsInvalidArgumentNamingIt) {
  for (const char* bad : {"", "opencl", "gpu", "cpu ", "cpu,cuda", "vulkan"}) expect_rejected("UHMM_BACKEND", bad);
}

// ---- UHMM_LOG (the logger reads it; from_environment checks it) ----

TEST_F(OptionsTest, LogTakesEachLevelInEitherCase) {
  for (const char* level : {"trace", "debug", "info", "warn", "warning", "error", "err", "critical", "off", "WARN",
                            "Debug"}) {
    SCOPED_TRACE(level);
    set("UHMM_LOG", level);
    EXPECT_NO_THROW((void)ContextOptions::from_environment());
  }
}

TEST_F(OptionsTest, LogUnknownLevelIsInvalidArgumentNamingItAndTheLevels) {
  for (const char* bad : {"", "verbose", "warn ", "2", "of"}) expect_rejected("UHMM_LOG", bad);
  set("UHMM_LOG", "verbose");
  try {
    (void)ContextOptions::from_environment();
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    for (const char* level : {"trace", "debug", "info", "warn", "error", "critical", "off"})
      EXPECT_NE(std::string(e.what()).find(level), std::string::npos) << e.what();
  }
}

// ---- several at once ----

TEST_F(OptionsTest, AllVariablesTogether) {
  set("UHMM_BACKEND", "cpu");
  set("UHMM_DEVICE_POOL", "48M");
  set("UHMM_DEVICES", "3");
  set("UHMM_FAULT_AHEAD", "off");
  set("UHMM_FAULT_SPIN_US", "20");
  set("UHMM_CPU_COPY_THREADS", "2");
  const ContextOptions o = ContextOptions::from_environment();
  EXPECT_EQ(o.backend, "cpu");
  EXPECT_EQ(o.device_pool_bytes, 48 * MiB);
  EXPECT_EQ(o.devices, 3u);
  EXPECT_FALSE(o.fault_ahead);
  EXPECT_EQ(o.fault_spin_us, 20u);
  EXPECT_EQ(o.cpu_copy_threads, 2u);
}

TEST_F(OptionsTest, OneMalformedVariableAmongGoodOnesIsTheOneNamed) {
  set("UHMM_BACKEND", "cpu");
  set("UHMM_DEVICE_POOL", "32M");
  set("UHMM_FAULT_AHEAD", "yes");
  set("UHMM_CPU_COPY_THREADS", "2");
  expect_rejected("UHMM_DEVICES", "many");
  expect_rejected("UHMM_FAULT_SPIN_US", "soon");
}

// ---- Context() reads the environment ----

TEST_F(OptionsTest, DefaultContextUsesTheEnvironment) {
  set("UHMM_BACKEND", "cpu");
  set("UHMM_DEVICE_POOL", "4M");
  set("UHMM_DEVICES", "2");
  set("UHMM_FAULT_AHEAD", "0");
  Context ctx;
  ASSERT_EQ(ctx.device_count(), 2u);
  EXPECT_EQ(ctx.device_info(ctx.device_owner(1)).backend, "cpu");
  EXPECT_EQ(ctx.device_info(ctx.device_owner(0)).memory_bytes, 4 * MiB);

  // The 4 MiB pool is what limits a migration: half of 8 MiB fits.
  constexpr std::size_t kBytes = 8 * MiB;
  auto* w = static_cast<std::uint64_t*>(ctx.allocate(kBytes));
  for (std::size_t i = 0; i < kBytes / 8; ++i) w[i] = i * 3 + 1;
  const MigrationResult r = ctx.migrate_to_device(w, kBytes);
  EXPECT_EQ(r.pages, kBytes / kPageSize);
  EXPECT_EQ(r.migrated, 4 * MiB / kPageSize);
  EXPECT_EQ(r.failed, 4 * MiB / kPageSize);
  EXPECT_EQ(r.status.code, Errc::out_of_memory) << r.status.message;
  std::size_t bad = 0;
  for (std::size_t i = 0; i < kBytes / 8; ++i) bad += w[i] != i * 3 + 1;
  EXPECT_EQ(bad, 0u);
  ctx.free(w);
}

TEST_F(OptionsTest, DefaultContextWithAMalformedVariableThrowsNamingIt) {
  set("UHMM_BACKEND", "cpu");
  set("UHMM_DEVICE_POOL", "lots");
  try {
    Context ctx;
    ADD_FAILURE() << "constructed";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("UHMM_DEVICE_POOL"), std::string::npos) << e.what();
  }
}

// ---- backends that are not here ----

bool library_loads(const char* name) {
  void* h = ::dlopen(name, RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr) return false;
  ::dlclose(h);
  return true;
}

// Constructing the context must throw a uhmm::Error whose message names the backend.
void expect_backend_unavailable(const std::string& backend) {
  try {
    Context ctx;
    ADD_FAILURE() << "a context was created on backend " << backend << " (" << ctx.device_info(0).backend << ")";
  } catch (const Error& e) {
    EXPECT_NE(e.code(), Errc::ok);
    EXPECT_NE(lower(e.what()).find(backend), std::string::npos) << "message does not mention " << backend << ": "
                                                                 << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a uhmm::Error: " << e.what();
  }
}

TEST_F(OptionsTest, CudaBackendWithoutACudaDriverFailsWithAClearError) {
  if (library_loads("libcuda.so.1")) GTEST_SKIP() << "a CUDA driver is installed here";
  set("UHMM_BACKEND", "cuda");
  set("UHMM_DEVICE_POOL", "16M");
  expect_backend_unavailable("cuda");
}

TEST_F(OptionsTest, HipBackendWithoutAHipDeviceFailsWithAClearError) {
  // The HIP runtime may be installed (CI builds the hip plugin); a device needs /dev/kfd.
  if (::access("/dev/kfd", F_OK) == 0) GTEST_SKIP() << "an AMD GPU driver (/dev/kfd) is here";
  set("UHMM_BACKEND", "hip");
  set("UHMM_DEVICE_POOL", "16M");
  expect_backend_unavailable("hip");
}

TEST_F(OptionsTest, CudaBackendInExplicitOptionsFailsWithAClearError) {
  if (library_loads("libcuda.so.1")) GTEST_SKIP() << "a CUDA driver is installed here";
  ContextOptions o;
  o.backend = "cuda";
  o.device_pool_bytes = 16 * MiB;
  try {
    Context ctx(o);
    ADD_FAILURE() << "constructed";
  } catch (const Error& e) {
    EXPECT_NE(e.code(), Errc::ok);
    EXPECT_NE(lower(e.what()).find("cuda"), std::string::npos) << e.what();
  }
}

TEST_F(OptionsTest, UnknownBackendInExplicitOptionsIsInvalidArgument) {
  ContextOptions o;
  o.backend = "bogus";
  o.device_pool_bytes = 16 * MiB;
  try {
    Context ctx(o);
    ADD_FAILURE() << "constructed";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument) << e.what();
    EXPECT_NE(std::string(e.what()).find("bogus"), std::string::npos) << e.what();
  }
}

TEST_F(OptionsTest, ExplicitOptionsOutOfBoundsAreInvalidArgument) {
  ContextOptions o;
  o.backend = "cpu";
  o.device_pool_bytes = 16 * MiB;
  o.devices = 0;
  EXPECT_THROW(
      {
        try {
          Context ctx(o);
        } catch (const Error& e) {
          EXPECT_EQ(e.code(), Errc::invalid_argument) << e.what();
          throw;
        }
      },
      Error);
  o.devices = 1;
  o.device_pool_bytes = 0;
  EXPECT_THROW(
      {
        try {
          Context ctx(o);
        } catch (const Error& e) {
          EXPECT_EQ(e.code(), Errc::invalid_argument) << e.what();
          throw;
        }
      },
      Error);
}

}  // namespace

namespace uhmm {
namespace {

TEST(StatsOption, UhmmStatsPrintsEveryCounterWhenTheContextEnds) {
  ContextOptions o;
  o.backend = "cpu";
  o.device_pool_bytes = std::size_t{16} << 20;
  o.print_stats = true;
  ::testing::internal::CaptureStderr();
  {
    Context ctx(o);
    auto* p = static_cast<char*>(ctx.allocate(kPageSize));
    p[0] = 1;
    ctx.migrate_to_device(p, kPageSize);
  }
  const std::string out = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(out.find("pages_to_device"), std::string::npos) << out;
  EXPECT_NE(out.find("faults_zero_fill"), std::string::npos) << out;
  EXPECT_NE(out.find("pages_lost"), std::string::npos) << out;
}

}  // namespace
}  // namespace uhmm
