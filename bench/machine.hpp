// The machine a benchmark ran on, printed and stored with its results: CPU
// model, cores, kernel, backend, and the load when the run started (other
// work on the machine moves absolute figures; ratios to same-run floors less).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace uhmm::bench {

struct Machine {
  std::string cpu;
  unsigned cpus = 0;
  std::string kernel;
  std::string backend;
  std::string load_average;  // /proc/loadavg's first three fields

  static Machine describe(const std::string& backend);
  std::string line() const;
  nlohmann::json json() const;
};

// Anonymous memory resident in this process (RssAnon of /proc/self/status), in bytes.
std::size_t resident_anonymous_bytes();

}  // namespace uhmm::bench
