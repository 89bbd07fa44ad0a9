# Driven by install_tests.cmake (cmake -DSTEP=... -P): one step of the install
# tests. Every failure names the command that failed and shows its output.
cmake_minimum_required(VERSION 3.25)

include(${CMAKE_CURRENT_LIST_DIR}/install_test_support.cmake)

set(consumer_dir ${WORK_DIR}/${STEP})
set(config_args)
if(CONFIG)
  set(config_args --config ${CONFIG})
endif()

if(STEP STREQUAL "install")
  file(REMOVE_RECURSE ${PREFIX})
  run("cmake --install" ${CMAKE_COMMAND} --install ${UHMM_BUILD_DIR} --prefix ${PREFIX} ${config_args})
  foreach(f ${INCLUDEDIR}/uhmm/uhmm.hpp ${INCLUDEDIR}/uhmm/uhmm.h ${INCLUDEDIR}/uhmm/device_span.hpp ${LIBDIR}/cmake/uhmm/uhmmConfig.cmake
            ${LIBDIR}/cmake/uhmm/uhmmConfigVersion.cmake ${LIBDIR}/cmake/uhmm/uhmmTargets.cmake
            ${LIBDIR}/pkgconfig/uhmm.pc)
    if(NOT EXISTS ${PREFIX}/${f})
      message(FATAL_ERROR "the install has no ${f}")
    endif()
  endforeach()
  foreach(name libuhmm.so libuhmm.so.${SOVERSION} libuhmm.so.${VERSION})
    if(NOT EXISTS ${PREFIX}/${LIBDIR}/${name})
      message(FATAL_ERROR "the install has no ${LIBDIR}/${name} (libuhmm.so with its versioned names)")
    endif()
  endforeach()
  if(EXISTS ${PREFIX}/${INCLUDEDIR}/uhmm/detail)
    message(FATAL_ERROR "include/uhmm/detail/ is private but was installed")
  endif()

elseif(STEP STREQUAL "find_package")
  file(REMOVE_RECURSE ${consumer_dir})
  set(generator_args -G ${GENERATOR})
  if(MAKE_PROGRAM)
    list(APPEND generator_args -DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM})
  endif()
  run("configuring the consumer" ${CMAKE_COMMAND} -S ${CONSUMER_DIR} -B ${consumer_dir} ${generator_args}
      -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_C_COMPILER=${CC} -DCMAKE_BUILD_TYPE=${CONFIG} -DCMAKE_PREFIX_PATH=${PREFIX}
      -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_EXE_LINKER_FLAGS=${SAN_FLAGS})
  file(STRINGS ${consumer_dir}/CMakeCache.txt found REGEX "^uhmm_DIR:")
  if(NOT found STREQUAL "uhmm_DIR:PATH=${PREFIX}/${LIBDIR}/cmake/uhmm")
    message(FATAL_ERROR "find_package found the wrong uhmm: ${found}")
  endif()
  run("building the consumer" ${CMAKE_COMMAND} --build ${consumer_dir} ${config_args})
  run("running the consumer" ${consumer_dir}/uhmm_consumer)
  run("running the C consumer" ${consumer_dir}/uhmm_c_consumer)

elseif(STEP STREQUAL "pkg_config")
  file(REMOVE_RECURSE ${consumer_dir})
  file(MAKE_DIRECTORY ${consumer_dir})
  set(ENV{PKG_CONFIG_PATH} ${PREFIX}/${LIBDIR}/pkgconfig)
  execute_process(COMMAND ${PKG_CONFIG} --cflags --libs uhmm RESULT_VARIABLE rc OUTPUT_VARIABLE flags
                  ERROR_VARIABLE err OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "pkg-config --cflags --libs uhmm failed: ${err}")
  endif()
  message("pkg-config uhmm: ${flags}")
  string(FIND "${flags}" "-I${PREFIX}/${INCLUDEDIR}" at)
  # pkg-config leaves the system's /usr/include out (a system install, scripts/package.sh --test-installed).
  if(at EQUAL -1 AND NOT "${PREFIX}/${INCLUDEDIR}" STREQUAL "/usr/include")
    message(FATAL_ERROR "uhmm.pc does not point at the install prefix ${PREFIX}")
  endif()
  separate_arguments(flags UNIX_COMMAND "${flags}")
  separate_arguments(san UNIX_COMMAND "${SAN_FLAGS}")
  run("compiling with pkg-config" ${CXX} -std=c++20 ${CONSUMER_DIR}/main.cpp ${san} ${flags}
      -Wl,-rpath,${PREFIX}/${LIBDIR} -o ${consumer_dir}/uhmm_consumer)
  run("running the consumer" ${consumer_dir}/uhmm_consumer)
  run("compiling C with pkg-config" ${CC} -std=c11 -Wall -Wextra -Wpedantic -Werror ${CONSUMER_DIR}/c_consumer.c
      ${san} ${flags} -Wl,-rpath,${PREFIX}/${LIBDIR} -o ${consumer_dir}/uhmm_c_consumer)
  run("running the C consumer" ${consumer_dir}/uhmm_c_consumer)

else()
  message(FATAL_ERROR "unknown STEP '${STEP}'")
endif()
