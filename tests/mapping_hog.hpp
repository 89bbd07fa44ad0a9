// The process's mappings (/proc/self/maps) and vm.max_map_count, and a hog
// that takes all but a few of them: tests of what uhmm does near the limit.
#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "uhmm/types.hpp"

namespace uhmm::test {

struct Mapping {
  std::uintptr_t begin, end;
  bool accessible;  // any of r, w, x
};

inline std::vector<Mapping> read_maps() {
  std::vector<Mapping> out;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    unsigned long begin = 0, end = 0;
    char perms[5] = {};
    if (std::sscanf(line.c_str(), "%lx-%lx %4s", &begin, &end, perms) != 3) continue;
    out.push_back({begin, end, perms[0] != '-' || perms[1] != '-' || perms[2] != '-'});
  }
  return out;
}

inline long max_map_count() {
  long v = 65530;
  if (FILE* f = std::fopen("/proc/sys/vm/max_map_count", "r")) {
    if (std::fscanf(f, "%ld", &v) != 1) v = 65530;
    std::fclose(f);
  }
  return v;
}

// How many mappings the process has (no large allocation: it may run at the limit).
inline long count_maps() {
  long lines = 0;
  if (FILE* f = std::fopen("/proc/self/maps", "r")) {
    for (int c; (c = std::fgetc(f)) != EOF;) lines += c == '\n';
    std::fclose(f);
  }
  return lines;
}

// Takes all but `leave` of the process's vm.max_map_count for itself:
// alternating protections split an anonymous region into one mapping per page.
class MappingHog {
 public:
  explicit MappingHog(long leave) {
    pages_ = static_cast<std::size_t>(std::max(0L, max_map_count() - count_maps() - leave));
    base_ = static_cast<std::byte*>(::mmap(nullptr, pages_ * kPageSize, PROT_READ | PROT_WRITE,
                                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    for (std::size_t i = 1; i < pages_; i += 2) ::mprotect(base_ + i * kPageSize, kPageSize, PROT_READ);
  }
  ~MappingHog() { ::munmap(base_, pages_ * kPageSize); }
  MappingHog(const MappingHog&) = delete;
  MappingHog& operator=(const MappingHog&) = delete;

 private:
  std::byte* base_ = nullptr;
  std::size_t pages_ = 0;
};

}  // namespace uhmm::test
