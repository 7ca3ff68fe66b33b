# find_package(dhp) with components it cannot give: each must fail at configure time with a
# message that names the component and the reason; an optional one must not fail.
#   cmake -DSOURCE_DIR=<components project> -DPREFIX=<dhp install> -DBUILD=<scratch>
#         -DHAVE_TORCH=ON|OFF -DHAVE_MPI=ON|OFF [-DGENERATOR=..] -P component_errors.cmake
cmake_minimum_required(VERSION 3.25)
set(failures "")

# configure(<name> <expect: FAIL|OK> <regex> <cmake args...>)
function(configure name expect regex)
  set(build ${BUILD}/${name})
  file(REMOVE_RECURSE ${build})
  set(tools "")
  if(GENERATOR)
    list(APPEND tools -G ${GENERATOR})
  endif()
  execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${build} ${tools}
                          -DCMAKE_PREFIX_PATH=${PREFIX} ${ARGN}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  # CMake wraps long messages: compare with every run of white space as one space.
  string(REGEX REPLACE "[ \t\r\n]+" " " output "${out}${err}")
  if(expect STREQUAL "FAIL" AND rc EQUAL 0)
    set(problem "configured, but should have failed")
  elseif(expect STREQUAL "OK" AND NOT rc EQUAL 0)
    set(problem "failed (${rc})")
  elseif(NOT output MATCHES "${regex}")
    set(problem "output does not match '${regex}'")
  else()
    message("${name}: ok")
    return()
  endif()
  set(failures ${failures} "${name}: ${problem}:\n${output}" PARENT_SCOPE)
endfunction()

configure(unknown FAIL "unknown component 'nonesuch' \\(dhp's components: core planner kernels runtime torch\\)"
          -DDHP_COMPONENTS=planner,nonesuch)
if(HAVE_TORCH)
  configure(torch_without_libtorch FAIL
            "component 'torch': it needs Torch, which was not found \\(CMAKE_DISABLE_FIND_PACKAGE_Torch is set\\)"
            -DDHP_COMPONENTS=torch -DCMAKE_DISABLE_FIND_PACKAGE_Torch=ON)
  configure(optional_torch_without_libtorch OK "dhp_torch_FOUND=FALSE dhp::torch=NO"
            -DDHP_COMPONENTS=planner -DDHP_OPTIONAL_COMPONENTS=torch
            -DCMAKE_DISABLE_FIND_PACKAGE_Torch=ON)
  # Without COMPONENTS every installed component is required, LibTorch's included.
  configure(everything_without_libtorch FAIL "component 'torch': it needs Torch"
            -DCMAKE_DISABLE_FIND_PACKAGE_Torch=ON)
else()
  configure(torch_not_built FAIL "component 'torch': this installation of dhp was built without it"
            -DDHP_COMPONENTS=torch)
endif()
if(HAVE_MPI)
  configure(runtime_without_mpi FAIL
            "component 'runtime': it needs MPI, which was not found \\(CMAKE_DISABLE_FIND_PACKAGE_MPI is set\\)"
            -DDHP_COMPONENTS=runtime -DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON)
endif()

if(failures)
  list(JOIN failures "\n" failures)
  message(FATAL_ERROR "${failures}")
endif()
