# Installs libuhmm, its public headers, a CMake package (find_package(uhmm) ->
# uhmm::uhmm) and a pkg-config file. Included by the top-level CMakeLists.txt
# once the `uhmm` target exists; tests/install/ proves that both consumers work.
include(CMakePackageConfigHelpers)

set(UHMM_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/uhmm"
  CACHE STRING "Where uhmmConfig.cmake is installed, relative to the prefix")
mark_as_advanced(UHMM_INSTALL_CMAKEDIR)

# Executables installed later (tools, samples) find libuhmm next to them.
if(NOT DEFINED CMAKE_INSTALL_RPATH)
  file(RELATIVE_PATH uhmm_bin_to_lib "/prefix/${CMAKE_INSTALL_BINDIR}" "/prefix/${CMAKE_INSTALL_LIBDIR}")
  set(CMAKE_INSTALL_RPATH "$ORIGIN/${uhmm_bin_to_lib}")
endif()

install(TARGETS uhmm EXPORT uhmmTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Runtime NAMELINK_COMPONENT Development
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Development
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT Runtime)

# Public headers only (C++ .hpp and C .h, cmake/uhmm_headers.cmake): include/uhmm/detail/ is the
# library's own (it needs spdlog). kernels/uhmm/ (device_span.hpp & co.) installs into the same include/uhmm/.
set(uhmm_installed_headers ${uhmm_public_headers})
list(TRANSFORM uhmm_installed_headers PREPEND include/)
set(uhmm_installed_kernel_headers ${uhmm_kernel_headers})
list(TRANSFORM uhmm_installed_kernel_headers PREPEND kernels/)
install(FILES ${uhmm_installed_headers} ${uhmm_installed_kernel_headers}
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/uhmm COMPONENT Development)

install(EXPORT uhmmTargets NAMESPACE uhmm:: DESTINATION ${UHMM_INSTALL_CMAKEDIR} COMPONENT Development)

configure_package_config_file(cmake/uhmmConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/uhmmConfig.cmake
  INSTALL_DESTINATION ${UHMM_INSTALL_CMAKEDIR})
# 0.x releases may break the API at every minor version.
if(PROJECT_VERSION_MAJOR EQUAL 0)
  set(uhmm_compat SameMinorVersion)
else()
  set(uhmm_compat SameMajorVersion)
endif()
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/uhmmConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY ${uhmm_compat})
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/uhmmConfig.cmake ${CMAKE_CURRENT_BINARY_DIR}/uhmmConfigVersion.cmake
  DESTINATION ${UHMM_INSTALL_CMAKEDIR} COMPONENT Development)

# uhmm.pc: the prefix is the one in force at install time (`cmake --install
# --prefix P` writes P), so it is filled in by install code, not at configure
# time; file(INSTALL) honours DESTDIR. Absolute paths keep pkg-config's
# system-directory filtering working (a stray -I/usr/include breaks libstdc++).
install(CODE "
  set(UHMM_PC_PREFIX \"\${CMAKE_INSTALL_PREFIX}\")
  set(UHMM_PC_LIBDIR \"${CMAKE_INSTALL_LIBDIR}\")
  set(UHMM_PC_INCLUDEDIR \"${CMAKE_INSTALL_INCLUDEDIR}\")
  foreach(dir UHMM_PC_LIBDIR UHMM_PC_INCLUDEDIR)
    if(NOT IS_ABSOLUTE \"\${\${dir}}\")
      set(\${dir} \"\\\${prefix}/\${\${dir}}\")
    endif()
  endforeach()
  set(UHMM_PC_VERSION \"${PROJECT_VERSION}\")
  set(UHMM_PC_DESCRIPTION \"${PROJECT_DESCRIPTION}\")
  configure_file(\"${CMAKE_CURRENT_SOURCE_DIR}/cmake/uhmm.pc.in\" \"${CMAKE_CURRENT_BINARY_DIR}/pkgconfig/uhmm.pc\" @ONLY)
  file(INSTALL DESTINATION \"\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_LIBDIR}/pkgconfig\" TYPE FILE
    FILES \"${CMAKE_CURRENT_BINARY_DIR}/pkgconfig/uhmm.pc\")
" COMPONENT Development)
