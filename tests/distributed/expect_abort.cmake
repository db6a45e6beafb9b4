# ctest driver of an abort scenario (test_abort.cpp):
#   cmake -D LAUNCH="mpirun;-np;2;..." -D FILTER=AbortScenario.DISABLED_x -D EXPECT="text"
#         -D TIME_LIMIT=60 -P expect_abort.cmake
# Passes when the job ends by itself within TIME_LIMIT seconds with a non-zero status, its
# output contains EXPECT (the failing rank's message, printed just before MPI_Abort), and no rank
# got past the failure point. (Open MPI's own "MPI_ABORT was invoked" notice is not required:
# Open MPI 4.1 sometimes loses it, "ORTE_ERROR_LOG: Data unpack would read past end of buffer".)
execute_process(
  COMMAND ${LAUNCH} --gtest_also_run_disabled_tests --gtest_filter=${FILTER}
  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc
  TIMEOUT ${TIME_LIMIT})
set(all "${out}\n${err}")
message(STATUS "exit status: ${rc}\n${all}")
if(rc MATCHES "timeout" OR rc MATCHES "Process terminated")
  message(FATAL_ERROR "the job did not end within ${TIME_LIMIT} s: a rank was left waiting")
endif()
if(rc EQUAL 0)
  message(FATAL_ERROR "the job ended with status 0; expected an abort")
endif()
string(FIND "${all}" "${EXPECT}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "the output lacks \"${EXPECT}\"")
endif()
string(FIND "${all}" "scenario was not aborted" past)
if(NOT past EQUAL -1)
  message(FATAL_ERROR "a rank got past the failure point")
endif()
