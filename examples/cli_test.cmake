# cmake -D PROGRAM=... -D ARGS="a b" -D STATUS=n -D EXPECT="re1 re2" -P cli_test.cmake: runs
# PROGRAM with ARGS (split at spaces) and fails unless it exits with STATUS and its output (stdout
# and stderr) matches every regular expression in EXPECT (split at spaces).
separate_arguments(args UNIX_COMMAND "${ARGS}")
separate_arguments(expect UNIX_COMMAND "${EXPECT}")
execute_process(COMMAND ${PROGRAM} ${args} RESULT_VARIABLE status OUTPUT_VARIABLE out
                ERROR_VARIABLE out)
if(NOT status STREQUAL STATUS)
  message(FATAL_ERROR "${PROGRAM} ${ARGS}: exit status ${status}, expected ${STATUS}:\n${out}")
endif()
foreach(re IN LISTS expect)
  if(NOT out MATCHES "${re}")
    message(FATAL_ERROR "${PROGRAM} ${ARGS}: the output does not match '${re}':\n${out}")
  endif()
endforeach()
message(STATUS "${PROGRAM} ${ARGS}: exit status ${status}\n${out}")
