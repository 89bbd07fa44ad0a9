// nvcc compiles the one source of the sample as CUDA (see vector_add_device.cpp).
#include "vector_add_device.cpp"
