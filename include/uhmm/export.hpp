// Symbol visibility: the library is built with hidden visibility; UHMM_EXPORT
// marks what an application may link against.
#pragma once

#if defined(UHMM_BUILDING_LIBRARY)
#define UHMM_EXPORT __attribute__((visibility("default")))
#else
#define UHMM_EXPORT
#endif
