# Compile options every uhmm target shares: warnings, sanitizers, checked builds.
function(uhmm_target_options target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow -Wconversion
    -Wno-sign-conversion -Wnon-virtual-dtor -Wold-style-cast -Wcast-align -Woverloaded-virtual)
  if(UHMM_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  if(UHMM_EXPENSIVE_CHECKS)
    target_compile_definitions(${target} PRIVATE UHMM_EXPENSIVE_CHECKS=1)
  endif()
endfunction()

# Sanitizers apply to everything built here (library, tests, samples), so that
# the executables link the same runtime as the library.
if(UHMM_SANITIZE)
  list(JOIN UHMM_SANITIZE "," uhmm_san)
  add_compile_options(-fsanitize=${uhmm_san} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${uhmm_san})
endif()
