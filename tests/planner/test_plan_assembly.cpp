// The fit check (memory_budget.cpp) and drafts -> plans (build_plan, plan_assembly.cpp).
#include <gtest/gtest.h>

#include <set>

#include "dhp/error.hpp"
#include "dhp/simulator.hpp"
#include "planner/internal.hpp"
#include "planner_test_util.hpp"

namespace dhp {
namespace {

// Qwen2-VL-7B on one node of 8 at the planner's default layout.
struct DefaultSetup {
  ClusterSpec cluster = cluster_preset("h100-8");
  ModelSpec model = model_preset("qwen2-vl-7b");
  detail::Layout layout = detail::resolve_layout(cluster, model, {});
  CostModel cost = detail::make_cost_model(cluster, model, layout, {});
};

TEST(CheckBatchFits, NamesTheSampleThatCannotFit) {
  const DefaultSetup setup;
  const detail::Layout& layout = setup.layout;
  const CostModel& cost = setup.cost;
  Batch batch;
  batch.samples.push_back(Sample{7, 1000, {}});
  batch.samples.push_back(Sample{424242, 50'000'000, {}});
  try {
    detail::check_batch_fits(batch, cost, layout);
    FAIL() << "a 50M-token sample fitted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::DoesNotFit);
    const std::string msg = e.what();
    EXPECT_NE(msg.find("424242"), std::string::npos) << msg;
    EXPECT_NE(msg.find("50000000"), std::string::npos) << msg;
  }
}

// LLM-only waves meet no barrier: a rank heavy in wave 0 and one heavy in wave 1 overlap,
// so the step is below the sum of the waves' slowest ranks, as the simulator finds too.
TEST(BuildPlan, LlmOnlyWavesRunBackToBackPerRank) {
  const ClusterSpec cluster = cluster_preset("h100-8");
  ModelSpec model = model_preset("qwen2-vl-7b");
  model.encoder.reset();
  PlannerOptions options;
  options.llm_tp = 4;  // 2 ranks
  const auto layout = detail::resolve_layout(cluster, model, options);
  const CostModel cost = detail::make_cost_model(cluster, model, layout, options);
  Batch batch;
  for (std::int64_t tokens : {16000, 1000, 1000, 16000}) {
    Sample s;
    s.id = static_cast<std::int64_t>(batch.samples.size());
    s.text_tokens = tokens;
    batch.samples.push_back(s);
  }
  auto wave_of = [](int first, int second) {
    detail::WaveDraft wave;
    detail::GroupDraft a, b;
    a.whole = {{first}};
    b.whole = {{second}};
    wave.groups = {a, b};
    return wave;
  };
  const Plan plan = detail::build_plan("test", batch, cost, layout, {wave_of(0, 1), wave_of(2, 3)});
  const double waves_sum = plan.estimate.wave_ms[0] + plan.estimate.wave_ms[1];
  EXPECT_LT(plan.estimate.step_ms, 0.8 * waves_sum);
  const double simulated = Simulator(cost).run(plan, batch).step_ms;
  EXPECT_NEAR(plan.estimate.step_ms, simulated, 0.01 * simulated);
}

TEST(BuildPlan, DraftBecomesAValidPlanWithEstimates) {
  const DefaultSetup setup;
  const detail::Layout& layout = setup.layout;
  const CostModel& cost = setup.cost;
  Batch batch;
  for (int i = 0; i < 6; ++i) {
    Sample s{100 + i, 200 + 100 * i, {}};
    if (i % 2 == 0) s.visuals.push_back(VisualItem{1024, 256, 1});
    batch.samples.push_back(s);
  }
  detail::WaveDraft wave;
  detail::GroupDraft ring;
  ring.degree = 2;
  ring.split = {0, 1};
  ring.whole = {{2}, {3}};
  detail::GroupDraft single;
  single.degree = 1;
  single.whole = {{4, 5}};
  wave.groups = {ring, single};
  const Plan plan = detail::build_plan("test", batch, cost, layout, {wave});
  ASSERT_EQ(plan.waves.size(), 1u);
  EXPECT_EQ(plan.waves[0].groups[0].degree(), 2);
  for (int c : test::placements_per_sample(plan, batch)) EXPECT_EQ(c, 1);
  EXPECT_GT(plan.estimate.step_ms, 0);
  EXPECT_NEAR(plan.estimate.step_ms, detail::estimate_step_ms(batch, cost, layout, {wave}), 1e-9);
  EXPECT_EQ(plan.estimate.peak_mem_gib.size(), static_cast<std::size_t>(layout.llm.ranks));
  int visuals = 0;
  for (const Sample& s : batch.samples) visuals += static_cast<int>(s.visuals.size());
  // Each item once (or in parts, which validate() checks add up to it).
  std::set<std::pair<int, int>> encoded;
  for (const EncoderTask& t : plan.encoder_tasks) encoded.insert({t.sample, t.visual});
  EXPECT_EQ(static_cast<int>(encoded.size()), visuals);
  // The ring's time is shared: both members carry the split work plus their own whole one.
  const double r0 =
      detail::rank_llm_ms(cost, {batch.samples[0].llm_tokens(), batch.samples[1].llm_tokens()},
                          RingSpan{2, false}, {batch.samples[2].llm_tokens()});
  EXPECT_GE(plan.estimate.wave_ms[0], r0);
}

}  // namespace
}  // namespace dhp
