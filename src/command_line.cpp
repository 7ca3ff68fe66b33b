#include "dhp/command_line.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "closest_name.hpp"
#include "dhp/error.hpp"

namespace dhp {
namespace {

constexpr std::string_view kHelpNames = "-h, --help";

// `text` as an integer >= min, or a UsageError naming the option.
std::int64_t parse_integer(std::string_view name, const std::string& text, std::int64_t min) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE || v < min)
    throw UsageError(fmt::format(
        "{} expects {}, got '{}'", name,
        min == 0 ? std::string("a non-negative integer") : fmt::format("an integer >= {}", min),
        text));
  return v;
}

std::string quoted_list(std::initializer_list<std::string_view> items) {
  std::string out;
  for (std::string_view item : items) {
    if (!out.empty()) out += ", ";
    out += item;
  }
  return out;
}

}  // namespace

CommandLine::CommandLine(std::string program, std::string synopsis)
    : program_(std::move(program)), synopsis_(std::move(synopsis)) {}

CommandLine& CommandLine::section(std::string title) {
  section_ = std::move(title);
  return *this;
}

CommandLine& CommandLine::declare(Spec spec) {
  if (find(spec.name) != nullptr || spec.name == "--help" || spec.name.rfind("--", 0) != 0)
    throw std::logic_error(
        fmt::format("{}: option '{}' declared twice or not --long", program_, spec.name));
  spec.section = section_;
  specs_.push_back(std::move(spec));
  return *this;
}

CommandLine& CommandLine::option(std::string name, std::string metavar, std::string help) {
  return declare({std::move(name), std::move(metavar), std::move(help), "", true, false});
}

CommandLine& CommandLine::repeatable(std::string name, std::string metavar, std::string help) {
  return declare({std::move(name), std::move(metavar), std::move(help), "", true, true});
}

CommandLine& CommandLine::flag(std::string name, std::string help) {
  return declare({std::move(name), "", std::move(help), "", false, false});
}

CommandLine& CommandLine::note(std::string text) {
  notes_.push_back(std::move(text));
  return *this;
}

const CommandLine::Spec* CommandLine::find(std::string_view name) const {
  for (const Spec& spec : specs_)
    if (spec.name == name) return &spec;
  return nullptr;
}

const CommandLine::Spec& CommandLine::declared(std::string_view name) const {
  const Spec* spec = find(name);
  if (spec == nullptr)
    throw std::logic_error(fmt::format("{}: option '{}' read but not declared", program_, name));
  return *spec;
}

std::string CommandLine::closest(std::string_view word) const {
  // A prefix of one option names it; otherwise the nearest name within a third of its length
  // (at least 2 edits), so that "--batchs" finds "--batches" and "--foo" finds nothing.
  detail::ClosestName closest(word);
  int prefixed = 0;
  std::string prefix_match;
  for (const Spec& spec : specs_) {
    if (word.size() > 2 && spec.name.rfind(word, 0) == 0) {
      ++prefixed;
      prefix_match = spec.name;
    }
    closest.consider(spec.name);
  }
  if (prefixed == 1) return prefix_match;
  return std::string(closest.best());
}

void CommandLine::parse(int argc, const char* const* argv) {
  given_.clear();
  help_ = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      help_ = true;  // help wins over anything else on the line
      return;
    }
  }
  const Spec* previous_switch = nullptr;  // for "--simulate yes": say that it takes no value
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.size() < 2 || arg[0] != '-') {
      throw UsageError(previous_switch
                           ? fmt::format("unexpected argument '{}' ({} takes no value)", arg,
                                         previous_switch->name)
                           : fmt::format("unexpected argument '{}' (options start with --)", arg));
    }
    const std::size_t equals = arg.find('=');
    const std::string name = arg.substr(0, equals);
    const Spec* spec = find(name);
    if (spec == nullptr) {
      const std::string near = closest(name);
      throw UsageError(near.empty()
                           ? fmt::format("unknown option '{}'", name)
                           : fmt::format("unknown option '{}'; did you mean {}?", name, near));
    }
    previous_switch = nullptr;
    std::string value;
    if (!spec->takes_value) {
      if (equals != std::string::npos)
        throw UsageError(fmt::format("{} takes no value, got '{}'", name, arg.substr(equals + 1)));
      previous_switch = spec;
    } else if (equals != std::string::npos) {
      value = arg.substr(equals + 1);
    } else {
      // A following declared option is not taken as this option's value.
      const bool next_is_option =
          i + 1 < argc && argv[i + 1][0] == '-' && argv[i + 1][1] == '-' &&
          find(std::string_view(argv[i + 1]).substr(0, std::string_view(argv[i + 1]).find('='))) !=
              nullptr;
      if (i + 1 >= argc || next_is_option)
        throw UsageError(fmt::format("{} needs a value ({})", name, spec->metavar));
      value = argv[++i];
    }
    auto& occurrences = given_[name];
    if (!occurrences.empty() && !spec->repeat)
      throw UsageError(
          fmt::format("{} given twice ('{}' and '{}')", name, occurrences.front(), value));
    occurrences.push_back(std::move(value));
  }
}

std::string CommandLine::help() const {
  std::size_t width = kHelpNames.size();
  for (const Spec& spec : specs_)
    width =
        std::max(width, spec.name.size() + (spec.metavar.empty() ? 0 : spec.metavar.size() + 1));
  width = std::min<std::size_t>(width + 2, 28);
  const std::string indent(2 + width, ' ');

  std::string out = fmt::format("usage:\n{}\n", synopsis_);
  std::string section = "\x01";  // none printed yet
  auto entry = [&](std::string_view names, std::string_view help) {
    std::string line = fmt::format("  {:<{}}", names, width);
    if (line.size() > indent.size()) line += "\n" + indent;  // a long name: help below it
    std::size_t start = 0;
    for (std::size_t nl; (nl = help.find('\n', start)) != std::string_view::npos; start = nl + 1)
      line += std::string(help.substr(start, nl - start)) + "\n" + indent;
    line += std::string(help.substr(start)) + "\n";
    out += line;
  };
  for (const Spec& spec : specs_) {
    if (spec.section != section) {
      section = spec.section;
      out += section.empty() ? "\n" : fmt::format("\n{}\n", section);
    }
    const std::string names = spec.metavar.empty() ? spec.name : spec.name + " " + spec.metavar;
    entry(names, spec.repeat ? spec.help + " (repeatable)" : spec.help);
  }
  out += "\n";
  entry(kHelpNames, "print this help and exit");
  for (const std::string& text : notes_) out += "\n" + text + "\n";
  return out;
}

bool CommandLine::has(std::string_view name) const {
  declared(name);
  return given_.find(name) != given_.end();
}

std::string CommandLine::value(std::string_view name) const {
  const Spec& spec = declared(name);
  const auto it = given_.find(name);
  if (it == given_.end()) throw UsageError(fmt::format("{} {} is required", name, spec.metavar));
  return it->second.back();
}

std::string CommandLine::value_or(std::string_view name, std::string fallback) const {
  return has(name) ? value(name) : std::move(fallback);
}

std::vector<std::string> CommandLine::values(std::string_view name) const {
  declared(name);
  const auto it = given_.find(name);
  return it == given_.end() ? std::vector<std::string>{} : it->second;
}

std::int64_t CommandLine::integer(std::string_view name, std::int64_t fallback,
                                  std::int64_t min) const {
  return has(name) ? parse_integer(name, value(name), min) : fallback;
}

std::vector<std::string> CommandLine::list(std::string_view name,
                                           std::vector<std::string> fallback) const {
  if (!has(name)) return fallback;
  const std::string text = value(name);
  std::vector<std::string> items;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t comma = std::min(text.find(',', start), text.size());
    if (comma > start) items.push_back(text.substr(start, comma - start));
    start = comma + 1;
  }
  if (items.empty())
    throw UsageError(fmt::format("{} expects a comma-separated list, got '{}'", name, text));
  return items;
}

std::vector<std::int64_t> CommandLine::integer_list(std::string_view name,
                                                    std::vector<std::int64_t> fallback,
                                                    std::int64_t min) const {
  if (!has(name)) return fallback;
  std::vector<std::int64_t> out;
  for (const std::string& item : list(name, {})) out.push_back(parse_integer(name, item, min));
  return out;
}

double CommandLine::real(std::string_view name, double fallback) const {
  if (!has(name)) return fallback;
  const std::string text = value(name);
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !std::isfinite(v))
    throw UsageError(fmt::format("{} expects a number, got '{}'", name, text));
  return v;
}

std::string CommandLine::choice(std::string_view name,
                                std::initializer_list<std::string_view> choices,
                                std::string fallback) const {
  if (!has(name)) return fallback;
  const std::string text = value(name);
  if (std::find(choices.begin(), choices.end(), text) == choices.end())
    throw UsageError(
        fmt::format("{} expects one of {}, got '{}'", name, quoted_list(choices), text));
  return text;
}

void CommandLine::only(std::initializer_list<std::string_view> allowed,
                       std::string_view why) const {
  for (const auto& [name, _] : given_)
    if (std::find(allowed.begin(), allowed.end(), name) == allowed.end())
      throw UsageError(fmt::format("{} does not apply {}", name, why));
}

int run_tool(CommandLine& cli, int argc, const char* const* argv,
             const std::function<int()>& body) {
  try {
    cli.parse(argc, argv);
    if (cli.help_requested()) {
      std::fputs(cli.help().c_str(), stdout);
      return 0;
    }
    return body();
  } catch (const UsageError& e) {
    fmt::print(stderr, "{}: {}\n(see {} --help)\n", cli.program(), e.what(), cli.program());
    return 2;
  } catch (const Error& e) {
    fmt::print(stderr, "{}: {}\n", cli.program(), e.what());  // the message names its kind
    return 1;
  } catch (const std::exception& e) {
    // Not a dhp::Error: a bug or an environment failure (out of memory, ...).
    fmt::print(stderr, "{}: unexpected error: {}\n", cli.program(), e.what());
    return 1;
  }
}

}  // namespace dhp
