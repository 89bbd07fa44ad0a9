# ctest tests of embedding and packaging, in plain builds only (sanitizers and
# expensive checks change neither, and CI builds those too):
#   embed_add_subdirectory    a parent project (tests/install/embed/) add_subdirectory()s
#                             this source tree with the GPU plugins off, checks that uhmm
#                             left it alone, builds tests/install/main.cpp against uhmm::uhmm
#                             and runs it (skipped in the signal fault mode: same build)
#   package_deb               (fixture) cpack -G DEB of this build: the package set, their
#                             metadata (dpkg-deb -f) and contents (-c); dpkg -x into a scratch root
#   package_deb_find_package  install_find_package's consumers against that extracted tree
#   package_deb_pkg_config    install_pkg_config's, with PKG_CONFIG_SYSROOT_DIR at the tree
#                             (both build whatever consumers run_install_test.cmake builds)
# Installing the packages for real (apt-get install) is scripts/package.sh's job.
if(UHMM_SANITIZE OR UHMM_EXPENSIVE_CHECKS)
  return()
endif()

set(uhmm_package_script ${CMAKE_CURRENT_LIST_DIR}/run_package_test.cmake)
set(uhmm_embed_work ${CMAKE_CURRENT_BINARY_DIR}/embed)
add_test(NAME embed_add_subdirectory
  COMMAND ${CMAKE_COMMAND} -DSTEP=embed -DSOURCE_DIR=${PROJECT_SOURCE_DIR} -DWORK_DIR=${uhmm_embed_work}
          -DPARENT_DIR=${CMAKE_CURRENT_LIST_DIR}/embed -DGENERATOR=${CMAKE_GENERATOR}
          -DMAKE_PROGRAM=${CMAKE_MAKE_PROGRAM} -DCXX=${CMAKE_CXX_COMPILER} -P ${uhmm_package_script})
# It compiles libuhmm again (unoptimised, ccache helps where the environment sets it up): two jobs.
set_tests_properties(embed_add_subdirectory PROPERTIES TIMEOUT 900 PROCESSORS 2
  SKIP_REGULAR_EXPRESSION "embed_add_subdirectory: skipped")

find_program(UHMM_DPKG_DEB_EXECUTABLE dpkg-deb)
find_program(UHMM_DPKG_EXECUTABLE dpkg)
find_program(UHMM_DPKG_SHLIBDEPS_EXECUTABLE dpkg-shlibdeps)
get_target_property(uhmm_soversion uhmm SOVERSION)
set(uhmm_packages libuhmm${uhmm_soversion} libuhmm-dev)
if(UHMM_BUILD_TOOLS)
  list(APPEND uhmm_packages uhmm-tools)
endif()
foreach(backend IN ITEMS cuda hip)
  if(TARGET uhmm-backend-${backend})
    list(APPEND uhmm_packages uhmm-backend-${backend})
  endif()
endforeach()
list(JOIN uhmm_packages "," uhmm_packages)
list(JOIN uhmm_public_headers "," uhmm_package_headers)
list(JOIN uhmm_kernel_headers "," uhmm_package_kernel_headers)
set(uhmm_deb_work ${CMAKE_CURRENT_BINARY_DIR}/deb)
set(uhmm_deb_root ${uhmm_deb_work}/root)
add_test(NAME package_deb
  COMMAND ${CMAKE_COMMAND} -DSTEP=deb -DSOURCE_DIR=${PROJECT_SOURCE_DIR} -DUHMM_BUILD_DIR=${PROJECT_BINARY_DIR}
          -DWORK_DIR=${uhmm_deb_work} -DROOT=${uhmm_deb_root} -DCONFIG=$<CONFIG> -DCPACK=${CMAKE_CPACK_COMMAND}
          -DDPKG=${UHMM_DPKG_EXECUTABLE} -DDPKG_DEB=${UHMM_DPKG_DEB_EXECUTABLE} -DPACKAGES=${uhmm_packages}
          -DPUBLIC_HEADERS=${uhmm_package_headers} -DKERNEL_HEADERS=${uhmm_package_kernel_headers}
          -DVERSION=${PROJECT_VERSION} -DSOVERSION=${uhmm_soversion} -DPREFIX=${CMAKE_INSTALL_PREFIX}
          -DLIBDIR=${CMAKE_INSTALL_LIBDIR} -DINCLUDEDIR=${CMAKE_INSTALL_INCLUDEDIR} -DBINDIR=${CMAKE_INSTALL_BINDIR}
          -P ${uhmm_package_script})
set_tests_properties(package_deb PROPERTIES FIXTURES_SETUP uhmm_packaged TIMEOUT 300
  RESOURCE_LOCK uhmm_build_tree_install)  # see install_prefix

# The install tests' consumers, pointed at the extracted packages instead of a `cmake --install` prefix.
set(uhmm_deb_consumer_args ${uhmm_install_args})
list(FILTER uhmm_deb_consumer_args EXCLUDE REGEX "^-D(PREFIX|WORK_DIR)=")
list(APPEND uhmm_deb_consumer_args -DPREFIX=${uhmm_deb_root}${CMAKE_INSTALL_PREFIX} -DWORK_DIR=${uhmm_deb_work})
foreach(step IN ITEMS find_package pkg_config)
  add_test(NAME package_deb_${step}
    COMMAND ${CMAKE_COMMAND} -DSTEP=${step} ${uhmm_deb_consumer_args} -P ${uhmm_install_script})
  set_tests_properties(package_deb_${step} PROPERTIES FIXTURES_REQUIRED uhmm_packaged TIMEOUT 300)
endforeach()
# uhmm.pc holds the packages' real prefix: the sysroot puts the extracted tree in front of it.
set_tests_properties(package_deb_pkg_config PROPERTIES ENVIRONMENT "PKG_CONFIG_SYSROOT_DIR=${uhmm_deb_root}")
if(NOT UHMM_PKG_CONFIG_EXECUTABLE)
  set_tests_properties(package_deb_pkg_config PROPERTIES DISABLED TRUE)
endif()
if(NOT UHMM_DPKG_DEB_EXECUTABLE OR NOT UHMM_DPKG_EXECUTABLE OR NOT UHMM_DPKG_SHLIBDEPS_EXECUTABLE)
  # Not a Debian system (or no dpkg-dev): shown as "Not Run (Disabled)".
  set_tests_properties(package_deb package_deb_find_package package_deb_pkg_config PROPERTIES DISABLED TRUE)
endif()
