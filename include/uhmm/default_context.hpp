// The process-wide default context: the one the C API (uhmm/uhmm.h) and the
// default managed_memory_resource use, created on first use from the UHMM_*
// environment variables, as CUDA's primary context. It lives until the
// process exits, or until uhmmDeviceReset() destroys it (the next use creates
// a new one; references and managed memory from before are then invalid).
#pragma once

#include "uhmm/context.hpp"
#include "uhmm/export.hpp"

namespace uhmm {

// Throws uhmm::Error when the context cannot start (the next call tries again).
UHMM_EXPORT Context& default_context();

}  // namespace uhmm
