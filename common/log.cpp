// The library's logger: spdlog to stderr, level from UHMM_LOG (default warn).
#include "uhmm/detail/log.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <algorithm>
#include <cctype>
#include <string>
#include <utility>

#include "environment.hpp"

namespace uhmm::detail {

std::optional<spdlog::level::level_enum> parse_log_level(std::string_view name) {
  using spdlog::level::level_enum;
  static constexpr std::pair<std::string_view, level_enum> kNames[] = {
      {"trace", level_enum::trace}, {"debug", level_enum::debug}, {"info", level_enum::info},
      {"warn", level_enum::warn},   {"warning", level_enum::warn}, {"error", level_enum::err},
      {"err", level_enum::err},     {"critical", level_enum::critical}, {"off", level_enum::off}};
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const auto& [text, level] : kNames)
    if (lower == text) return level;
  return std::nullopt;
}

spdlog::logger& log() {
  static const std::shared_ptr<spdlog::logger> logger = [] {
    auto l = spdlog::stderr_color_mt("uhmm");
    l->set_pattern("[uhmm %l] %v");
    const EnvironmentValue level = read_environment("UHMM_LOG");
    const auto parsed = level.value != nullptr ? parse_log_level(level.value) : spdlog::level::warn;
    // An unknown level logs at the default rather than not at all: a typo
    // must not hide a poisoned page (ContextOptions::from_environment rejects it).
    l->set_level(parsed.value_or(spdlog::level::warn));
    if (!parsed) l->warn("UHMM_LOG={}: expected {}; logging at warn", level.value, kLogLevels);
    if (level.ignored) l->warn("{}", ignored_variable_message("UHMM_LOG"));
    return l;
  }();
  return *logger;
}

}  // namespace uhmm::detail
