// Driver-level and test hooks on a Context, kept out of the application API
// (uhmm/context.hpp, and the umbrella uhmm.hpp): a device's backend, and
// failures injected into its pool and copy engine. Installed, as migrate.hpp
// is, for drivers; defined in host/api/context.cpp.
#pragma once

#include "uhmm/backend.hpp"
#include "uhmm/export.hpp"
#include "uhmm/types.hpp"

namespace uhmm {

class Context;

namespace hooks {

// The backend of device `owner` (kNoOwner: the first), for driver-level work.
// Throws Errc::invalid_argument for an owner the context does not have.
UHMM_EXPORT Backend& backend(Context& ctx, OwnerId owner);
// Failures injected into owner's pool and copy engine (tests); an empty
// FaultInjection clears them. Throws Errc::invalid_argument as backend() does.
UHMM_EXPORT void inject_faults(Context& ctx, OwnerId owner, const FaultInjection& injection);

}  // namespace hooks
}  // namespace uhmm
