// Command lines of dhp's tools (dhp_plan and the benchmark binaries): every option is
// declared once with its help text, so that -h/--help lists them all, an unknown option is
// reported as unknown together with the closest declared one, and values are checked by
// type. run_tool() is the shared main: it maps a bad command line to exit code 2 and a
// dhp::Error to exit code 1, each with its message on stderr.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace dhp {

// A command line the tool cannot run: an unknown option, a missing or malformed value, an
// option that does not apply. Tools exit with code 2 on it (code 1 stays for dhp::Error).
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class CommandLine {
 public:
  // `synopsis`: the usage lines printed first by --help ("dhp_plan --batch FILE ...").
  CommandLine(std::string program, std::string synopsis);

  // Declarations, in the order --help lists them. `name` is the long form ("--batch").
  CommandLine& section(std::string title);  // a heading above the options that follow
  CommandLine& option(std::string name, std::string metavar, std::string help);
  CommandLine& repeatable(std::string name, std::string metavar, std::string help);
  CommandLine& flag(std::string name, std::string help);  // takes no value
  CommandLine& note(std::string text);                    // free text after the options

  // Reads argv: "--name value", "--name=value", switches, -h/--help. Throws UsageError.
  void parse(int argc, const char* const* argv);
  bool help_requested() const { return help_; }
  std::string help() const;
  const std::string& program() const { return program_; }

  // Values. A value option given without a fallback is required.
  bool has(std::string_view name) const;
  std::string value(std::string_view name) const;
  std::string value_or(std::string_view name, std::string fallback) const;
  std::vector<std::string> values(std::string_view name) const;  // every occurrence, in order
  std::int64_t integer(std::string_view name, std::int64_t fallback, std::int64_t min = 0) const;
  double real(std::string_view name, double fallback) const;
  // A comma-separated value ("create,ring", "4,8,16"); empty items are dropped.
  std::vector<std::string> list(std::string_view name, std::vector<std::string> fallback) const;
  std::vector<std::int64_t> integer_list(std::string_view name, std::vector<std::int64_t> fallback,
                                         std::int64_t min = 0) const;
  // One of `choices`; the error lists them.
  std::string choice(std::string_view name, std::initializer_list<std::string_view> choices,
                     std::string fallback) const;
  // Every option given must be in `allowed`: a tool with modes rejects the other modes'
  // options ("--fps applies only with --convert") instead of ignoring them.
  void only(std::initializer_list<std::string_view> allowed, std::string_view why) const;

  // The declared option closest to `word` (edit distance), or "" when none is close.
  std::string closest(std::string_view word) const;

 private:
  struct Spec {
    std::string name, metavar, help, section;
    bool takes_value = true;
    bool repeat = false;
  };
  const Spec* find(std::string_view name) const;
  const Spec& declared(std::string_view name) const;  // throws std::logic_error: a tool bug
  CommandLine& declare(Spec spec);

  std::string program_, synopsis_, section_;
  std::vector<Spec> specs_;
  std::vector<std::string> notes_;
  std::map<std::string, std::vector<std::string>, std::less<>> given_;
  bool help_ = false;
};

// The shared main of dhp's tools: parses argv into `cli`, prints the help for -h/--help
// (exit 0), else runs `body` and returns its exit code. A UsageError prints
// "<program>: <message>" and "(see <program> --help)" on stderr and returns 2; a dhp::Error
// prints its message and returns 1; any other exception is reported as unexpected (1).
int run_tool(CommandLine& cli, int argc, const char* const* argv, const std::function<int()>& body);

}  // namespace dhp
