/* A data set in managed memory, placed by hand: filled on the host, advised
 * read-mostly and prefetched to the device (the host keeps reading its copy),
 * then made writable, moved to the device and back, and updated on the host.
 * Written against the runtime API of CUDA 12 and HIP (a device ordinal where
 * CUDA 13 takes a location). Its port, managed_uhmm.c, differs by renames
 * alone: samples/CMakeLists.txt checks it. */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK(call)                                                                              \
  do {                                                                                           \
    cudaError_t e_ = (call);                                                                     \
    if (e_ != cudaSuccess) {                                                                     \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, cudaGetErrorName(e_), cudaGetErrorString(e_)); \
      exit(1);                                                                                   \
    }                                                                                            \
  } while (0)

int main(int argc, char** argv) {
  const size_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : (size_t)1 << 22;
  const size_t bytes = n * sizeof(double);
  double* x = NULL;
  CHECK(cudaMallocManaged((void**)&x, bytes, cudaMemAttachGlobal));
  for (size_t i = 0; i < n; ++i) x[i] = (double)i;

  int device = 0;
  CHECK(cudaGetDevice(&device));
  cudaStream_t stream;
  CHECK(cudaStreamCreate(&stream));
  CHECK(cudaMemAdvise(x, bytes, cudaMemAdviseSetReadMostly, device));
  CHECK(cudaMemPrefetchAsync(x, bytes, device, stream));
  CHECK(cudaStreamSynchronize(stream));
  int read_mostly = 0, last = cudaInvalidDeviceId;
  CHECK(cudaMemRangeGetAttribute(&read_mostly, sizeof read_mostly, cudaMemRangeAttributeReadMostly, x, bytes));
  CHECK(cudaMemRangeGetAttribute(&last, sizeof last, cudaMemRangeAttributeLastPrefetchLocation, x, bytes));
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += x[i];

  CHECK(cudaMemAdvise(x, bytes, cudaMemAdviseUnsetReadMostly, device));
  CHECK(cudaMemAdvise(x, bytes, cudaMemAdviseSetPreferredLocation, device));
  CHECK(cudaMemPrefetchAsync(x, bytes, device, stream));
  CHECK(cudaMemPrefetchAsync(x, bytes, cudaCpuDeviceId, stream));
  CHECK(cudaStreamSynchronize(stream));
  for (size_t i = 0; i < n; ++i) x[i] *= 2;
  double twice = 0;
  for (size_t i = 0; i < n; ++i) twice += x[i];

  CHECK(cudaStreamDestroy(stream));
  CHECK(cudaFree(x));
  const double want = (double)n * (double)(n - 1) / 2;
  printf("read-mostly %d, last prefetch to %d, sum %.0f, doubled %.0f\n", read_mostly, last, sum, twice);
  if (!read_mostly || last != device || sum != want || twice != 2 * want) {
    fprintf(stderr, "wrong result: want read-mostly 1, last prefetch to %d, sum %.0f\n", device, want);
    return 1;
  }
  return 0;
}
