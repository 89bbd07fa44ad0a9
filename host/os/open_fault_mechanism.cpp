// Chooses the fault mechanism of a context (ContextOptions::fault_mode).
#include <fmt/format.h>

#include "signal_mechanism.hpp"
#include "uhmm/detail/log.hpp"
#include "uhmm/error.hpp"
#include "userfaultfd_mechanism.hpp"

namespace uhmm::detail {

std::unique_ptr<FaultMechanism> open_fault_mechanism(const ContextOptions& options) {
  const std::string& mode = options.fault_mode;
  if (mode == "userfaultfd") return std::make_unique<UserfaultfdMechanism>();
  if (mode == "signal") return std::make_unique<SignalMechanism>();
  if (mode != "auto")
    throw Error(Errc::invalid_argument,
                fmt::format("fault mode '{}' is not one of auto, userfaultfd or signal", mode));
  try {
    return std::make_unique<UserfaultfdMechanism>();
  } catch (const Error& e) {
    if (e.code() != Errc::userfaultfd_unavailable) throw;
    log().warn("userfaultfd refused, serving CPU faults with SIGSEGV and mprotect instead: {}", e.what());
    return std::make_unique<SignalMechanism>();
  }
}

}  // namespace uhmm::detail
