# Resolves the AUTO/ON/OFF switches into DHP_HAVE_* variables and sets warnings and sanitizers.

function(_dhp_resolve switch found out)
  if(${switch} STREQUAL "OFF")
    set(${out} OFF PARENT_SCOPE)
  elseif(${found})
    set(${out} ON PARENT_SCOPE)
  elseif(${switch} STREQUAL "ON")
    message(FATAL_ERROR "${switch} requested but the dependency was not found")
  else()
    set(${out} OFF PARENT_SCOPE)
  endif()
endfunction()

macro(dhp_find_optional_dependencies)
  # CUDA (the kernels: the toolkit is enough, so that every CUDA source compiles wherever
  # nvcc is, GPU or not) and NCCL (the runtime's GPU backend, when found as well).
  set(_cuda_found OFF)
  set(DHP_HAVE_NCCL OFF)
  if(NOT DHP_WITH_CUDA STREQUAL "OFF")
    include(CheckLanguage)
    if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
      set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
    endif()
    check_language(CUDA)
    if(CMAKE_CUDA_COMPILER)
      find_package(CUDAToolkit QUIET)
      if(CUDAToolkit_FOUND)
        set(_cuda_found ON)
        find_package(NCCL QUIET)  # cmake/FindNCCL.cmake, installed with the package too
      endif()
    endif()
  endif()
  _dhp_resolve(DHP_WITH_CUDA _cuda_found DHP_HAVE_CUDA)
  if(DHP_HAVE_CUDA AND NCCL_FOUND)
    set(DHP_HAVE_NCCL ON)
  endif()
  if(DHP_HAVE_CUDA)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      # Hopper first (sm_90a for wgmma), Ampere as the portable fallback.
      set(CMAKE_CUDA_ARCHITECTURES "80;90a")
    endif()
    set(CMAKE_CUDA_STANDARD 17)  # CMake 3.25 does not know nvcc's C++20 flag
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    enable_language(CUDA)
  endif()

  # MPI
  set(_mpi_found OFF)
  if(NOT DHP_WITH_MPI STREQUAL "OFF")
    find_package(MPI QUIET COMPONENTS CXX)
    if(MPI_CXX_FOUND)
      set(_mpi_found ON)
    endif()
  endif()
  _dhp_resolve(DHP_WITH_MPI _mpi_found DHP_HAVE_MPI)

  # LibTorch (Debian's 1.13 here, 2.x on GPU machines)
  set(_torch_found OFF)
  if(NOT DHP_WITH_TORCH STREQUAL "OFF")
    find_package(Torch QUIET)
    if(Torch_FOUND)
      set(_torch_found ON)
    endif()
  endif()
  _dhp_resolve(DHP_WITH_TORCH _torch_found DHP_HAVE_TORCH)

  message(STATUS "dhp: CUDA=${DHP_HAVE_CUDA} NCCL=${DHP_HAVE_NCCL} MPI=${DHP_HAVE_MPI} "
                 "LibTorch=${DHP_HAVE_TORCH}")
endmacro()

add_library(dhp_warnings INTERFACE)
target_compile_options(dhp_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wno-unused-parameter>)

# DHP_SANITIZE is a list: address, undefined, thread, or "address;undefined" for both at once.
# Thread cannot be combined with address (the runtimes conflict).
set(_dhp_sanitizers "")
foreach(_sanitizer IN LISTS DHP_SANITIZE)
  if(NOT _sanitizer MATCHES "^(address|undefined|thread)$")
    message(FATAL_ERROR "DHP_SANITIZE: unknown sanitizer '${_sanitizer}' (address, undefined, thread)")
  endif()
  list(APPEND _dhp_sanitizers ${_sanitizer})
endforeach()
if("thread" IN_LIST _dhp_sanitizers AND "address" IN_LIST _dhp_sanitizers)
  message(FATAL_ERROR "DHP_SANITIZE: thread and address cannot be combined")
endif()
if(_dhp_sanitizers)
  list(JOIN _dhp_sanitizers "," _dhp_sanitize_flag)
  # CXX only: nvcc does not take -fsanitize (device code is checked with compute-sanitizer).
  add_compile_options("$<$<COMPILE_LANGUAGE:CXX>:-fsanitize=${_dhp_sanitize_flag};-fno-omit-frame-pointer>")
  add_link_options(-fsanitize=${_dhp_sanitize_flag})
  if("undefined" IN_LIST _dhp_sanitizers)
    # Any UB finding fails the test instead of printing and carrying on.
    add_compile_options("$<$<COMPILE_LANGUAGE:CXX>:-fno-sanitize-recover=undefined>")
  endif()
endif()
