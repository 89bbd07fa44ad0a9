// `uhmm-bench --gpu`: the vendor's managed memory (cudaMallocManaged /
// hipMallocManaged plus prefetch) on the device uhmm runs on, from the
// baseline library built for that backend (managed/managed_baseline_abi.hpp).
#pragma once

#include <cstddef>
#include <string>

#include "managed_baseline_abi.hpp"

namespace uhmm::bench {

class ManagedBaseline {
 public:
  // Loads libuhmm-managed-baseline-<backend>.so from UHMM_PLUGIN_DIR when set,
  // else from uhmm-bench's own directory; throws std::runtime_error naming
  // what was tried and why it failed.
  explicit ManagedBaseline(const std::string& backend);

  // What users would write instead: "cudaMallocManaged + prefetch".
  std::string name() const { return name_; }

  // One run on runtime device `device`; throws std::runtime_error with the
  // library's account of the failing call.
  UhmmManagedResult run(std::size_t bytes, unsigned rounds, std::size_t fault_pages, int device = 0) const;

 private:
  std::string name_;
  UhmmManagedBaselineFn run_ = nullptr;
};

}  // namespace uhmm::bench
