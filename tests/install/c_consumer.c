/* A C11 program over uhmm's C API, built against an installed uhmm (and in
 * the build tree, tests/CMakeLists.txt): a managed allocate / write / advise /
 * prefetch to a device / read back / prefetch to the host / free round trip,
 * then the errors a C user meets: a double free, a foreign pointer, a bad
 * device, a zero size. Exits non-zero, naming the step, on any surprise. */
#include <stdio.h>
#include <stdlib.h>

#include <uhmm/uhmm.h>

static int failures = 0;

static void expect(uhmmError_t got, uhmmError_t want, const char* what) {
  if (got == want) return;
  fprintf(stderr, "%s: got %s (%s), want %s\n", what, uhmmGetErrorName(got), uhmmGetLastErrorMessage(),
          uhmmGetErrorName(want));
  ++failures;
}

int main(void) {
  const size_t n = (size_t)1 << 20;
  const size_t bytes = n * sizeof(unsigned);
  unsigned* data = NULL;
  expect(uhmmMallocManaged((void**)&data, bytes, uhmmMemAttachGlobal), uhmmSuccess, "uhmmMallocManaged");
  if (data == NULL) return 1;
  for (size_t i = 0; i < n; ++i) data[i] = (unsigned)(i * 2654435761u);

  int devices = 0;
  expect(uhmmGetDeviceCount(&devices), uhmmSuccess, "uhmmGetDeviceCount");
  uhmmStream_t stream = NULL;
  expect(uhmmStreamCreate(&stream), uhmmSuccess, "uhmmStreamCreate");
  expect(uhmmMemAdvise(data, bytes, uhmmMemAdviseSetPreferredLocation, 0), uhmmSuccess, "uhmmMemAdvise");
  expect(uhmmMemPrefetchAsync(data, bytes, 0, stream), uhmmSuccess, "prefetch to device 0");
  expect(uhmmStreamSynchronize(stream), uhmmSuccess, "uhmmStreamSynchronize");
  int location = uhmmInvalidDeviceId;
  expect(uhmmMemRangeGetAttribute(&location, sizeof location, uhmmMemRangeAttributeLastPrefetchLocation, data, bytes),
         uhmmSuccess, "uhmmMemRangeGetAttribute");
  if (location != 0) {
    fprintf(stderr, "last prefetch location %d, want 0\n", location);
    ++failures;
  }

  /* Read back on the host: the pages come back on the CPU's faults. */
  for (size_t i = 0; i < n; ++i)
    if (data[i] != (unsigned)(i * 2654435761u)) {
      fprintf(stderr, "word %zu reads %u after the device round trip\n", i, data[i]);
      ++failures;
      break;
    }
  expect(uhmmMemPrefetchAsync(data, bytes, 0, stream), uhmmSuccess, "prefetch to device 0 again");
  expect(uhmmMemPrefetchAsync(data, bytes, uhmmCpuDeviceId, stream), uhmmSuccess, "prefetch to the host");
  expect(uhmmStreamDestroy(stream), uhmmSuccess, "uhmmStreamDestroy");
  expect(uhmmDeviceSynchronize(), uhmmSuccess, "uhmmDeviceSynchronize");
  expect(uhmmFree(data), uhmmSuccess, "uhmmFree");

  /* Errors, each reported and none fatal. */
  expect(uhmmFree(data), uhmmErrorInvalidValue, "a double free");
  expect(uhmmGetLastError(), uhmmErrorInvalidValue, "uhmmGetLastError after the double free");
  expect(uhmmGetLastError(), uhmmSuccess, "uhmmGetLastError resets");
  int local = 0;
  expect(uhmmFree(&local), uhmmErrorInvalidValue, "freeing a stack pointer");
  expect(uhmmSetDevice(devices), uhmmErrorInvalidDevice, "a device that does not exist");
  void* none = NULL;
  expect(uhmmMallocManaged(&none, 0, uhmmMemAttachGlobal), uhmmErrorInvalidValue, "a zero size");
  if (none != NULL) ++failures;
  expect(uhmmDeviceReset(), uhmmSuccess, "uhmmDeviceReset");

  if (failures != 0) return 1;
  printf("uhmm C API round trip on %d device(s): ok\n", devices);
  return 0;
}
