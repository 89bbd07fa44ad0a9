#include "trace_recorder.hpp"

#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "latency_histogram.hpp"
#include "uhmm/detail/log.hpp"
#include "uhmm/error.hpp"

namespace uhmm::detail {
namespace {

std::uint32_t current_tid() noexcept {
  thread_local const auto tid = static_cast<std::uint32_t>(::syscall(SYS_gettid));
  return tid;
}

std::string thread_name() {
  char name[64] = {};
  if (::pthread_getname_np(::pthread_self(), name, sizeof name) != 0 || name[0] == '\0') return "thread";
  return name;
}

// Names and results are literals of ours, but escape anyway: the file must parse.
std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\', out += c;
    else if (static_cast<unsigned char>(c) < 0x20) out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
    else out += c;
  }
  return out + "\"";
}

}  // namespace

TraceRecorder::TraceRecorder(const std::string& path, std::size_t flush_events)
    : path_(path), origin_ns_(now_ns()), pid_(static_cast<int>(::getpid())), flush_events_(flush_events) {
  file_ = std::fopen(path.c_str(), "w");
  if (file_ == nullptr)
    throw Error(Errc::invalid_argument,
                fmt::format("UHMM_TRACE={}: cannot open the trace file: {}", path, std::strerror(errno)));
  std::fputs("{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n", file_);
  buffer_.reserve(1024);
}

TraceRecorder::~TraceRecorder() {
  std::vector<TraceEvent> events;
  std::vector<std::pair<std::uint32_t, std::string>> names;
  std::uint64_t dropped = 0;
  {
    std::lock_guard lock(mutex_);
    events.swap(buffer_);
    names.swap(new_threads_);
    dropped = dropped_;
  }
  try {
    write(events, names);
  } catch (const std::exception& e) {
    log().error("trace {}: {}", path_, e.what());
  }
  std::lock_guard lock(file_mutex_);
  std::fprintf(file_, "\n],\"otherData\":{\"producer\":\"uhmm\",\"dropped_events\":%llu}}\n",
               static_cast<unsigned long long>(dropped));
  if (std::fclose(file_) != 0) log().error("trace {}: closing failed: {}", path_, std::strerror(errno));
}

void TraceRecorder::record(TraceEvent event) noexcept {
  event.tid = current_tid();
  std::vector<TraceEvent> full;
  std::vector<std::pair<std::uint32_t, std::string>> names;
  try {
    {
      std::lock_guard lock(mutex_);
      if (std::find(known_threads_.begin(), known_threads_.end(), event.tid) == known_threads_.end()) {
        known_threads_.push_back(event.tid);
        new_threads_.emplace_back(event.tid, thread_name());
      }
      buffer_.push_back(event);
      if (buffer_.size() < flush_events_) return;
      full.swap(buffer_);
      names.swap(new_threads_);
    }
    // Written outside the buffer's lock: other threads go on recording.
    write(full, names);
  } catch (const std::exception&) {
    std::lock_guard lock(mutex_);
    dropped_ += full.empty() ? 1 : full.size();
  }
}

void TraceRecorder::write(const std::vector<TraceEvent>& events,
                          const std::vector<std::pair<std::uint32_t, std::string>>& names) {
  std::string out;
  out.reserve(events.size() * 200 + names.size() * 100);
  bool first;
  std::lock_guard lock(file_mutex_);
  first = first_;
  auto comma = [&] {
    if (!first) out += ",\n";
    first = false;
  };
  for (const auto& [tid, name] : names) {
    comma();
    out += fmt::format(R"({{"ph":"M","name":"thread_name","pid":{},"tid":{},"args":{{"name":{}}}}})", pid_, tid,
                       json_string(name));
  }
  for (const TraceEvent& e : events) {
    comma();
    // Chrome's ts and dur are microseconds; fractions keep the nanoseconds.
    const std::uint64_t start = e.start_ns >= origin_ns_ ? e.start_ns - origin_ns_ : 0;
    out += fmt::format(R"({{"ph":"X","name":{},"cat":{},"pid":{},"tid":{},"ts":{}.{:03},"dur":{}.{:03},"args":{{)",
                       json_string(e.name), json_string(e.category), pid_, e.tid, start / 1000, start % 1000,
                       e.duration_ns / 1000, e.duration_ns % 1000);
    bool first_arg = true;
    for (const TraceEvent::Arg& a : e.args) {
      if (a.key == nullptr) continue;
      if (!first_arg) out += ',';
      first_arg = false;
      out += a.hex ? fmt::format(R"({}:"{:#x}")", json_string(a.key), a.value)
                   : fmt::format("{}:{}", json_string(a.key), a.value);
    }
    if (e.result != nullptr) out += fmt::format(R"({}"result":{})", first_arg ? "" : ",", json_string(e.result));
    out += "}}";
  }
  if (std::fwrite(out.data(), 1, out.size(), file_) != out.size())
    log().error("trace {}: write failed: {}", path_, std::strerror(errno));
  first_ = first;
}

}  // namespace uhmm::detail
