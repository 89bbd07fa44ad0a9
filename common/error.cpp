#include "uhmm/error.hpp"

#include "uhmm/types.hpp"

namespace uhmm {

const char* to_string(Errc code) noexcept {
  switch (code) {
    case Errc::ok: return "ok";
    case Errc::invalid_argument: return "invalid argument";
    case Errc::not_aligned: return "not aligned";
    case Errc::zero_length: return "zero length";
    case Errc::out_of_range: return "out of range";
    case Errc::crosses_ranges: return "crosses ranges";
    case Errc::unknown_range: return "unknown range";
    case Errc::out_of_memory: return "out of memory";
    case Errc::device_error: return "device error";
    case Errc::device_fault: return "device fault";
    case Errc::userfaultfd_unavailable: return "userfaultfd unavailable";
    case Errc::system_error: return "system error";
    case Errc::busy: return "busy";
  }
  return "unknown error";
}

const char* to_string(Residency r) noexcept {
  switch (r) {
    case Residency::Empty: return "empty";
    case Residency::System: return "system";
    case Residency::Device: return "device";
    case Residency::Duplicated: return "duplicated";
  }
  return "?";
}

Error::Error(Errc code, const std::string& message)
    : std::runtime_error(std::string(to_string(code)) + ": " + message), code_(code) {}

void Status::raise_if_error() const {
  if (code == Errc::ok) return;
  if (code == Errc::out_of_memory) throw OutOfMemory(message);
  throw Error(code, message);
}

}  // namespace uhmm
