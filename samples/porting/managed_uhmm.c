/* managed_cuda.cu ported to uhmm's C API: every cuda name renamed to its
 * uhmm twin, nothing else changed (samples/CMakeLists.txt checks it, from the
 * first include line on). It runs in CI on the cpu backend. */
#include <uhmm/uhmm.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK(call)                                                                              \
  do {                                                                                           \
    uhmmError_t e_ = (call);                                                                     \
    if (e_ != uhmmSuccess) {                                                                     \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, uhmmGetErrorName(e_), uhmmGetErrorString(e_)); \
      exit(1);                                                                                   \
    }                                                                                            \
  } while (0)

int main(int argc, char** argv) {
  const size_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : (size_t)1 << 22;
  const size_t bytes = n * sizeof(double);
  double* x = NULL;
  CHECK(uhmmMallocManaged((void**)&x, bytes, uhmmMemAttachGlobal));
  for (size_t i = 0; i < n; ++i) x[i] = (double)i;

  int device = 0;
  CHECK(uhmmGetDevice(&device));
  uhmmStream_t stream;
  CHECK(uhmmStreamCreate(&stream));
  CHECK(uhmmMemAdvise(x, bytes, uhmmMemAdviseSetReadMostly, device));
  CHECK(uhmmMemPrefetchAsync(x, bytes, device, stream));
  CHECK(uhmmStreamSynchronize(stream));
  int read_mostly = 0, last = uhmmInvalidDeviceId;
  CHECK(uhmmMemRangeGetAttribute(&read_mostly, sizeof read_mostly, uhmmMemRangeAttributeReadMostly, x, bytes));
  CHECK(uhmmMemRangeGetAttribute(&last, sizeof last, uhmmMemRangeAttributeLastPrefetchLocation, x, bytes));
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += x[i];

  CHECK(uhmmMemAdvise(x, bytes, uhmmMemAdviseUnsetReadMostly, device));
  CHECK(uhmmMemAdvise(x, bytes, uhmmMemAdviseSetPreferredLocation, device));
  CHECK(uhmmMemPrefetchAsync(x, bytes, device, stream));
  CHECK(uhmmMemPrefetchAsync(x, bytes, uhmmCpuDeviceId, stream));
  CHECK(uhmmStreamSynchronize(stream));
  for (size_t i = 0; i < n; ++i) x[i] *= 2;
  double twice = 0;
  for (size_t i = 0; i < n; ++i) twice += x[i];

  CHECK(uhmmStreamDestroy(stream));
  CHECK(uhmmFree(x));
  const double want = (double)n * (double)(n - 1) / 2;
  printf("read-mostly %d, last prefetch to %d, sum %.0f, doubled %.0f\n", read_mostly, last, sum, twice);
  if (!read_mostly || last != device || sum != want || twice != 2 * want) {
    fprintf(stderr, "wrong result: want read-mostly 1, last prefetch to %d, sum %.0f\n", device, want);
    return 1;
  }
  return 0;
}
