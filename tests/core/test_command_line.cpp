#include "dhp/command_line.hpp"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "dhp/error.hpp"

namespace dhp {
namespace {

CommandLine tool() {
  CommandLine cli("tool", "  tool --batch FILE [options]");
  cli.section("Inputs:")
      .option("--batch", "FILE", "the batch file")
      .option("--batches", "N", "how many")
      .repeatable("--strategy", "NAME", "a strategy")
      .option("--format", "F", "table or json")
      .option("--gpus", "LIST", "scales")
      .option("--scale", "X", "a factor")
      .flag("--simulate", "simulate\nthe plan");
  return cli;
}

// Parses `args` (argv without the program name) into a fresh tool().
CommandLine parsed(std::vector<const char*> args) {
  args.insert(args.begin(), "tool");
  CommandLine cli = tool();
  cli.parse(static_cast<int>(args.size()), args.data());
  return cli;
}

std::string usage_error(std::vector<const char*> args) {
  try {
    parsed(std::move(args));
  } catch (const UsageError& e) {
    return e.what();
  }
  return "no error";
}

TEST(CommandLine, ReadsValuesSwitchesAndRepeats) {
  const CommandLine cli =
      parsed({"--batch", "b.json", "--simulate", "--batches=3", "--strategy", "dhp",
              "--strategy=exact", "--scale", "0.5", "--gpus", "4,8,,16"});
  EXPECT_EQ(cli.value("--batch"), "b.json");
  EXPECT_TRUE(cli.has("--simulate"));
  EXPECT_EQ(cli.integer("--batches", 0), 3);
  EXPECT_EQ(cli.values("--strategy"), (std::vector<std::string>{"dhp", "exact"}));
  EXPECT_DOUBLE_EQ(cli.real("--scale", 1), 0.5);
  EXPECT_EQ(cli.integer_list("--gpus", {}, 1), (std::vector<std::int64_t>{4, 8, 16}));
  EXPECT_FALSE(cli.has("--format"));
  EXPECT_EQ(cli.choice("--format", {"table", "json"}, "table"), "table");
  EXPECT_FALSE(cli.help_requested());
}

TEST(CommandLine, NamesAnUnknownOptionAndTheClosestOne) {
  EXPECT_EQ(usage_error({"--batchs", "x"}), "unknown option '--batchs'; did you mean --batch?");
  EXPECT_EQ(usage_error({"--simulat"}), "unknown option '--simulat'; did you mean --simulate?");
  EXPECT_EQ(usage_error({"-batch", "x"}), "unknown option '-batch'; did you mean --batch?");
  EXPECT_EQ(usage_error({"--strat", "x"}), "unknown option '--strat'; did you mean --strategy?");
  EXPECT_EQ(usage_error({"--zzzzzzzz"}), "unknown option '--zzzzzzzz'");
  // Reported as unknown even where it stands last, with no value after it.
  EXPECT_EQ(usage_error({"--batch", "b", "--formt"}),
            "unknown option '--formt'; did you mean --format?");
}

TEST(CommandLine, ReportsBadValues) {
  EXPECT_EQ(usage_error({"--batch"}), "--batch needs a value (FILE)");
  EXPECT_EQ(usage_error({"--batch", "--simulate"}), "--batch needs a value (FILE)");
  EXPECT_EQ(usage_error({"--simulate=yes"}), "--simulate takes no value, got 'yes'");
  EXPECT_EQ(usage_error({"--simulate", "yes"}),
            "unexpected argument 'yes' (--simulate takes no value)");
  EXPECT_EQ(usage_error({"plan.json"}), "unexpected argument 'plan.json' (options start with --)");
  EXPECT_EQ(usage_error({"--batch", "a", "--batch", "b"}), "--batch given twice ('a' and 'b')");

  auto read_error = [](std::vector<const char*> args, auto read) {
    const CommandLine cli = parsed(std::move(args));
    try {
      read(cli);
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(read_error({"--batches", "x"}, [](const CommandLine& c) { c.integer("--batches", 0); }),
            "--batches expects a non-negative integer, got 'x'");
  EXPECT_EQ(
      read_error({"--batches", "0"}, [](const CommandLine& c) { c.integer("--batches", 1, 1); }),
      "--batches expects an integer >= 1, got '0'");
  EXPECT_EQ(read_error({"--scale", "1e"}, [](const CommandLine& c) { c.real("--scale", 0); }),
            "--scale expects a number, got '1e'");
  EXPECT_EQ(read_error({"--format", "csv"},
                       [](const CommandLine& c) {
                         c.choice("--format", {"table", "json"}, "");
                       }),
            "--format expects one of table, json, got 'csv'");
  EXPECT_EQ(read_error({}, [](const CommandLine& c) { c.value("--batch"); }),
            "--batch FILE is required");
  EXPECT_EQ(
      read_error({"--gpus", "4,x"}, [](const CommandLine& c) { c.integer_list("--gpus", {}, 1); }),
      "--gpus expects an integer >= 1, got 'x'");
  EXPECT_EQ(read_error({"--simulate", "--format", "json"},
                       [](const CommandLine& c) { c.only({"--simulate"}, "here"); }),
            "--format does not apply here");
}

TEST(CommandLine, HelpListsEveryOptionAndWinsOverErrors) {
  const CommandLine cli = parsed({"--nonsense", "-h"});
  EXPECT_TRUE(cli.help_requested());
  const std::string help = cli.help();
  EXPECT_EQ(help.rfind("usage:\n  tool --batch FILE [options]\n", 0), 0u) << help;
  for (const char* line : {"Inputs:\n", "  --batch FILE", "--strategy NAME", "(repeatable)",
                           "  --simulate", "simulate\n", "the plan\n", "  -h, --help"})
    EXPECT_NE(help.find(line), std::string::npos) << line << "\n" << help;
}

// run_tool's exit codes: 0 and the help on stdout, 2 for usage, 1 for a dhp::Error.
TEST(CommandLine, RunToolMapsErrorsToExitCodes) {
  auto run = [](std::vector<const char*> args, const std::function<int()>& body, std::string* err) {
    args.insert(args.begin(), "tool");
    CommandLine cli = tool();
    ::testing::internal::CaptureStdout();
    ::testing::internal::CaptureStderr();
    const int code = run_tool(cli, static_cast<int>(args.size()), args.data(), body);
    ::testing::internal::GetCapturedStdout();
    *err = ::testing::internal::GetCapturedStderr();
    return code;
  };
  std::string err;
  bool ran = false;
  EXPECT_EQ(run(
                {"--help"}, [&] { return ran = true, 0; }, &err),
            0);
  EXPECT_FALSE(ran);
  EXPECT_EQ(run(
                {"--bach", "x"}, [] { return 0; }, &err),
            2);
  EXPECT_EQ(err, "tool: unknown option '--bach'; did you mean --batch?\n(see tool --help)\n");
  EXPECT_EQ(run(
                {}, [] { return 0; }, &err),
            0);
  EXPECT_EQ(run(
                {}, []() -> int { DHP_THROW(InvalidInput, "bad file"); }, &err),
            1);
  EXPECT_NE(err.find("bad file"), std::string::npos) << err;
  EXPECT_EQ(run(
                {}, []() -> int { throw UsageError("--x is wrong"); }, &err),
            2);
  EXPECT_EQ(run(
                {}, [] { return 7; }, &err),
            7);
}

}  // namespace
}  // namespace dhp
