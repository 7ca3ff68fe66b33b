# dhp_add_gtest_dir(<label> <libs...>): one GoogleTest executable per test_*.cpp in the
# calling directory, registered with CTest under the given label.
function(dhp_add_gtest_dir label)
  foreach(lib IN LISTS ARGN)
    if(lib MATCHES "^dhp_" AND NOT TARGET ${lib})
      return()  # the component is not built yet
    endif()
  endforeach()
  file(GLOB _tests CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/test_*.cpp)
  foreach(src IN LISTS _tests)
    get_filename_component(name ${src} NAME_WE)
    set(target ${label}_${name})
    add_executable(${target} ${src})
    target_link_libraries(${target} PRIVATE ${ARGN} GTest::gtest GTest::gtest_main dhp_warnings)
    target_include_directories(${target} PRIVATE ${PROJECT_SOURCE_DIR} ${CMAKE_CURRENT_SOURCE_DIR})
    target_compile_definitions(${target} PRIVATE DHP_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
    # DHP_TEST_SANITIZER_PROPERTIES: set by tests/CMakeLists.txt in sanitizer builds.
    gtest_discover_tests(${target} PROPERTIES LABELS ${label} ${DHP_TEST_SANITIZER_PROPERTIES}
                         DISCOVERY_TIMEOUT 60)
  endforeach()
endfunction()
