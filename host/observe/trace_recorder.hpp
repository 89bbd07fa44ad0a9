// UHMM_TRACE=<file>: a Chrome/Perfetto trace ("traceEvents" JSON, opened by
// ui.perfetto.dev and chrome://tracing) of migrations, faults and evictions,
// one track per thread. Events are kept compact in memory and written as JSON
// when the buffer grows large and when the recorder ends (Context teardown).
#pragma once

#include <array>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <vector>

#include "lock_order.hpp"

namespace uhmm::detail {

// One complete ("X") event. Names, categories and argument keys are string
// literals (never freed); an argument with a null key is unused.
struct TraceEvent {
  const char* name = nullptr;
  const char* category = nullptr;
  std::uint64_t start_ns = 0;
  std::uint64_t duration_ns = 0;
  std::uint32_t tid = 0;
  const char* result = nullptr;  // "ok", or why it failed; null: no result
  struct Arg {
    const char* key = nullptr;
    std::uint64_t value = 0;
    bool hex = false;  // addresses read better in hex
  };
  std::array<Arg, 4> args{};
};

class TraceRecorder {
 public:
  // Events buffered before they are written out.
  static constexpr std::size_t kFlushEvents = std::size_t{1} << 16;

  // Opens (truncates) `path`; throws uhmm::Error naming UHMM_TRACE if it cannot.
  explicit TraceRecorder(const std::string& path, std::size_t flush_events = kFlushEvents);
  ~TraceRecorder();  // writes what is buffered and closes the JSON document
  TraceRecorder(const TraceRecorder&) = delete;
  TraceRecorder& operator=(const TraceRecorder&) = delete;

  // Thread-safe and non-throwing (an event that cannot be stored is dropped
  // and counted). Fills in the calling thread's id.
  void record(TraceEvent event) noexcept;

 private:
  void write(const std::vector<TraceEvent>& events, const std::vector<std::pair<std::uint32_t, std::string>>& names);

  const std::string path_;
  const std::uint64_t origin_ns_;  // time 0 of the trace
  const int pid_;
  const std::size_t flush_events_;
  Ranked<std::mutex, LockRank::trace_buffer> mutex_;  // buffer_, new_threads_, known_threads_, dropped_
  std::vector<TraceEvent> buffer_;
  std::vector<std::pair<std::uint32_t, std::string>> new_threads_;  // (tid, name) not yet written
  std::vector<std::uint32_t> known_threads_;
  std::uint64_t dropped_ = 0;
  Ranked<std::mutex, LockRank::trace_file> file_mutex_;  // file_, first_
  std::FILE* file_ = nullptr;
  bool first_ = true;  // no event written yet (no comma before the next)
};

}  // namespace uhmm::detail
