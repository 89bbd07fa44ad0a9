// The library's logger (spdlog), level from UHMM_LOG; costs a level check when off.
#pragma once

#include <spdlog/spdlog.h>

namespace uhmm::detail {

spdlog::logger& log();

}  // namespace uhmm::detail
