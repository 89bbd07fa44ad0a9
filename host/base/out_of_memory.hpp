// Host memory running out inside a public call: the std::bad_alloc of
// whichever allocation failed reaches the caller as uhmm::OutOfMemory naming
// the call. By then the operation has unwound with every page it locked
// unlocked (locked_pages.hpp; docs/DESIGN.md, "When an operation fails part way").
#pragma once

#include <new>
#include <string>
#include <utility>

#include "uhmm/error.hpp"

namespace uhmm::detail {

template <class Body>
decltype(auto) out_of_memory_as_error(const char* call, Body&& body) {
  try {
    return std::forward<Body>(body)();
  } catch (const std::bad_alloc&) {
    // Where memory stays exhausted, making the message fails too: the caller
    // then gets std::bad_alloc after all.
    throw OutOfMemory(std::string(call) + ": out of host memory");
  }
}

}  // namespace uhmm::detail
