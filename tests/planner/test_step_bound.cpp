// step_lower_bound: no strategy's estimated step falls below it, it is reached where nothing
// can be balanced (one sequence on one device), and it names what binds.
#include <gtest/gtest.h>

#include <cmath>

#include "dhp/error.hpp"
#include "dhp/planner.hpp"
#include "dhp/step_bound.hpp"
#include "planner_test_util.hpp"

namespace dhp {
namespace {

// Every strategy at its own layout (static ones at the layout best_static_layout picks for
// this batch) against the bound over every layout.
void expect_every_strategy_above(const ClusterSpec& cluster, const ModelSpec& model,
                                 const Batch& batch, PlannerOptions base) {
  const StepBound bound = step_lower_bound(cluster, model, batch, base);
  ASSERT_GT(bound.ms, 0);
  EXPECT_GE(bound.layouts_tried, 1);
  for (Strategy s : all_strategies()) {
    if (s == Strategy::Exact) continue;
    PlannerOptions options = base;
    options.strategy = s;
    try {
      const Planner planner(cluster, model, options);
      const Plan plan = planner.plan(batch);
      EXPECT_GE(plan.estimate.step_ms, bound.ms * (1 - 1e-9))
          << to_string(s) << " on " << cluster.name << ", " << batch.samples.size()
          << " samples: bound " << bound.ms << " (" << bound.binding << ")";
    } catch (const Error& e) {
      // A baseline whose own rules cannot hold the batch has no plan to compare.
      EXPECT_EQ(e.kind(), ErrorKind::DoesNotFit) << to_string(s) << ": " << e.what();
    }
  }
}

TEST(StepBound, NoStrategyIsEstimatedBelowIt) {
  const ModelSpec text = model_preset("megatron-dcp-1b");
  for (int devices : {4, 8}) {
    const ClusterSpec cluster = test::one_node(devices);
    for (std::uint32_t seed : {1u, 2u, 3u}) {
      PlannerOptions options;
      options.llm_tp = 1;
      expect_every_strategy_above(
          cluster, text, test::random_text_batch(seed, 6 * devices, 7.0, 1.3, 64, 60000), options);
    }
  }
  const ModelSpec vlm = model_preset("qwen2-vl-2b");
  for (std::uint32_t seed : {4u, 5u})
    expect_every_strategy_above(test::one_node(8), vlm,
                                test::random_multimodal_batch(seed, 40, 20000), PlannerOptions{});
}

TEST(StepBound, ReachedByOneSequenceOnOneDevice) {
  // Nothing to balance and no other layout: the bound is the plan's own estimate.
  const ClusterSpec cluster = test::one_node(1);
  const ModelSpec model = model_preset("megatron-dcp-1b");
  Batch batch;
  batch.samples.push_back(Sample{.id = 7, .text_tokens = 3000});
  const StepBound bound = step_lower_bound(cluster, model, batch);
  const Plan plan = Planner(cluster, model).plan(batch);
  EXPECT_NEAR(bound.ms, plan.estimate.step_ms, 1e-9 * plan.estimate.step_ms);
  EXPECT_EQ(bound.layout.llm_tp, 1);
}

TEST(StepBound, NamesTheTermThatBinds) {
  const ClusterSpec cluster = test::one_node(8);
  const ModelSpec model = model_preset("megatron-dcp-1b");
  PlannerOptions options;
  options.llm_tp = 1;
  // One long document beside a few short ones: no plan finishes before the document does.
  Batch skewed;
  skewed.samples.push_back(Sample{.id = 1, .text_tokens = 120000});
  for (int i = 0; i < 4; ++i) skewed.samples.push_back(Sample{.id = 2 + i, .text_tokens = 200});
  const StepBound one = step_lower_bound(cluster, model, skewed, options);
  EXPECT_EQ(one.binding, "longest sample");
  EXPECT_DOUBLE_EQ(one.ms, one.longest_sample_ms);
  EXPECT_GT(one.longest_sample_ms, one.work_ms);
  // Many equal sequences: the devices' mean work binds.
  Batch even;
  for (int i = 0; i < 64; ++i) even.samples.push_back(Sample{.id = i, .text_tokens = 2000});
  const StepBound many = step_lower_bound(cluster, model, even, options);
  EXPECT_EQ(many.binding, "work");
  EXPECT_DOUBLE_EQ(many.ms, many.work_ms);
}

TEST(StepBound, AnItemThatCannotBeCutFinerBindsMultimodalBatches) {
  // One large image (a single attention span) among short captions: however its ring shards
  // spread, its encoding and its sample's LLM work run one after the other.
  const ClusterSpec cluster = test::one_node(8);
  const ModelSpec model = model_preset("qwen2-vl-2b");
  Batch batch;
  Sample big{.id = 1, .text_tokens = 64};
  big.visuals.push_back(VisualItem{64 * 1024, 16 * 1024, 1});
  batch.samples.push_back(big);
  for (int i = 0; i < 6; ++i) batch.samples.push_back(Sample{.id = 2 + i, .text_tokens = 100});
  const StepBound bound = step_lower_bound(cluster, model, batch);
  EXPECT_EQ(bound.binding, "longest item");
  EXPECT_DOUBLE_EQ(bound.ms, bound.longest_item_ms);
  expect_every_strategy_above(cluster, model, batch, PlannerOptions{});
}

}  // namespace
}  // namespace dhp
