# Installs the libraries, the public headers and a CMake package with components:
#   find_package(dhp REQUIRED COMPONENTS planner runtime)
#   target_link_libraries(trainer PRIVATE dhp::planner dhp::runtime)
# Each component has its own export file (dhp<Component>Targets.cmake) that dhpConfig.cmake
# loads only when the component is asked for, after finding that component's dependencies
# on the trainer's machine: a planner-only trainer never needs MPI, CUDA or LibTorch, and
# no path of the machine dhp was built on is installed.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(DHP_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/dhp)
# In dependency order: each needs only those before it (see dhpConfig.cmake.in).
set(_dhp_components core planner kernels runtime torch)

# _dhp_libraries_in(<out> <dir>): the library targets defined in <dir> and below, so that a
# library added in a new subdirectory is installed without a change here.
function(_dhp_libraries_in out dir)
  get_property(_targets DIRECTORY ${dir} PROPERTY BUILDSYSTEM_TARGETS)
  get_property(_subdirs DIRECTORY ${dir} PROPERTY SUBDIRECTORIES)
  set(_found "")
  foreach(_target IN LISTS _targets)
    get_target_property(_type ${_target} TYPE)
    if(_type MATCHES "^(STATIC|SHARED|OBJECT|INTERFACE)_LIBRARY$")
      list(APPEND _found ${_target})
    endif()
  endforeach()
  foreach(_subdir IN LISTS _subdirs)
    _dhp_libraries_in(_sub_found ${_subdir})
    list(APPEND _found ${_sub_found})
  endforeach()
  set(${out} ${_found} PARENT_SCOPE)
endfunction()

# _dhp_component_file(<out> <component>): dhp<Component>Targets, the export set and file name.
function(_dhp_component_file out component)
  string(SUBSTRING ${component} 0 1 _first)
  string(TOUPPER ${_first} _first)
  string(SUBSTRING ${component} 1 -1 _rest)
  set(${out} dhp${_first}${_rest}Targets PARENT_SCOPE)
endfunction()

# A library's component: its DHP_INSTALL_COMPONENT property where set (dhp_torch), else the
# top-level directory that defines it. dhp_warnings is only a link-only dependency of the
# static libraries (its flags do not reach a trainer), exported because CMake needs its name.
set(_dhp_libraries_core dhp_warnings)
foreach(_dir_component src:core planner:planner kernels:kernels runtime:runtime)
  string(REPLACE ":" ";" _pair ${_dir_component})
  list(GET _pair 0 _dir)
  list(GET _pair 1 _default_component)
  _dhp_libraries_in(_libraries ${PROJECT_SOURCE_DIR}/${_dir})
  foreach(_library IN LISTS _libraries)
    get_target_property(_component ${_library} DHP_INSTALL_COMPONENT)
    if(NOT _component)
      set(_component ${_default_component})
    endif()
    if(NOT _component IN_LIST _dhp_components)
      message(FATAL_ERROR "${_library}: DHP_INSTALL_COMPONENT '${_component}' is none of "
                          "${_dhp_components}")
    endif()
    list(APPEND _dhp_libraries_${_component} ${_library})
  endforeach()
endforeach()

# One export set per component that has libraries. A dependency on another component's
# library is written as dhp::<name>, which dhpConfig.cmake loads first.
set(DHP_INSTALLED_COMPONENTS "")
foreach(_component IN LISTS _dhp_components)
  if(NOT _dhp_libraries_${_component})
    continue()
  endif()
  list(APPEND DHP_INSTALLED_COMPONENTS ${_component})
  foreach(_library IN LISTS _dhp_libraries_${_component})
    string(REGEX REPLACE "^dhp_" "" _name ${_library})
    set_target_properties(${_library} PROPERTIES EXPORT_NAME ${_name})
  endforeach()
  _dhp_component_file(_export ${_component})
  install(TARGETS ${_dhp_libraries_${_component}} EXPORT ${_export}
    LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
    ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
    RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
    INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
  install(EXPORT ${_export} NAMESPACE dhp:: DESTINATION ${DHP_INSTALL_CMAKEDIR})
endforeach()

# Every public header, whichever component it belongs to: a header of a component that was
# not built includes what that component needs and is simply not used.
install(DIRECTORY include/dhp DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

configure_package_config_file(cmake/dhpConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/dhpConfig.cmake
  INSTALL_DESTINATION ${DHP_INSTALL_CMAKEDIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/dhpConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
# FindNCCL.cmake: the runtime component finds NCCL with it. DhpFmtFirst.cmake: the torch
# component makes its fmt-first include directory with it.
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/dhpConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/dhpConfigVersion.cmake
  cmake/FindNCCL.cmake
  cmake/DhpFmtFirst.cmake
  DESTINATION ${DHP_INSTALL_CMAKEDIR})
