# Configures, builds and runs a consumer project against an installed dhp, as a trainer
# would: find_package(dhp) through CMAKE_PREFIX_PATH.
#   cmake -DSOURCE_DIR=<consumer> -DPREFIX=<dhp install> -DBUILD=<scratch build dir>
#         [-DGENERATOR=..] [-DCXX_COMPILER=..] [-DCXX_FLAGS=..] [-DLINKER_FLAGS=..]
#         [-DCONFIGURE_ARGS=a|b|..] [-DRUN_PREFIX=mpirun|-np|2] -P run_consumer.cmake
# Lists are |-separated (a ; would not survive the test command line).
cmake_minimum_required(VERSION 3.25)
string(REPLACE "|" ";" configure_args "${CONFIGURE_ARGS}")
string(REPLACE "|" ";" run_prefix "${RUN_PREFIX}")
file(REMOVE_RECURSE ${BUILD})

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    list(JOIN ARGN " " command)
    message(FATAL_ERROR "failed (${rc}): ${command}\n${out}\n${err}")
  endif()
  message("${out}")
endfunction()

set(tools "")
if(GENERATOR)
  list(APPEND tools -G ${GENERATOR})
endif()
if(CXX_COMPILER)
  list(APPEND tools -DCMAKE_CXX_COMPILER=${CXX_COMPILER})
endif()
# Sanitizer builds: the installed static libraries need the sanitizer's runtime.
if(CXX_FLAGS)
  list(APPEND tools "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}")
endif()
if(LINKER_FLAGS)
  list(APPEND tools "-DCMAKE_EXE_LINKER_FLAGS=${LINKER_FLAGS}")
endif()

run(${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${BUILD} ${tools} -DCMAKE_BUILD_TYPE=Release
    -DCMAKE_PREFIX_PATH=${PREFIX} ${configure_args})
run(${CMAKE_COMMAND} --build ${BUILD})
run(${run_prefix} ${BUILD}/consumer)
