# ctest tests that prove an installed uhmm can be used from outside this tree:
#   install_prefix        (fixture) `cmake --install` of this build into a scratch prefix
#   install_find_package  builds and runs tests/install/ with find_package(uhmm) against it
#   install_pkg_config    compiles and runs tests/install/main.cpp with `pkg-config uhmm`
# The consumer is built with this build's compiler, generator and type, and linked
# with its sanitizers (an instrumented libuhmm needs their runtimes first in line).
set(uhmm_install_work ${CMAKE_CURRENT_BINARY_DIR}/install)
set(uhmm_install_prefix ${uhmm_install_work}/prefix)
set(uhmm_install_san_flags "")
if(UHMM_SANITIZE)
  list(JOIN UHMM_SANITIZE "," uhmm_install_san)
  set(uhmm_install_san_flags "-fsanitize=${uhmm_install_san}")
endif()
find_program(UHMM_PKG_CONFIG_EXECUTABLE NAMES pkg-config pkgconf)

set(uhmm_install_args
  -DUHMM_BUILD_DIR=${PROJECT_BINARY_DIR}
  -DPREFIX=${uhmm_install_prefix}
  -DWORK_DIR=${uhmm_install_work}
  -DCONSUMER_DIR=${CMAKE_CURRENT_LIST_DIR}
  -DCONFIG=$<CONFIG>
  -DCXX=${CMAKE_CXX_COMPILER}
  -DCC=${CMAKE_C_COMPILER}
  -DGENERATOR=${CMAKE_GENERATOR}
  -DMAKE_PROGRAM=${CMAKE_MAKE_PROGRAM}
  -DSAN_FLAGS=${uhmm_install_san_flags}
  -DLIBDIR=${CMAKE_INSTALL_LIBDIR}
  -DVERSION=${PROJECT_VERSION}
  -DSOVERSION=$<TARGET_PROPERTY:uhmm,SOVERSION>
  -DINCLUDEDIR=${CMAKE_INSTALL_INCLUDEDIR}
  -DPKG_CONFIG=${UHMM_PKG_CONFIG_EXECUTABLE})
set(uhmm_install_script ${CMAKE_CURRENT_LIST_DIR}/run_install_test.cmake)

add_test(NAME install_prefix COMMAND ${CMAKE_COMMAND} -DSTEP=install ${uhmm_install_args} -P ${uhmm_install_script})
add_test(NAME install_find_package
  COMMAND ${CMAKE_COMMAND} -DSTEP=find_package ${uhmm_install_args} -P ${uhmm_install_script})
add_test(NAME install_pkg_config
  COMMAND ${CMAKE_COMMAND} -DSTEP=pkg_config ${uhmm_install_args} -P ${uhmm_install_script})
# Installing writes into the build tree too (uhmm.pc is configured there at
# install time): one install of it at a time (package_deb's cpack is another).
set_tests_properties(install_prefix PROPERTIES FIXTURES_SETUP uhmm_installed TIMEOUT 120
  RESOURCE_LOCK uhmm_build_tree_install)
set_tests_properties(install_find_package install_pkg_config PROPERTIES FIXTURES_REQUIRED uhmm_installed TIMEOUT 300)
if(NOT UHMM_PKG_CONFIG_EXECUTABLE)
  # Shown as "Not Run (Disabled)" rather than silently missing; scripts/setup.sh installs it.
  set_tests_properties(install_pkg_config PROPERTIES DISABLED TRUE)
endif()
