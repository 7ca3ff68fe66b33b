// Errors thrown by the planner and the runtime. Every message says what was wrong and
// with which values; the category lets callers react without parsing text.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace dhp {

enum class ErrorKind {
  InvalidArgument,  // a caller passed a value outside its domain
  InvalidInput,     // a JSON/CSV/batch file is malformed or inconsistent
  DoesNotFit,       // a sample or layout cannot fit in device memory whatever the plan
  Communication,    // a collective failed, timed out, or a peer died
  Internal,         // a broken invariant inside dhp (a bug: please report it)
};

const char* to_string(ErrorKind kind) noexcept;

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message);
  ErrorKind kind() const noexcept { return kind_; }
  // The message without the "dhp: <kind>: " prefix of what(), for wrapping with context.
  const std::string& message() const noexcept { return message_; }

 private:
  ErrorKind kind_;
  std::string message_;
};

// Throws dhp::Error with a fmt-formatted message: DHP_THROW(InvalidArgument, "ranks={} < 1", n)
template <typename... Args>
[[noreturn]] void throw_error(ErrorKind kind, fmt::format_string<Args...> f, Args&&... args) {
  throw Error(kind, fmt::format(f, std::forward<Args>(args)...));
}

#define DHP_THROW(kind, ...) ::dhp::throw_error(::dhp::ErrorKind::kind, __VA_ARGS__)
#define DHP_CHECK(cond, kind, ...)             \
  do {                                         \
    if (!(cond)) DHP_THROW(kind, __VA_ARGS__); \
  } while (0)

}  // namespace dhp
