// probe_userfaultfd(): whether uhmm can serve CPU faults here (the same setup a
// Context does) and every feature the running kernel's userfaultfd offers.
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include <fmt/format.h>

#include "uhmm/detail/system_report.hpp"
#include "uhmm/error.hpp"
#include "userfaultfd.hpp"

namespace uhmm::detail {
namespace {

// Bit n of uffdio_api.features (linux/userfaultfd.h, up to Linux 6.8).
constexpr const char* kFeatureNames[] = {
    "pagefault_flag_wp", "event_fork",       "event_remap",    "event_remove",    "missing_hugetlbfs",
    "missing_shmem",     "event_unmap",      "sigbus",         "thread_id",       "minor_hugetlbfs",
    "minor_shmem",       "exact_address",    "wp_hugetlbfs_shmem", "wp_unpopulated", "poison",
    "wp_async",          "move"};

}  // namespace

UserfaultfdReport probe_userfaultfd() {
  UserfaultfdReport report;
  try {
    Userfaultfd uffd;  // what a Context needs, with its own error when refused
    report.available = true;
  } catch (const Error& e) {
    report.why = e.what();
  }
  std::string why;
  const int fd = open_userfaultfd(why);
  if (fd < 0) return report;
  uffdio_api api{};
  api.api = UFFD_API;
  // UFFDIO_API with no features asked reports every feature the kernel has.
  if (::ioctl(fd, UFFDIO_API, &api) == 0) {
    report.features = api.features;
    for (unsigned bit = 0; bit < 64; ++bit) {
      if ((api.features & (std::uint64_t{1} << bit)) == 0) continue;
      report.feature_names.push_back(bit < std::size(kFeatureNames) ? std::string(kFeatureNames[bit])
                                                                     : fmt::format("bit{}", bit));
    }
  }
  ::close(fd);
  return report;
}

}  // namespace uhmm::detail
