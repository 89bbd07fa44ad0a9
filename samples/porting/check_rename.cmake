# cmake -DCUDA_SOURCE=... -DPORT=... -P check_rename.cmake: fails unless PORT,
# from its first #include on, is CUDA_SOURCE with cuda_runtime.h replaced by
# uhmm/uhmm.h and every "cuda" by "uhmm" (the porting guide's promise).
function(code_of file out)
  file(READ ${file} text)
  string(FIND "${text}" "#include" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "${file} has no #include")
  endif()
  string(SUBSTRING "${text}" ${at} -1 code)
  set(${out} "${code}" PARENT_SCOPE)
endfunction()

code_of(${CUDA_SOURCE} cuda)
code_of(${PORT} port)
string(REPLACE "#include <cuda_runtime.h>" "#include <uhmm/uhmm.h>" renamed "${cuda}")
string(REPLACE "cuda" "uhmm" renamed "${renamed}")
if(NOT renamed STREQUAL port)
  file(WRITE ${CMAKE_CURRENT_BINARY_DIR}/renamed.c "${renamed}")
  message(FATAL_ERROR "${PORT} is not ${CUDA_SOURCE} renamed: compare it with ${CMAKE_CURRENT_BINARY_DIR}/renamed.c")
endif()
message("${PORT}: the CUDA program with its names renamed, nothing else")
