# ctest case install_consumer: cmake -D BUILD_DIR=... -D WORK_DIR=... -D CONSUMER_DIR=...
#   [-D CONFIG=...] [-D GENERATOR=...] [-D CXX_COMPILER=...] [-D DISTRIBUTED=ON -D MPIEXEC=...]
#   -P run.cmake
set(prefix ${WORK_DIR}/prefix)
set(consumer_build ${WORK_DIR}/build)
if(NOT CONFIG)
  set(CONFIG Release)
endif()
if(NOT DISTRIBUTED)
  set(DISTRIBUTED OFF)
endif()
file(REMOVE_RECURSE ${WORK_DIR})

function(run)
  list(JOIN ARGV " " cmd)
  message(STATUS "+ ${cmd}")
  execute_process(COMMAND ${ARGV} COMMAND_ERROR_IS_FATAL ANY)
endfunction()

run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix} --config ${CONFIG})
run(${CMAKE_COMMAND} -S ${CONSUMER_DIR} -B ${consumer_build} -G ${GENERATOR}
    -D CMAKE_CXX_COMPILER=${CXX_COMPILER} -D CMAKE_BUILD_TYPE=${CONFIG}
    -D CMAKE_PREFIX_PATH=${prefix} -D DISTRIBUTED=${DISTRIBUTED})
run(${CMAKE_COMMAND} --build ${consumer_build} --config ${CONFIG})
find_program(consumer_exe tapegrad_consumer PATHS ${consumer_build}
             PATH_SUFFIXES ${CONFIG} NO_DEFAULT_PATH REQUIRED)
run(${consumer_exe})
if(DISTRIBUTED)
  find_program(consumer_mpi_exe tapegrad_consumer_distributed PATHS ${consumer_build}
               PATH_SUFFIXES ${CONFIG} NO_DEFAULT_PATH REQUIRED)
  run(${MPIEXEC} -n 2 ${consumer_mpi_exe})
endif()
