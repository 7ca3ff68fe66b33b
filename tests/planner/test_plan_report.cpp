#include "dhp/plan_report.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <regex>
#include <string>

#include "dhp/io.hpp"
#include "tests/core/svg_test_util.hpp"

namespace dhp {
namespace {

struct Inputs {
  ClusterSpec cluster = cluster_preset("h100-8");
  ModelSpec model = model_preset("qwen2-vl-7b");
  Batch batch = load_batches(std::string(DHP_SOURCE_DIR) + "/examples/batches.json").front();
};

TEST(PlanReport, OnePageWithSummaryPictureLoadAndEveryStrategy) {
  const Inputs in;
  const StrategyRun subject = run_strategy(in.cluster, in.model, PlannerOptions{}, in.batch);
  const std::vector<StrategyRun> others =
      run_other_strategies(in.cluster, in.model, PlannerOptions{}, in.batch);
  ASSERT_EQ(others.size(), all_strategies().size() - 1);
  const std::string html = plan_report_html({in.cluster, in.model, in.batch, subject, others});

  std::string why;
  EXPECT_TRUE(testing::tags_balanced(html, &why)) << why;
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  for (const char* section : {"<h2>Summary</h2>", "<h2>Timeline</h2>", "<h2>Per-rank load</h2>",
                              "<h2>Against the other strategies</h2>"})
    EXPECT_NE(html.find(section), std::string::npos) << section;
  // Self-contained: no script, nothing fetched (the SVG namespace is a name, not a fetch).
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("src="), std::string::npos);
  EXPECT_EQ(html.find("href="), std::string::npos);
  const std::regex url("https?://(?!www\\.w3\\.org/2000/svg\")");
  EXPECT_FALSE(std::regex_search(html, url));
  // The figures of the subject, a row per strategy, a load row per device.
  EXPECT_NE(html.find(fmt::format("{:.1f} ms", subject.simulation.step_ms)), std::string::npos);
  for (const StrategyRun& run : others)
    EXPECT_NE(html.find("<td class=\"l\">" + run.strategy + "</td>"), std::string::npos)
        << run.strategy;
  for (int d = 0; d < in.cluster.world_size(); ++d)
    EXPECT_NE(html.find(fmt::format("<tr><td>{}</td><td class=\"l\">LLM ", d)), std::string::npos)
        << "device " << d;
  // Two pictures (the plan, every plan on one axis) with distinct element ids.
  EXPECT_EQ(testing::count(html, "<svg "), 2);
  EXPECT_NE(html.find("id=\"main-encoder\""), std::string::npos);
  EXPECT_NE(html.find("id=\"all-encoder\""), std::string::npos);
}

TEST(PlanReport, AStrategyWithoutAPlanSaysWhy) {
  const Inputs in;
  const StrategyRun subject = run_strategy(in.cluster, in.model, PlannerOptions{}, in.batch);
  StrategyRun failed;
  failed.strategy = "exact";
  failed.error = "instance too large: <8 ranks>";
  const std::string html = plan_report_html({in.cluster, in.model, in.batch, subject, {failed}});
  EXPECT_NE(html.find("no plan: instance too large: &lt;8 ranks&gt;"), std::string::npos);
}

}  // namespace
}  // namespace dhp
