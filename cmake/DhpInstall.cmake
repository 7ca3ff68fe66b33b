# Installs the libraries, public headers and a CMake package: find_package(dhp) then
# target_link_libraries(trainer PRIVATE dhp::planner dhp::runtime).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(_dhp_export_targets dhp_core)
foreach(t dhp_planner dhp_kernels dhp_kernels_cuda dhp_runtime dhp_torch)
  if(TARGET ${t})
    list(APPEND _dhp_export_targets ${t})
  endif()
endforeach()
foreach(t IN LISTS _dhp_export_targets)
  string(REPLACE "dhp_" "" _alias ${t})
  set_target_properties(${t} PROPERTIES EXPORT_NAME ${_alias})
endforeach()

install(TARGETS ${_dhp_export_targets} dhp_warnings EXPORT dhpTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/dhp DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT dhpTargets NAMESPACE dhp:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/dhp)

configure_package_config_file(cmake/dhpConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/dhpConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/dhp)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/dhpConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/dhpConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/dhpConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/dhp)
