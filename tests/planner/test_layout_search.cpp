// best_dhp_options: the run-level module layout search for the dhp strategy.
#include <gtest/gtest.h>

#include <span>
#include <vector>

#include "dhp/error.hpp"
#include "dhp/planner.hpp"
#include "planner_test_util.hpp"

namespace dhp {
namespace {

// Summed estimated step of dhp's plans of `batches` under `options`.
double summed_estimate_ms(const ClusterSpec& cluster, const ModelSpec& model,
                          const std::vector<Batch>& batches, const PlannerOptions& options) {
  const Planner planner(cluster, model, options);
  double total = 0;
  for (const Batch& b : batches) total += planner.plan(b).estimate.step_ms;
  return total;
}

// Images at high native resolution and short captions: the encoder dominates the step.
Batch encoder_heavy_batch(int samples) {
  Batch b;
  b.step = 7;
  for (int i = 0; i < samples; ++i) {
    Sample s;
    s.id = 100 + i;
    s.text_tokens = 64;
    const std::int64_t tokens = 8000 + 500 * (i % 5);
    s.visuals.push_back(VisualItem{tokens * 4, tokens, 1});
    b.samples.push_back(s);
  }
  return b;
}

TEST(LayoutSearch, NeverWorseThanDefaultOnTheSampledBatches) {
  const ClusterSpec cluster = test::one_node(8);
  const ModelSpec model = model_preset("qwen2-vl-7b");
  std::vector<Batch> batches;
  for (std::uint32_t seed = 1; seed <= 4; ++seed)
    batches.push_back(test::random_multimodal_batch(seed, 24, 12000));

  const PlannerOptions chosen = best_dhp_options(cluster, model, batches);
  EXPECT_EQ(chosen.strategy, Strategy::Dhp);
  EXPECT_GT(chosen.llm_tp, 0);
  EXPECT_GT(chosen.encoder_tp, 0);
  // Fewer than 8 batches: every batch is sampled, so the comparison is exact.
  EXPECT_LE(summed_estimate_ms(cluster, model, batches, chosen),
            summed_estimate_ms(cluster, model, batches, PlannerOptions{}) * (1 + 1e-12));
}

TEST(LayoutSearch, Deterministic) {
  const ClusterSpec cluster = test::one_node(8);
  const ModelSpec model = model_preset("qwen2-vl-7b");
  std::vector<Batch> batches = {test::random_multimodal_batch(11, 20, 8000),
                                encoder_heavy_batch(12)};
  const PlannerOptions a = best_dhp_options(cluster, model, batches);
  const PlannerOptions b = best_dhp_options(cluster, model, batches);
  EXPECT_EQ(describe_layout(a), describe_layout(b));
  EXPECT_EQ(a.encoder_devices, b.encoder_devices);
}

TEST(LayoutSearch, KeepsAnExplicitTpAndSearchesTheRest) {
  const ClusterSpec cluster = test::one_node(8);
  const ModelSpec model = model_preset("qwen2-vl-7b");
  const std::vector<Batch> batches = {encoder_heavy_batch(8)};
  PlannerOptions base;
  base.llm_tp = 2;
  const PlannerOptions chosen = best_dhp_options(cluster, model, batches, base);
  EXPECT_EQ(chosen.llm_tp, 2);
}

TEST(LayoutSearch, TextOnlyModelStaysColocated) {
  const ClusterSpec cluster = test::one_node(8);
  const ModelSpec model = model_preset("megatron-dcp-1b");
  const std::vector<Batch> batches = {test::random_text_batch(3, 32, 7.0, 1.5, 128, 8192)};
  const PlannerOptions chosen = best_dhp_options(cluster, model, batches);
  EXPECT_EQ(chosen.placement, EncoderPlacement::Colocated);
  EXPECT_LE(summed_estimate_ms(cluster, model, batches, chosen),
            summed_estimate_ms(cluster, model, batches, PlannerOptions{}) * (1 + 1e-12));
}

TEST(LayoutSearch, RejectsAnEmptyRun) {
  EXPECT_THROW(
      best_dhp_options(test::one_node(8), model_preset("qwen2-vl-7b"), std::span<const Batch>{}),
      Error);
}

}  // namespace
}  // namespace dhp
