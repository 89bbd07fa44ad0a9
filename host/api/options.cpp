// ContextOptions from UHMM_* environment variables: one table, sizes with
// K/M/G suffixes, a clear error naming the variable for a malformed value. A
// privileged process ignores them all (environment.hpp).
#include <cctype>
#include <charconv>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "environment.hpp"
#include "uhmm/context.hpp"
#include "uhmm/detail/log.hpp"

namespace uhmm {
namespace {

[[noreturn]] void bad(std::string_view var, std::string_view value, std::string_view expected) {
  throw Error(Errc::invalid_argument, fmt::format("{}={}: expected {}", var, value, expected));
}

// Parses `digits` (the value, or the value less a suffix); errors quote the whole value.
std::uint64_t parse_unsigned(std::string_view var, std::string_view value, std::string_view expected,
                             std::string_view digits) {
  std::uint64_t v = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  if (ec != std::errc() || end != digits.data() + digits.size()) bad(var, value, expected);
  return v;
}

std::uint64_t parse_unsigned(std::string_view var, std::string_view value, std::string_view expected) {
  return parse_unsigned(var, value, expected, value);
}

unsigned parse_bounded(std::string_view var, std::string_view value, std::uint64_t lo, std::uint64_t hi,
                       std::string_view expected) {
  const std::uint64_t v = parse_unsigned(var, value, expected);
  if (v < lo || v > hi) bad(var, value, expected);
  return static_cast<unsigned>(v);
}

std::size_t parse_size(std::string_view var, std::string_view value) {
  constexpr std::string_view expected = "a size in bytes with an optional K, M or G suffix (e.g. 512M)";
  if (value.empty()) bad(var, value, expected);
  unsigned shift = 0;
  switch (std::toupper(static_cast<unsigned char>(value.back()))) {
    case 'K': shift = 10; break;
    case 'M': shift = 20; break;
    case 'G': shift = 30; break;
    default: break;
  }
  std::string_view digits = value;
  if (shift != 0) digits.remove_suffix(1);
  const std::uint64_t v = parse_unsigned(var, value, expected, digits);
  if (v > (~std::uint64_t{0} >> shift)) bad(var, value, expected);
  return static_cast<std::size_t>(v << shift);
}

std::string lower(std::string_view value) {
  std::string out(value);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool parse_bool(std::string_view var, std::string_view raw) {
  const std::string value = lower(raw);
  if (value == "1" || value == "on" || value == "true" || value == "yes") return true;
  if (value == "0" || value == "off" || value == "false" || value == "no") return false;
  bad(var, raw, "1/0, on/off, true/false or yes/no");
}

struct Option {
  const char* name;
  void (*apply)(ContextOptions&, std::string_view name, std::string_view value);
};

const Option kOptions[] = {
    {"UHMM_BACKEND",
     [](ContextOptions& o, std::string_view n, std::string_view v) {
       const std::string name = lower(v);
       // "emulated" (not advertised): tests' GPU plugin on the emulated runtime (driver/gpu/emulated/).
       if (name != "auto" && name != "cpu" && name != "cuda" && name != "hip" && name != "emulated")
         bad(n, v, "auto, cpu, cuda or hip");
       o.backend = name;
     }},
    {"UHMM_DEVICE_POOL",
     [](ContextOptions& o, std::string_view n, std::string_view v) {
       // "50%": a share of the device's free memory, sized when the device opens.
       if (!v.empty() && v.back() == '%') {
         constexpr std::string_view expected = "a percentage of free device memory from 1% to 100%";
         const auto pct = parse_unsigned(n, v, expected, v.substr(0, v.size() - 1));
         if (pct < 1 || pct > 100) bad(n, v, expected);
         o.device_pool_percent = static_cast<unsigned>(pct);
         return;
       }
       o.device_pool_bytes = parse_size(n, v);
       if (o.device_pool_bytes < kChunkSize) bad(n, v, "at least 2M (one chunk)");
       o.device_pool_percent = 0;
     }},
    {"UHMM_DEVICES",
     [](ContextOptions& o, std::string_view n, std::string_view v) {
       const auto d = parse_unsigned(n, v, "a device count from 1 to 255");
       if (d < 1 || d > 255) bad(n, v, "a device count from 1 to 255");
       o.devices = static_cast<unsigned>(d);
     }},
    {"UHMM_EVICT", [](ContextOptions& o, std::string_view n, std::string_view v) { o.evict = parse_bool(n, v); }},
    {"UHMM_PLUGIN_DIR",
     [](ContextOptions& o, std::string_view n, std::string_view v) {
       if (v.empty()) bad(n, v, "a directory holding libuhmm-backend-<name>.so");
       o.plugin_dir = std::string(v);
     }},
    {"UHMM_LOG",
     [](ContextOptions&, std::string_view n, std::string_view v) {
       // The logger reads it for the whole process; checked here so that a
       // typo is an error, not silence.
       if (!detail::parse_log_level(v)) bad(n, v, detail::kLogLevels);
     }},
    {"UHMM_TRACE", [](ContextOptions& o, std::string_view, std::string_view v) { o.trace_path = v; }},
    {"UHMM_STATS", [](ContextOptions& o, std::string_view n, std::string_view v) { o.print_stats = parse_bool(n, v); }},
    {"UHMM_FAULT_AHEAD", [](ContextOptions& o, std::string_view n, std::string_view v) { o.fault_ahead = parse_bool(n, v); }},
    {"UHMM_PREFETCH_THRESHOLD",
     [](ContextOptions& o, std::string_view n, std::string_view v) {
       std::string_view digits = v;
       if (!digits.empty() && digits.back() == '%') digits.remove_suffix(1);
       constexpr std::string_view expected = "a percent from 0 to 100 (e.g. 51 or 51%)";
       const auto pct = parse_unsigned(n, v, expected, digits);
       if (pct > 100) bad(n, v, expected);
       o.prefetch_threshold = static_cast<unsigned>(pct);
     }},
    {"UHMM_THRASHING",
     [](ContextOptions& o, std::string_view n, std::string_view v) { o.thrashing.enabled = parse_bool(n, v); }},
    {"UHMM_THRASHING_BOUNCES",
     [](ContextOptions& o, std::string_view n, std::string_view v) {
       o.thrashing.bounces = parse_bounded(n, v, 2, 65535, "a bounce count from 2 to 65535");
     }},
    {"UHMM_THRASHING_WINDOW_MS",
     [](ContextOptions& o, std::string_view n, std::string_view v) {
       o.thrashing.window_ms = parse_bounded(n, v, 1, 60000, "milliseconds from 1 to 60000");
     }},
    {"UHMM_THRASHING_COOLDOWN_MS",
     [](ContextOptions& o, std::string_view n, std::string_view v) {
       o.thrashing.cooldown_ms = parse_bounded(n, v, 1, 600000, "milliseconds from 1 to 600000");
     }},
    {"UHMM_THRASHING_PIN",
     [](ContextOptions& o, std::string_view n, std::string_view v) { o.thrashing.pin = parse_bool(n, v); }},
    {"UHMM_THRASHING_THROTTLE_MS",
     [](ContextOptions& o, std::string_view n, std::string_view v) {
       o.thrashing.throttle_ms = parse_bounded(n, v, 0, 1000, "milliseconds from 0 to 1000");
     }},
    {"UHMM_FAULT_SPIN_US",
     [](ContextOptions& o, std::string_view n, std::string_view v) {
       const auto us = parse_unsigned(n, v, "microseconds from 0 to 100000");
       if (us > 100000) bad(n, v, "microseconds from 0 to 100000");
       o.fault_spin_us = static_cast<unsigned>(us);
     }},
    {"UHMM_FAULT_MODE",
     [](ContextOptions& o, std::string_view n, std::string_view v) {
       const std::string mode = lower(v);
       if (mode != "auto" && mode != "userfaultfd" && mode != "signal") bad(n, v, "auto, userfaultfd or signal");
       o.fault_mode = mode;
     }},
    {"UHMM_CPU_COPY_THREADS",
     [](ContextOptions& o, std::string_view n, std::string_view v) {
       const auto t = parse_unsigned(n, v, "a thread count from 1 to 64");
       if (t < 1 || t > 64) bad(n, v, "a thread count from 1 to 64");
       o.cpu_copy_threads = static_cast<unsigned>(t);
     }},
};

}  // namespace

ContextOptions ContextOptions::from_environment() {
  ContextOptions o;
  for (const Option& opt : kOptions)
    if (const char* v = detail::environment_variable(opt.name); v != nullptr) opt.apply(o, opt.name, v);
  return o;
}

}  // namespace uhmm
