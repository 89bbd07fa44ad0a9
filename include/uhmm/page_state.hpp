// PageState: one page's state as Context::residency reports it.
#pragma once

#include "uhmm/types.hpp"

namespace uhmm {

// One page's state as a residency query reports it.
struct PageState {
  Residency residency = Residency::Empty;
  DevicePage device;  // valid when residency is Device or Duplicated
  bool locked = false;   // a migration or kernel holds it
  bool pinned = false;
  bool dirty = false;
  bool writable = false;
};

}  // namespace uhmm
