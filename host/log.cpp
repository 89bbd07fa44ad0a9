// The library's logger: spdlog to stderr, level from UHMM_LOG (default warn).
#include "uhmm/detail/log.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>

namespace uhmm::detail {

spdlog::logger& log() {
  static const std::shared_ptr<spdlog::logger> logger = [] {
    auto l = spdlog::stderr_color_mt("uhmm");
    l->set_pattern("[uhmm %l] %v");
    const char* level = std::getenv("UHMM_LOG");
    l->set_level(level != nullptr ? spdlog::level::from_str(level) : spdlog::level::warn);
    return l;
  }();
  return *logger;
}

}  // namespace uhmm::detail
