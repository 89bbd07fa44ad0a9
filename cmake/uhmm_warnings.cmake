# Compile options every uhmm target shares: warnings, sanitizers, checked builds.
#
# Sanitizers are set per target, through the interface library uhmm_sanitize,
# never globally (no CMAKE_CXX_FLAGS, no add_compile_options): a parent that
# embeds uhmm keeps its own flags, and nvcc and hipcc see none (the options are
# for C and C++ sources only). Every target built here links it, so that the
# executables link the same runtime as the library; uhmm_check_sanitize_linked()
# fails the configure step if one does not.
add_library(uhmm_sanitize INTERFACE)
if(UHMM_SANITIZE)
  list(JOIN UHMM_SANITIZE "," uhmm_san)
  target_compile_options(uhmm_sanitize INTERFACE
    $<$<COMPILE_LANGUAGE:C,CXX>:-fsanitize=${uhmm_san};-fno-omit-frame-pointer;-fno-sanitize-recover=all>)
  target_link_options(uhmm_sanitize INTERFACE -fsanitize=${uhmm_san})
endif()

function(uhmm_target_options target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow -Wconversion
    -Wno-sign-conversion -Wnon-virtual-dtor -Wold-style-cast -Wcast-align -Woverloaded-virtual)
  if(UHMM_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  if(UHMM_EXPENSIVE_CHECKS)
    target_compile_definitions(${target} PRIVATE UHMM_EXPENSIVE_CHECKS=1)
  endif()
  target_link_libraries(${target} PRIVATE uhmm_sanitize)
endfunction()

# Every target that compiles or links code, in this directory and below, links
# uhmm_sanitize (directly: a private link is not inherited). Called once, at the
# end of the top-level CMakeLists.txt, when every target exists.
function(uhmm_check_sanitize_linked dir)
  get_property(targets DIRECTORY ${dir} PROPERTY BUILDSYSTEM_TARGETS)
  foreach(target IN LISTS targets)
    get_target_property(type ${target} TYPE)
    if(type MATCHES "^(EXECUTABLE|SHARED_LIBRARY|MODULE_LIBRARY|STATIC_LIBRARY|OBJECT_LIBRARY)$")
      get_target_property(links ${target} LINK_LIBRARIES)
      if(NOT "uhmm_sanitize" IN_LIST links)
        message(FATAL_ERROR "uhmm: target ${target} (${dir}) does not link uhmm_sanitize: "
                            "call uhmm_target_options(${target}) or link it")
      endif()
    endif()
  endforeach()
  get_property(subdirs DIRECTORY ${dir} PROPERTY SUBDIRECTORIES)
  foreach(subdir IN LISTS subdirs)
    uhmm_check_sanitize_linked(${subdir})
  endforeach()
endfunction()
