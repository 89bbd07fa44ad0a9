// TraceRecorder on its own: the file is one JSON document in the traceEvents
// format whatever the number of flushes, events from several threads land on
// their own tracks with a thread_name each, and a bad path is a clear error.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <pthread.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "latency_histogram.hpp"
#include "trace_recorder.hpp"
#include "uhmm/error.hpp"

namespace {

using uhmm::detail::TraceEvent;
using uhmm::detail::TraceRecorder;

std::string temp_path(const char* tag) {
  return testing::TempDir() + "uhmm_trace_" + tag + "_" + std::to_string(::getpid()) + ".json";
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);  // throws (failing the test) if malformed
}

TEST(TraceRecorder, ManyFlushesFromSeveralThreadsMakeOneWellFormedDocument) {
  const std::string path = temp_path("flush");
  constexpr int kThreads = 3, kEvents = 1000;
  {
    TraceRecorder trace(path, /*flush_events=*/64);  // many flushes, some racing each other
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([&trace, t] {
        ::pthread_setname_np(::pthread_self(), ("worker" + std::to_string(t)).c_str());
        for (int i = 0; i < kEvents; ++i)
          trace.record({.name = "migrate to host", .category = "migration", .start_ns = uhmm::detail::now_ns(),
                        .duration_ns = 1500, .result = "ok",
                        .args = {{{"address", 0x7f0000001000u + static_cast<unsigned>(i), true},
                                  {"pages", static_cast<std::uint64_t>(t)}}}});
      });
    for (auto& th : threads) th.join();
  }
  const nlohmann::json doc = read_json(path);
  ASSERT_TRUE(doc["traceEvents"].is_array());
  std::set<std::uint64_t> tids, named;
  std::size_t complete = 0;
  for (const auto& e : doc["traceEvents"]) {
    if (e["ph"] == "M") {
      EXPECT_EQ(e["name"], "thread_name");
      EXPECT_EQ(e["args"]["name"].get<std::string>().rfind("worker", 0), 0u);
      named.insert(e["tid"].get<std::uint64_t>());
      continue;
    }
    ASSERT_EQ(e["ph"], "X");
    ++complete;
    tids.insert(e["tid"].get<std::uint64_t>());
    EXPECT_EQ(e["name"], "migrate to host");
    EXPECT_EQ(e["cat"], "migration");
    EXPECT_DOUBLE_EQ(e["dur"].get<double>(), 1.5);  // microseconds
    EXPECT_GE(e["ts"].get<double>(), 0.0);
    EXPECT_EQ(e["pid"].get<int>(), ::getpid());
    EXPECT_EQ(e["args"]["result"], "ok");
    EXPECT_EQ(e["args"]["address"].get<std::string>().rfind("0x7f", 0), 0u);
    EXPECT_LT(e["args"]["pages"].get<int>(), kThreads);
  }
  EXPECT_EQ(complete, std::size_t{kThreads} * kEvents);
  EXPECT_EQ(tids.size(), std::size_t{kThreads});
  EXPECT_EQ(named, tids);
  EXPECT_EQ(doc["otherData"]["dropped_events"], 0);
  std::remove(path.c_str());
}

TEST(TraceRecorder, AnEmptyTraceIsStillAValidDocument) {
  const std::string path = temp_path("empty");
  { TraceRecorder trace(path); }
  const nlohmann::json doc = read_json(path);
  EXPECT_TRUE(doc["traceEvents"].is_array());
  EXPECT_TRUE(doc["traceEvents"].empty());
  std::remove(path.c_str());
}

TEST(TraceRecorder, AnUnwritablePathIsAnErrorNamingUhmmTrace) {
  try {
    TraceRecorder trace("/nonexistent-dir/trace.json");
    FAIL() << "opening a trace in a missing directory succeeded";
  } catch (const uhmm::Error& e) {
    EXPECT_EQ(e.code(), uhmm::Errc::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("UHMM_TRACE=/nonexistent-dir/trace.json"), std::string::npos) << e.what();
  }
}

TEST(LatencyHistogram, SamplesLandInTheirLog2BucketsAndPercentilesFollow) {
  uhmm::detail::AtomicLatencyHistogram h;
  EXPECT_EQ(h.bucket_of(0), 0u);
  EXPECT_EQ(h.bucket_of(1), 0u);
  EXPECT_EQ(h.bucket_of(2), 1u);
  EXPECT_EQ(h.bucket_of(1023), 9u);
  EXPECT_EQ(h.bucket_of(1024), 10u);
  EXPECT_EQ(h.bucket_of(~std::uint64_t{0}), uhmm::LatencyHistogram::kBuckets - 1);
  for (int i = 0; i < 90; ++i) h.record(1000);     // bucket 9: [512, 1024)
  for (int i = 0; i < 10; ++i) h.record(100000);   // bucket 16: [65536, 131072)
  const uhmm::LatencyHistogram s = h.snapshot();
  EXPECT_EQ(s.count(), 100u);
  EXPECT_DOUBLE_EQ(s.mean_ns(), (90 * 1000.0 + 10 * 100000.0) / 100);
  EXPECT_DOUBLE_EQ(s.percentile_ns(0.5), 1024.0);
  EXPECT_DOUBLE_EQ(s.percentile_ns(0.9), 1024.0);
  EXPECT_DOUBLE_EQ(s.percentile_ns(0.99), 131072.0);
  EXPECT_DOUBLE_EQ(uhmm::LatencyHistogram{}.percentile_ns(0.5), 0.0);
}

}  // namespace
