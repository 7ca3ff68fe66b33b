#include "dhp/error.hpp"

namespace dhp {

const char* to_string(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::InvalidArgument:
      return "invalid argument";
    case ErrorKind::InvalidInput:
      return "invalid input";
    case ErrorKind::DoesNotFit:
      return "does not fit";
    case ErrorKind::Communication:
      return "communication error";
    case ErrorKind::Internal:
      return "internal error";
  }
  return "unknown error";
}

Error::Error(ErrorKind kind, const std::string& message)
    : std::runtime_error(fmt::format("dhp: {}: {}", to_string(kind), message)),
      kind_(kind),
      message_(message) {}

}  // namespace dhp
