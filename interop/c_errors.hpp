// The C API's errors: uhmm::Errc mapped to uhmmError_t, and the calling
// thread's last error (as CUDA keeps it: per thread, reset by uhmmGetLastError).
#pragma once

#include <new>
#include <stdexcept>
#include <string>

#include "uhmm/error.hpp"
#include "uhmm/uhmm.h"

namespace uhmm::interop {

uhmmError_t to_c_error(Errc code) noexcept;

// A failure with a C code of its own (no uhmm::Errc says it): thrown inside a
// call, returned by c_call.
struct CFailure : std::runtime_error {
  CFailure(uhmmError_t e, const std::string& message) : std::runtime_error(message), error(e) {}
  uhmmError_t error;
};

// Records a failure for uhmmGetLastError and returns it.
uhmmError_t fail(uhmmError_t error, const char* message) noexcept;

// Runs a call's body, turning what it throws into a recorded error code: no
// exception crosses the C boundary.
template <class Body>
uhmmError_t c_call(Body&& body) noexcept {
  try {
    return body();
  } catch (const CFailure& e) {
    return fail(e.error, e.what());
  } catch (const Error& e) {
    return fail(to_c_error(e.code()), e.what());
  } catch (const std::bad_alloc&) {
    return fail(uhmmErrorMemoryAllocation, "out of host memory");
  } catch (const std::exception& e) {
    return fail(uhmmErrorUnknown, e.what());
  }
}

}  // namespace uhmm::interop
