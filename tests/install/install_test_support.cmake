# Shared by the cmake -P scripts of tests/install/.

# Runs a command; on failure names what failed, shows its output and stops.
# It may take run_timeout seconds (240 unless the caller sets it). A trailing
# `OUTPUT var` sets var to what the command printed.
function(run what)
  cmake_parse_arguments(PARSE_ARGV 1 run "" "OUTPUT" "")
  if(NOT DEFINED run_timeout)
    set(run_timeout 240)
  endif()
  execute_process(COMMAND ${run_UNPARSED_ARGUMENTS} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out
                  TIMEOUT ${run_timeout})
  message("${out}")
  if(NOT rc EQUAL 0)
    list(JOIN run_UNPARSED_ARGUMENTS " " cmd)
    message(FATAL_ERROR "${what} failed (${rc}): ${cmd}")
  endif()
  if(run_OUTPUT)
    set(${run_OUTPUT} "${out}" PARENT_SCOPE)
  endif()
endfunction()
