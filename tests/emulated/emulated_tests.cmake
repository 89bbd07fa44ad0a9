# The GPU plugin on the emulated runtime (driver/gpu/emulated/): every ctest
# name here contains "Emulated". Kernel sources are built as "device code" for
# it (UHMM_EMULATED_DEVICE_CODE=1), as nvcc builds them for CUDA.
function(uhmm_emulated_device_code target)
  target_compile_definitions(${target} PRIVATE UHMM_EMULATED_DEVICE_CODE=1
    UHMM_TEST_EMULATED_PLUGIN_DIR="${UHMM_EMULATED_DIR}")
  target_link_libraries(${target} PRIVATE uhmm-emulated-runtime)
  add_dependencies(${target} uhmm-backend-emulated)
endfunction()

# The conformance suite's Emulated/* instances.
uhmm_emulated_device_code(driver_backend_conformance_test)

uhmm_add_test(emulated_runtime_test ${CMAKE_CURRENT_LIST_DIR}/emulated_runtime_test.cpp)
uhmm_emulated_device_code(emulated_runtime_test)
uhmm_add_test(emulated_launch_device_test ${CMAKE_CURRENT_LIST_DIR}/launch_device_emulated_test.cpp)
uhmm_emulated_device_code(emulated_launch_device_test)
uhmm_add_test(emulated_copy_engine_test ${CMAKE_CURRENT_LIST_DIR}/copy_engine_emulated_test.cpp)
uhmm_emulated_device_code(emulated_copy_engine_test)

# The vector_add_device sample, built for the emulated runtime and run on it.
add_executable(uhmm-vector-add-emulated ${PROJECT_SOURCE_DIR}/samples/vector_add_device.cpp)
target_link_libraries(uhmm-vector-add-emulated PRIVATE uhmm::uhmm)
uhmm_target_options(uhmm-vector-add-emulated)
uhmm_emulated_device_code(uhmm-vector-add-emulated)
add_test(NAME sample_vector_add_device_Emulated COMMAND uhmm-vector-add-emulated --elements 1000003 --rounds 3)
set_tests_properties(sample_vector_add_device_Emulated PROPERTIES TIMEOUT 120
  ENVIRONMENT "UHMM_BACKEND=emulated;UHMM_PLUGIN_DIR=${UHMM_EMULATED_DIR};UHMM_EMULATED_DELAY_US=100")

# uhmm-info lists the emulated plugin where UHMM_PLUGIN_DIR provides it, and
# auto still does not select it.
if(UHMM_BUILD_TOOLS)
  add_test(NAME uhmm_info_lists_Emulated COMMAND uhmm-info --json)
  set_tests_properties(uhmm_info_lists_Emulated PROPERTIES TIMEOUT 60
    ENVIRONMENT "UHMM_PLUGIN_DIR=${UHMM_EMULATED_DIR}"
    PASS_REGULAR_EXPRESSION "\"name\": *\"emulated\""
    FAIL_REGULAR_EXPRESSION "\"auto_selects\": *\"emulated\"")
  # A driver older than the plugin's runtime (issue 16, defect 10) is said aloud.
  add_test(NAME uhmm_info_driver_too_old_Emulated COMMAND uhmm-info)
  set_tests_properties(uhmm_info_driver_too_old_Emulated PROPERTIES TIMEOUT 60
    ENVIRONMENT "UHMM_PLUGIN_DIR=${UHMM_EMULATED_DIR};UHMM_EMULATED_DRIVER_TOO_OLD=1"
    PASS_REGULAR_EXPRESSION "WARNING: emulated: the GPU driver is too old")
endif()

# Two emulated devices (the test sets UHMM_EMULATED_DEVICES before the runtime starts).
uhmm_add_driver_test(emulated_two_devices_test ${CMAKE_CURRENT_LIST_DIR}/two_devices_emulated_test.cpp)
uhmm_emulated_device_code(emulated_two_devices_test)

# The plugin's pool, launch-path stalls and probing (issue 16, defects 3, 7, 8).
uhmm_add_driver_test(emulated_gpu_plugin_test ${CMAKE_CURRENT_LIST_DIR}/gpu_plugin_emulated_test.cpp)
uhmm_emulated_device_code(emulated_gpu_plugin_test)

# The model-based stress test on the GPU plugin (two emulated devices), short.
uhmm_add_test(emulated_stress_test ${CMAKE_CURRENT_LIST_DIR}/stress_emulated_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/../stress/model_stress.cpp)
uhmm_emulated_device_code(emulated_stress_test)
