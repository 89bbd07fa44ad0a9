// Run by secure_environment_test, as another user and with a file capability:
// prints whether the kernel marked the process AT_SECURE and the options the
// library read from the environment.
#include <sys/auxv.h>

#include <cstdio>

#include "uhmm/uhmm.hpp"

int main() {
  try {
    const uhmm::ContextOptions o = uhmm::ContextOptions::from_environment();
    std::printf("secure=%lu\nplugin_dir=%s\ntrace_path=%s\n", ::getauxval(AT_SECURE), o.plugin_dir.c_str(),
                o.trace_path.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::printf("error=%s\n", e.what());
    return 1;
  }
}
