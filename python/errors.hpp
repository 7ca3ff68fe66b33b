// dhp::Error -> the Python exception class of its kind (python/dhp/_errors.py), shared by
// the extension modules dhp._dhp and dhp._torch. The classes live in Python so that both
// modules raise the same ones, whatever pybind11 each was built with.
#pragma once

#include <pybind11/pybind11.h>

#include <exception>

#include "dhp/error.hpp"

namespace dhp_python {

inline const char* error_class(dhp::ErrorKind kind) {
  switch (kind) {
    case dhp::ErrorKind::InvalidArgument:
      return "InvalidArgumentError";
    case dhp::ErrorKind::InvalidInput:
      return "InvalidInputError";
    case dhp::ErrorKind::DoesNotFit:
      return "DoesNotFitError";
    case dhp::ErrorKind::Communication:
      return "CommunicationError";
    case dhp::ErrorKind::Internal:
      return "InternalError";
  }
  return "Error";
}

// Sets the Python error for `e` (the GIL is held by the translator's caller).
inline void set_python_error(const dhp::Error& e) {
  namespace py = pybind11;
  try {
    const py::object cls = py::module_::import("dhp._errors").attr(error_class(e.kind()));
    PyErr_SetString(cls.ptr(), e.message().c_str());
  } catch (const py::error_already_set&) {
    // dhp._errors not importable (a broken install): still say what went wrong.
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
}

inline void register_error_translator() {
  pybind11::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const dhp::Error& e) {
      set_python_error(e);
    }
  });
}

}  // namespace dhp_python
