# Debian packages from the install components (cpack -G DEB; scripts/package.sh):
#   libuhmm<SOVERSION>   Runtime       libuhmm.so.<SOVERSION> (and the full version)
#   libuhmm-dev          Development   headers, libuhmm.so, the CMake package, uhmm.pc
#   uhmm-tools           Tools         uhmm-info
#   uhmm-backend-<name>  Backend_<name> one GPU plugin each, where built
# The plugins are packages of their own because each pulls in its vendor's
# runtime (libamdhip64 for HIP): libuhmm itself links no GPU runtime, and a
# machine without ROCm or CUDA must be able to install it. Dependencies on
# system libraries come from dpkg-shlibdeps; those between uhmm's packages are
# on the exact version (the plugin ABI and the 0.x API change together).
# Included by the top-level CMakeLists.txt only: an embedding parent keeps its own CPack setup.

set(CPACK_PACKAGE_NAME uhmm)
set(CPACK_PACKAGE_VENDOR uhmm)
set(CPACK_PACKAGE_CONTACT "uhmm maintainers <uhmm@localhost>" CACHE STRING "Maintainer of the Debian packages")
mark_as_advanced(CPACK_PACKAGE_CONTACT)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
# CPack's own default summary, which it does not put in front of a package's
# description: each component's description starts with its own synopsis.
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${CMAKE_PROJECT_NAME} built using CMake")
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_DIRECTORY ${PROJECT_BINARY_DIR}/packages)
# The packages install where this build was configured for: the plugin
# directory is compiled into libuhmm (UHMM_PLUGIN_INSTALL_DIR), so a package
# elsewhere would not find its plugins. scripts/package.sh configures for /usr.
set(CPACK_PACKAGING_INSTALL_PREFIX ${CMAKE_INSTALL_PREFIX})
if(NOT CMAKE_INSTALL_PREFIX STREQUAL "/usr")
  message(STATUS "uhmm: packages install under ${CMAKE_INSTALL_PREFIX} "
                 "(configure with -DCMAKE_INSTALL_PREFIX=/usr for Debian's layout, as scripts/package.sh does)")
endif()
set(CPACK_STRIP_FILES ON)

set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_ENABLE_COMPONENT_DEPENDS ON)
# uhmm-info needs libuhmm.so.0, which is in no installed package yet: found here,
# it is left to the component dependency on the runtime package.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS_PRIVATE_DIRS ${PROJECT_BINARY_DIR})
set(CPACK_DEBIAN_PACKAGE_SECTION libs)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)

get_target_property(uhmm_soversion uhmm SOVERSION)
set(uhmm_runtime_package libuhmm${uhmm_soversion})
set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME ${uhmm_runtime_package})
# Its control files, written here rather than by CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS,
# which applies to every package and warns about the plugins (no SONAME).
# shlibs: what links libuhmm depends on the exact version, since a 0.x minor
# release may change the ABI under the same SONAME. triggers: ldconfig, under
# any prefix (CPack adds its own postinst call for /usr only).
set(uhmm_runtime_control ${PROJECT_BINARY_DIR}/cpack/runtime)
file(WRITE ${uhmm_runtime_control}/shlibs
  "libuhmm ${uhmm_soversion} ${uhmm_runtime_package} (= ${PROJECT_VERSION}-${CPACK_DEBIAN_PACKAGE_RELEASE})\n")
file(WRITE ${uhmm_runtime_control}/triggers "activate-noawait ldconfig\n")
set(CPACK_DEBIAN_RUNTIME_PACKAGE_CONTROL_EXTRA ${uhmm_runtime_control}/shlibs ${uhmm_runtime_control}/triggers)
set(CPACK_COMPONENT_RUNTIME_DESCRIPTION "${PROJECT_DESCRIPTION} - shared library
uhmm gives an application managed memory whose 4 KiB pages migrate between
host RAM and a device on demand. This package holds libuhmm with its built-in
cpu backend; the GPU backends are plugins in packages of their own.")

set(CPACK_DEBIAN_DEVELOPMENT_PACKAGE_NAME libuhmm-dev)
set(CPACK_DEBIAN_DEVELOPMENT_PACKAGE_SECTION libdevel)
set(CPACK_COMPONENT_DEVELOPMENT_DEPENDS Runtime)
set(CPACK_COMPONENT_DEVELOPMENT_DESCRIPTION "${PROJECT_DESCRIPTION} - development files
Headers, the libuhmm.so link, the CMake package (find_package(uhmm), target
uhmm::uhmm) and the pkg-config file (uhmm.pc) for building against libuhmm.")

set(CPACK_DEBIAN_TOOLS_PACKAGE_NAME uhmm-tools)
set(CPACK_DEBIAN_TOOLS_PACKAGE_SECTION utils)
set(CPACK_COMPONENT_TOOLS_DEPENDS Runtime)
set(CPACK_COMPONENT_TOOLS_DESCRIPTION "${PROJECT_DESCRIPTION} - tools
uhmm-info: the backends and why any is unavailable, the GPUs, the pool
options and the kernel's userfaultfd features.")

set(uhmm_backend_packages)
foreach(backend IN ITEMS cuda hip)
  if(TARGET uhmm-backend-${backend})
    string(TOUPPER ${backend} upper)
    set(CPACK_DEBIAN_BACKEND_${upper}_PACKAGE_NAME uhmm-backend-${backend})
    set(CPACK_COMPONENT_BACKEND_${upper}_DEPENDS Runtime)
    set(CPACK_COMPONENT_BACKEND_${upper}_DESCRIPTION "${PROJECT_DESCRIPTION} - ${backend} backend plugin
The ${backend} backend plugin (libuhmm-backend-${backend}.so), which libuhmm
loads when a ${backend} device is asked for.")
    list(APPEND uhmm_backend_packages uhmm-backend-${backend})
  endif()
endforeach()
if(uhmm_backend_packages)
  list(JOIN uhmm_backend_packages ", " CPACK_DEBIAN_RUNTIME_PACKAGE_SUGGESTS)
endif()

include(CPack)
