#include "map_count.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <fmt/format.h>

namespace uhmm::detail {

long max_map_count() noexcept {
  long v = 65530;
  if (FILE* f = std::fopen("/proc/sys/vm/max_map_count", "r")) {
    if (std::fscanf(f, "%ld", &v) != 1) v = 65530;
    std::fclose(f);
  }
  return v;
}

long count_mappings() noexcept {
  long lines = 0;
  if (FILE* f = std::fopen("/proc/self/maps", "r")) {
    for (int c; (c = std::fgetc(f)) != EOF;) lines += c == '\n';
    std::fclose(f);
  }
  return lines;
}

bool near_map_limit() noexcept {
  // "Near": the failed call itself needed up to a few more.
  return count_mappings() + 8 >= max_map_count();
}

std::string describe_mapping_failure(int err) {
  if (err != ENOMEM) return std::strerror(err);
  // A split that would pass the limit fails with ENOMEM too.
  if (near_map_limit())
    return fmt::format("the process is at vm.max_map_count ({} of {} mappings)", count_mappings(), max_map_count());
  return "no host memory";
}

}  // namespace uhmm::detail
