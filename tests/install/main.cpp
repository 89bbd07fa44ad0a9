// Built against an installed uhmm (by find_package and by pkg-config): proves that
// the installed headers are complete on their own and that libuhmm links and runs.
#include <cstddef>
#include <cstdio>
#include <exception>

#include <uhmm/uhmm.hpp>

int main() {
  try {
    uhmm::Context ctx;
    constexpr std::size_t n = 3 * uhmm::kPageSize / sizeof(int) + 5;  // not a whole number of pages

    auto* raw = static_cast<int*>(ctx.allocate(n * sizeof(int)));
    for (std::size_t i = 0; i < n; ++i) raw[i] = static_cast<int>(i);
    long long sum = 0;
    for (std::size_t i = 0; i < n; ++i) sum += raw[i];
    ctx.free(raw);

    uhmm::Buffer<float> buf(ctx, n);
    for (std::size_t i = 0; i < n; ++i) buf[i] = 0.5F;
    double fsum = 0;
    for (float x : buf) fsum += x;

    const long long want = static_cast<long long>(n) * static_cast<long long>(n - 1) / 2;
    if (sum != want || fsum != 0.5 * static_cast<double>(n)) {
      std::fprintf(stderr, "uhmm consumer: read back %lld and %g, expected %lld and %g\n", sum, fsum, want,
                   0.5 * static_cast<double>(n));
      return 1;
    }
    std::puts("uhmm consumer: ok");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "uhmm consumer: %s\n", e.what());
    return 1;
  }
}
