# The host layers and what each may include (besides include/uhmm, kernels/ and
# common/), bottom to top. Read by host/CMakeLists.txt (each layer's include
# path) and by check_layering.cmake (the host_layering test).
set(uhmm_host_layers base observe policy table os migrate fault api)
set(uhmm_host_base_may_include base)
set(uhmm_host_observe_may_include base observe)
set(uhmm_host_policy_may_include base policy)
set(uhmm_host_table_may_include base observe policy table)
set(uhmm_host_os_may_include ${uhmm_host_table_may_include} os)
set(uhmm_host_migrate_may_include ${uhmm_host_os_may_include} migrate)
set(uhmm_host_fault_may_include ${uhmm_host_migrate_may_include} fault)
set(uhmm_host_api_may_include ${uhmm_host_fault_may_include} api)

# Probes for the test, layer:header-it-may-include:header-above-it (none for api).
set(uhmm_host_layer_probes
  base:lock_order.hpp:mirror_table.hpp
  observe:observer.hpp:advice_table.hpp
  policy:page_bounces.hpp:observer.hpp
  table:mm.hpp:signal_mechanism.hpp
  os:userfaultfd_mechanism.hpp:migration.hpp
  migrate:migration.hpp:fault_service.hpp
  fault:fault_service.hpp:context_impl.hpp
  api:context_impl.hpp:)
