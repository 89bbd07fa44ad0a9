# The public headers, listed rather than globbed (scripts/check_file_lists.sh
# checks these lists against the tree): installed into include/uhmm/
# (cmake/uhmm_install.cmake), each compiled on its own (tests/), a dependency
# of the GPU samples. include/uhmm/detail/ is the library's own: never listed.
set(uhmm_public_headers
  uhmm/advice.hpp
  uhmm/backend.hpp
  uhmm/buffer.hpp
  uhmm/context.hpp
  uhmm/counters.hpp
  uhmm/default_context.hpp
  uhmm/error.hpp
  uhmm/export.hpp
  uhmm/hooks.hpp
  uhmm/interval_notifier.hpp
  uhmm/latency.hpp
  uhmm/managed_memory_resource.hpp
  uhmm/migrate.hpp
  uhmm/migration_result.hpp
  uhmm/options.hpp
  uhmm/page_state.hpp
  uhmm/range_snapshot.hpp
  uhmm/types.hpp
  uhmm/uhmm.h
  uhmm/uhmm.hpp
)
# kernels/uhmm/: device code headers, installed beside them in include/uhmm/.
set(uhmm_kernel_headers
  uhmm/device_span.hpp
  uhmm/kernel_config.hpp
  uhmm/launch.hpp
  uhmm/launch_stream.hpp
  uhmm/page_copy.hpp
  uhmm/page_gather.hpp
)
