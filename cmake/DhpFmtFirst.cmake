# dhp_fmt_first_dir(<out-var> <dir>): makes <dir> a directory holding only `fmt`, a link to
# the headers of the fmt that fmt::fmt names, and returns <dir> in <out-var>.
#
# Why: LibTorch 2.x ships its own fmt headers (fmt 12 in 2.11) in its include directory. A
# translation unit that sees LibTorch's include directories before fmt's would compile
# dhp's headers and spdlog against that fmt, not the one dhp and spdlog were built with:
# spdlog fails to compile and fmt's compiled part does not match. Putting <dir> ahead of
# every other include directory makes <fmt/...> mean the linked fmt again, without putting
# the rest of fmt's directory (often /usr/include) ahead of anything.
#
# Used by dhp's own build (for dhp_torch) and by the installed package (for a trainer that
# links dhp::torch): each creates the link in its own build tree, to the fmt it found, so
# the installed package holds no link into the machine dhp was built on.
function(dhp_fmt_first_dir out dir)
  if(NOT TARGET fmt::fmt)
    message(FATAL_ERROR "dhp: fmt::fmt is not defined: find_package(fmt) first")
  endif()
  # fmt::fmt may be an alias (fmt-header-only builds) or an imported target; either way
  # its include directories hold fmt/format.h.
  get_target_property(_fmt_dirs fmt::fmt INTERFACE_INCLUDE_DIRECTORIES)
  set(_fmt_include "")
  foreach(_candidate IN LISTS _fmt_dirs)
    if(NOT _fmt_include AND EXISTS "${_candidate}/fmt/format.h")
      set(_fmt_include "${_candidate}")
    endif()
  endforeach()
  if(NOT _fmt_include)
    message(FATAL_ERROR "dhp: no fmt/format.h under fmt::fmt's include directories "
                        "(${_fmt_dirs}); point fmt_DIR at an fmt installation")
  endif()

  file(MAKE_DIRECTORY "${dir}")
  # Re-created on every configure: fmt may have been found somewhere else this time.
  # REMOVE_RECURSE removes a link itself, never what it points to (and a copy made below).
  file(REMOVE_RECURSE "${dir}/fmt")
  file(CREATE_LINK "${_fmt_include}/fmt" "${dir}/fmt" RESULT _link_result SYMBOLIC)
  if(NOT _link_result EQUAL 0)
    # No symbolic links here (some file systems): a copy of the headers does the same.
    file(COPY "${_fmt_include}/fmt" DESTINATION "${dir}")
  endif()
  set(${out} "${dir}" PARENT_SCOPE)
endfunction()
