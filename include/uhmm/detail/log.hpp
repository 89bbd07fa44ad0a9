// The library's logger (spdlog), level from UHMM_LOG; costs a level check when off.
#pragma once

#include <optional>
#include <string_view>

#include <spdlog/spdlog.h>

namespace uhmm::detail {

spdlog::logger& log();

// The levels UHMM_LOG accepts, in any letter case (also "warning" and "err").
inline constexpr std::string_view kLogLevels = "trace, debug, info, warn, error, critical or off";
// The level UHMM_LOG=name selects; nullopt for a name that is none of them.
std::optional<spdlog::level::level_enum> parse_log_level(std::string_view name);

}  // namespace uhmm::detail
