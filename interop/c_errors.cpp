#include "c_errors.hpp"


namespace uhmm::interop {
namespace {

struct LastError {
  uhmmError_t error = uhmmSuccess;
  std::string message;
};
thread_local LastError last_error;

struct Description {
  uhmmError_t error;
  const char* name;
  const char* text;
};

constexpr Description kDescriptions[] = {
    {uhmmSuccess, "uhmmSuccess", "no error"},
    {uhmmErrorInvalidValue, "uhmmErrorInvalidValue", "invalid argument"},
    {uhmmErrorMemoryAllocation, "uhmmErrorMemoryAllocation", "out of memory"},
    {uhmmErrorInitializationError, "uhmmErrorInitializationError", "initialization error"},
    {uhmmErrorInvalidDevice, "uhmmErrorInvalidDevice", "invalid device ordinal"},
    {uhmmErrorOperatingSystem, "uhmmErrorOperatingSystem", "OS call failed"},
    {uhmmErrorInvalidResourceHandle, "uhmmErrorInvalidResourceHandle", "invalid resource handle"},
    {uhmmErrorIllegalAddress, "uhmmErrorIllegalAddress", "a kernel accessed a page outside its spans"},
    {uhmmErrorNotPermitted, "uhmmErrorNotPermitted", "operation not permitted: the range is in use"},
    {uhmmErrorNotSupported, "uhmmErrorNotSupported", "operation not supported"},
    {uhmmErrorDeviceFailure, "uhmmErrorDeviceFailure", "a device operation failed"},
    {uhmmErrorUnknown, "uhmmErrorUnknown", "unknown error"},
};

const Description* describe(uhmmError_t error) noexcept {
  for (const Description& d : kDescriptions)
    if (d.error == error) return &d;
  return nullptr;
}

}  // namespace

uhmmError_t to_c_error(Errc code) noexcept {
  switch (code) {
    case Errc::ok: return uhmmSuccess;
    case Errc::invalid_argument:
    case Errc::not_aligned:
    case Errc::zero_length:
    case Errc::out_of_range:
    case Errc::crosses_ranges:
    case Errc::unknown_range: return uhmmErrorInvalidValue;
    case Errc::out_of_memory: return uhmmErrorMemoryAllocation;
    case Errc::device_error: return uhmmErrorDeviceFailure;
    case Errc::device_fault: return uhmmErrorIllegalAddress;
    case Errc::userfaultfd_unavailable: return uhmmErrorInitializationError;
    case Errc::system_error: return uhmmErrorOperatingSystem;
    case Errc::busy: return uhmmErrorNotPermitted;
  }
  return uhmmErrorUnknown;
}

uhmmError_t fail(uhmmError_t error, const char* message) noexcept {
  last_error.error = error;
  try {
    last_error.message = message;
  } catch (const std::bad_alloc&) {
    last_error.message.clear();  // the code still says what failed
  }
  return error;
}

}  // namespace uhmm::interop

using namespace uhmm::interop;

extern "C" {

uhmmError_t uhmmGetLastError(void) {
  const uhmmError_t error = last_error.error;
  last_error.error = uhmmSuccess;
  return error;
}

uhmmError_t uhmmPeekAtLastError(void) { return last_error.error; }

const char* uhmmGetLastErrorMessage(void) { return last_error.message.c_str(); }

const char* uhmmGetErrorName(uhmmError_t error) {
  const Description* d = describe(error);
  return d != nullptr ? d->name : "unrecognized error code";
}

const char* uhmmGetErrorString(uhmmError_t error) {
  const Description* d = describe(error);
  return d != nullptr ? d->text : "unrecognized error code";
}

}  // extern "C"
