# Installs the build, checks that the install can move (no link, no absolute path in its
# CMake files, nothing outside the usual directories), then moves it: copies it to
# WORK_DIR/moved and removes the original. The consumer tests build against the copy.
#   cmake -DBUILD_DIR=<dhp build> -DWORK_DIR=<scratch> -P install_prefix.cmake
cmake_minimum_required(VERSION 3.25)  # policies of today (links are not followed)
set(original ${WORK_DIR}/original)
set(moved ${WORK_DIR}/moved)
file(REMOVE_RECURSE ${WORK_DIR})

execute_process(COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${original}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install failed (${rc}):\n${out}\n${err}")
endif()

set(problems "")

# Only the C++ package's directories: the Python module is for pip (site-packages), not
# for a C++ prefix.
file(GLOB top RELATIVE ${original} ${original}/*)
foreach(entry IN LISTS top)
  if(NOT entry MATCHES "^(bin|include|lib|lib64|share)$")
    list(APPEND problems "unexpected top-level entry: ${entry}")
  endif()
endforeach()

# No links: a link would point into the file system of the machine dhp was built on.
file(GLOB_RECURSE everything LIST_DIRECTORIES true ${original}/*)
foreach(path IN LISTS everything)
  if(IS_SYMLINK ${path})
    file(READ_SYMLINK ${path} target)
    list(APPEND problems "link: ${path} -> ${target}")
  endif()
endforeach()

# No absolute path in the CMake files outside comments: dependencies are found again where
# the package is used, paths inside the package are relative to the file (_IMPORT_PREFIX).
file(GLOB_RECURSE cmake_files ${original}/*.cmake)
if(NOT cmake_files)
  list(APPEND problems "no CMake files installed")
endif()
foreach(file IN LISTS cmake_files)
  file(STRINGS ${file} lines)
  foreach(line IN LISTS lines)
    if(line MATCHES "^[ \t]*#")
      continue()
    endif()
    if(line MATCHES "(^|[\"'; (=:])/[A-Za-z0-9_.]")
      file(RELATIVE_PATH name ${original} ${file})
      string(REPLACE ";" "\\;" line "${line}")  # one entry of the list, ; and all
      list(APPEND problems "absolute path in ${name}: ${line}")
    endif()
  endforeach()
endforeach()

if(problems)
  list(JOIN problems "\n  " problems)
  message(FATAL_ERROR "the install at ${original} cannot be moved:\n  ${problems}")
endif()

file(COPY ${original}/ DESTINATION ${moved})
file(REMOVE_RECURSE ${original})
message("installed, checked, moved to ${moved} (${original} removed)")
