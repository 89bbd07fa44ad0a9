// uhmm-vector-add-device: c = a + b over managed memory, with the kernel
// written once. g++ builds it for the cpu backend (uhmm-vector-add-device, run
// in CI); nvcc builds the same file into uhmm-vector-add-cuda and hipcc into
// uhmm-vector-add-hip, where uhmm::launch becomes a grid-stride kernel on the
// device's stream. Context::launch_device migrates the spans, uploads their
// device page tables and waits for the stream; the host then reads c (pages
// fault back) and checks every element. No fmt or CLI11 here: nvcc compiles it.
//   uhmm-vector-add-device [--elements N] [--rounds R]
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <span>

#include "uhmm/uhmm.hpp"

namespace {

// The kernel body: one element per index, through the uploaded page tables.
struct VectorAdd {
  uhmm::device_span<const float> a;
  uhmm::device_span<const float> b;
  uhmm::device_span<float> c;
  UHMM_HOST_DEVICE void operator()(std::size_t i) const { c[i] = a[i] + b[i]; }
};

bool parse(int argc, char** argv, std::size_t* elements, int* rounds) {
  for (int k = 1; k < argc; ++k) {
    const bool has_value = k + 1 < argc;
    if (std::strcmp(argv[k], "--elements") == 0 && has_value) {
      *elements = std::strtoull(argv[++k], nullptr, 10);
    } else if (std::strcmp(argv[k], "--rounds") == 0 && has_value) {
      *rounds = std::atoi(argv[++k]);
    } else {
      std::fprintf(stderr, "usage: %s [--elements N] [--rounds R]\n", argv[0]);
      return false;
    }
  }
  if (*elements == 0 || *rounds <= 0) {
    std::fprintf(stderr, "%s: --elements and --rounds must be positive\n", argv[0]);
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t n = std::size_t{1} << 22;
  int rounds = 3;
  if (!parse(argc, argv, &n, &rounds)) return 2;
  try {
    uhmm::Context ctx;
    const uhmm::DeviceInfo info = ctx.device_info(ctx.device_owner(0));
    std::printf("uhmm-vector-add-device: %zu elements, %d rounds on %s (%s)\n", n, rounds, info.backend.c_str(),
                info.name.c_str());
    auto* a = static_cast<float*>(ctx.allocate(n * sizeof(float)));
    auto* b = static_cast<float*>(ctx.allocate(n * sizeof(float)));
    auto* c = static_cast<float*>(ctx.allocate(n * sizeof(float)));
    int wrong = 0;
    for (int r = 0; r < rounds && wrong == 0; ++r) {
      for (std::size_t i = 0; i < n; ++i) {  // the host writes: pages come back from the device
        a[i] = static_cast<float>(i % 1024);
        b[i] = static_cast<float>(r);
      }
      ctx.launch_device(
          [n](const uhmm::LaunchStream& stream, uhmm::device_span<const float> x, uhmm::device_span<const float> y,
              uhmm::device_span<float> z) { uhmm::launch(stream, n, VectorAdd{x, y, z}); },
          std::span<const float>(a, n), std::span<const float>(b, n), std::span<float>(c, n));
      for (std::size_t i = 0; i < n; ++i) {
        if (c[i] != static_cast<float>(i % 1024) + static_cast<float>(r)) {
          if (++wrong <= 5) std::fprintf(stderr, "round %d: c[%zu] = %g\n", r, i, static_cast<double>(c[i]));
        }
      }
    }
    const uhmm::Counters counters = ctx.counters();
    std::printf("pages to device %llu, to host %llu, faults from device %llu\n",
                static_cast<unsigned long long>(counters.pages_to_device),
                static_cast<unsigned long long>(counters.pages_to_host),
                static_cast<unsigned long long>(counters.faults_from_device));
    ctx.free(a);
    ctx.free(b);
    ctx.free(c);
    if (wrong != 0) {
      std::fprintf(stderr, "uhmm-vector-add-device: %d wrong elements\n", wrong);
      return 1;
    }
    std::printf("uhmm-vector-add-device: ok\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "uhmm-vector-add-device: %s\n", e.what());
    return 1;
  }
}
