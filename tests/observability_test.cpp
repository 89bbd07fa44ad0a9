// What a Context reports about its work: latency histograms that count every
// fault by kind and every migration, copy time in the counters, the UHMM_STATS
// report, and the UHMM_TRACE file (parsed here: the events are present, of the
// right kinds and well formed).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <string>

#include "test_support.hpp"

namespace {

using namespace uhmm;
using test::cpu_options;
using test::MiB;

std::string temp_path(const char* tag) {
  return testing::TempDir() + "uhmm_ctx_trace_" + tag + "_" + std::to_string(::getpid()) + ".json";
}

// A small workload with every kind of event: first-touch faults, migrations
// each way, CPU faults on device pages, an eviction (migrate_device_range).
struct Workload {
  std::size_t blocks = 4;
  std::size_t pool = 32 * MiB;  // the context's device pool
  std::size_t bytes() const { return blocks * kBlockSize; }

  void run(Context& ctx) const {
    auto* p = static_cast<char*>(ctx.allocate(bytes()));
    for (std::size_t b = 0; b < blocks; ++b) p[b * kBlockSize] = 1;  // one zero-fill fault per block (fault-ahead)
    ctx.migrate_to_device(p, bytes());
    for (std::size_t b = 0; b < blocks / 2; ++b) {  // faults from the device
      const char v = static_cast<volatile char*>(p)[b * kBlockSize];
      EXPECT_EQ(v, 1);
    }
    ctx.migrate_to_host(p + bytes() / 2, kBlockSize);  // one block explicitly
    migrate_device_range(ctx, ctx.device_owner(), 0, pool / kPageSize);
    ctx.free(p);
  }
};

TEST(Latency, EveryFaultAndMigrationIsCountedInItsHistogram) {
  Context ctx(cpu_options(32 * MiB));
  const Workload w;
  w.run(ctx);
  const Counters c = ctx.counters();
  const Latencies l = ctx.latency();
  EXPECT_EQ(l.fault_zero_fill.count(), c.faults_zero_fill);
  // Signal mode opens never-touched pages: a first touch does not fault.
  const bool signal = std::strcmp(ctx.fault_mode(), "signal") == 0;
  EXPECT_EQ(l.fault_zero_fill.count(), signal ? 0u : w.blocks);
  EXPECT_EQ(l.fault_from_device.count(), c.faults_from_device);
  EXPECT_EQ(l.fault_from_device.count(), w.blocks / 2);
  EXPECT_EQ(l.fault_write_protect.count(), c.faults_write_protect);
  EXPECT_EQ(l.migrate_to_device.count(), 1u);
  // One per block brought back: two by faults, one explicit, one by eviction.
  EXPECT_EQ(l.migrate_to_host.count(), w.blocks);
  for (const LatencyHistogram* h : {&l.fault_zero_fill, &l.fault_from_device, &l.migrate_to_device, &l.migrate_to_host}) {
    if (h == &l.fault_zero_fill && signal) continue;
    EXPECT_GT(h->total_ns, 0u);
    EXPECT_LE(h->percentile_ns(0.5), h->percentile_ns(0.9));
    EXPECT_LE(h->percentile_ns(0.9), h->percentile_ns(0.99));
    EXPECT_GE(h->percentile_ns(1.0), h->mean_ns());  // the top bucket's upper edge bounds every sample
  }
}

TEST(Counters, CopyTimeIsCountedEachWay) {
  Context ctx(cpu_options(32 * MiB));
  void* p = ctx.allocate(4 * MiB);
  std::memset(p, 7, 4 * MiB);
  EXPECT_EQ(ctx.counters().copy_ns_to_device, 0u);
  ctx.migrate_to_device(p, 4 * MiB);
  EXPECT_GT(ctx.counters().copy_ns_to_device, 0u);
  EXPECT_EQ(ctx.counters().copy_ns_to_host, 0u);
  ctx.migrate_to_host(p, 4 * MiB);
  EXPECT_GT(ctx.counters().copy_ns_to_host, 0u);
  ctx.free(p);
}

TEST(Stats, UhmmStatsPrintsCountersAndLatencyPercentilesAtExit) {
  ContextOptions o = cpu_options(32 * MiB);
  o.print_stats = true;
  testing::internal::CaptureStderr();
  {
    Context ctx(o);
    Workload{}.run(ctx);
  }
  const std::string out = testing::internal::GetCapturedStderr();
  EXPECT_NE(out.find("uhmm counters:"), std::string::npos) << out;
  EXPECT_NE(out.find("copy_ns_to_device"), std::string::npos) << out;
  EXPECT_NE(out.find("uhmm latencies:"), std::string::npos) << out;
  EXPECT_NE(out.find("p99"), std::string::npos) << out;
  EXPECT_NE(out.find("fault_from_device"), std::string::npos) << out;
  EXPECT_NE(out.find("migrate_to_host"), std::string::npos) << out;
}

TEST(Trace, UhmmTraceWritesAPerfettoTraceOfFaultsMigrationsAndEvictions) {
  const std::string path = temp_path("workload");
  ASSERT_EQ(::setenv("UHMM_TRACE", path.c_str(), 1), 0);
  ContextOptions o = ContextOptions::from_environment();
  ::unsetenv("UHMM_TRACE");
  ASSERT_EQ(o.trace_path, path);
  o.backend = "cpu";
  o.device_pool_bytes = 32 * MiB;
  const Workload w;
  Counters c;
  {
    Context ctx(o);
    w.run(ctx);
    c = ctx.counters();
  }  // the trace is written here

  std::ifstream in(path);
  const nlohmann::json doc = nlohmann::json::parse(in);
  ASSERT_TRUE(doc["traceEvents"].is_array());
  std::map<std::string, std::size_t> by_name;
  bool fault_service_named = false;
  for (const auto& e : doc["traceEvents"]) {
    ASSERT_TRUE(e.contains("ph") && e.contains("name") && e.contains("pid") && e.contains("tid")) << e.dump();
    if (e["ph"] == "M") {
      fault_service_named = fault_service_named || e["args"].contains("name");
      continue;
    }
    ASSERT_EQ(e["ph"], "X") << e.dump();
    ASSERT_TRUE(e["ts"].is_number() && e["dur"].is_number() && e["cat"].is_string() && e["args"].is_object())
        << e.dump();
    EXPECT_GE(e["dur"].get<double>(), 0.0);
    const std::string name = e["name"];
    ++by_name[name];
    const std::string cat = e["cat"];
    if (cat == "fault") {
      ASSERT_TRUE(e["args"]["address"].is_string()) << e.dump();
      EXPECT_EQ(e["args"]["address"].get<std::string>().rfind("0x", 0), 0u);
    } else if (cat == "migration") {
      EXPECT_TRUE(e["args"]["pages"].is_number() && e["args"]["bytes"].is_number()) << e.dump();
      EXPECT_EQ(e["args"]["result"], "ok") << e.dump();
      if (name == "migrate to device") {
        EXPECT_EQ(e["args"]["pages"], w.bytes() / kPageSize);
        EXPECT_EQ(e["args"]["bytes"], w.bytes());
      }
    } else {
      EXPECT_EQ(cat, "eviction") << e.dump();
      EXPECT_EQ(e["args"]["migrated"], kPagesPerBlock);  // the one block still on the device
    }
  }
  EXPECT_TRUE(fault_service_named);
  EXPECT_EQ(by_name["fault zero-fill"], c.faults_zero_fill);
  EXPECT_EQ(by_name["fault from device"], c.faults_from_device);
  EXPECT_EQ(by_name["migrate to device"], 1u);
  EXPECT_EQ(by_name["migrate to host"], w.blocks);
  EXPECT_EQ(by_name["evict"], 1u);
  std::remove(path.c_str());
}

TEST(Trace, AnUnwritableTracePathFailsContextCreationWithAClearError) {
  ContextOptions o = cpu_options(8 * MiB);
  o.trace_path = "/nonexistent-dir/uhmm.json";
  try {
    Context ctx(o);
    FAIL() << "a context with an unwritable trace path was created";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("UHMM_TRACE"), std::string::npos) << e.what();
  }
}

}  // namespace
