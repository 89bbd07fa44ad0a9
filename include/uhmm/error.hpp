// Errors at the public API. Status codes are used inside the fault and copy hot
// paths; they become exceptions only where a public call returns to the user.
#pragma once

#include <stdexcept>
#include <string>

#include "uhmm/export.hpp"

namespace uhmm {

enum class Errc {
  ok = 0,
  invalid_argument,      // null pointer, bad flag, bad size
  not_aligned,           // an address or length not on a page boundary
  zero_length,
  out_of_range,          // not inside any managed range
  crosses_ranges,        // spans more than one managed range
  unknown_range,         // free of an address that does not start a live range (or double free)
  out_of_memory,         // host or device memory is exhausted (real exhaustion only)
  device_error,          // a backend operation failed (copy, launch, stream)
  device_fault,          // a kernel touched a page not resident on its device
  userfaultfd_unavailable,
  system_error,          // an OS call failed unexpectedly
  busy,                  // the object is in use (e.g. a range being freed)
};

UHMM_EXPORT const char* to_string(Errc code) noexcept;

class UHMM_EXPORT Error : public std::runtime_error {
 public:
  Error(Errc code, const std::string& message);
  Errc code() const noexcept { return code_; }

 private:
  Errc code_;
};

// Real exhaustion of host or device memory, kept apart so that callers (and the
// eviction logic) can tell it from every other failure.
class UHMM_EXPORT OutOfMemory : public Error {
 public:
  explicit OutOfMemory(const std::string& message) : Error(Errc::out_of_memory, message) {}
};

// A result code with a message, for paths that must not throw.
struct Status {
  Errc code = Errc::ok;
  std::string message;

  static Status ok() { return {}; }
  explicit operator bool() const noexcept { return code == Errc::ok; }
  // Throws the matching exception when not ok.
  UHMM_EXPORT void raise_if_error() const;
};

}  // namespace uhmm
