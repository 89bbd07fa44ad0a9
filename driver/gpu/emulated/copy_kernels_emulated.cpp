// The copy kernels of the emulated plugin: copy_kernels.cu built by the host
// compiler, with uhmm::launch queueing host code on the emulated runtime's stream.
#include "../copy_kernels.cu"
