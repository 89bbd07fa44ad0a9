# Shared by the cmake -P scripts of tests/install/.

# Runs a command; on failure names what failed, shows its output and stops.
# It may take run_timeout seconds (240 unless the caller sets it).
function(run what)
  if(NOT DEFINED run_timeout)
    set(run_timeout 240)
  endif()
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out TIMEOUT ${run_timeout})
  message("${out}")
  if(NOT rc EQUAL 0)
    list(JOIN ARGN " " cmd)
    message(FATAL_ERROR "${what} failed (${rc}): ${cmd}")
  endif()
endfunction()
