// dhp's module layout: the per-batch search of the planner (LayoutSearch) and the run-level
// choice best_run_layout / best_dhp_options.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "dhp/error.hpp"
#include "dhp/planner.hpp"
#include "planner/internal.hpp"
#include "planner/layout_search.hpp"
#include "planner_test_util.hpp"

namespace dhp {
namespace {

PlannerOptions search_off() {
  PlannerOptions o;
  o.layout_search = LayoutSearch::Off;
  return o;
}

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

// A short video of two temporal slices at a very high resolution, pooled 4x4 into LLM tokens:
// each slice is one attention span of `patches_per_slice` patches, so its parts cannot be
// smaller than a slice and its encoder memory per device only falls with the encoder's TP.
Batch two_huge_slices(std::int64_t patches_per_slice) {
  Batch b;
  b.step = 3;
  Sample video{41, 120, {VisualItem{2 * patches_per_slice, 2 * patches_per_slice / 16, 4}}};
  b.samples.push_back(video);
  for (int i = 0; i < 6; ++i) b.samples.push_back(Sample{50 + i, 2000 + 300 * i, {}});
  return b;
}

// The best estimated step over every layout the search may use, each planned on its own.
double best_fixed_layout_ms(const ClusterSpec& cluster, const ModelSpec& model,
                            const Batch& batch) {
  double best = std::numeric_limits<double>::infinity();
  for (const detail::LayoutCandidate& c :
       detail::layout_candidates(cluster, model, PlannerOptions{})) {
    try {
      best = std::min(best, Planner(cluster, model, c.options).plan(batch).estimate.step_ms);
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::DoesNotFit) throw;
    }
  }
  return best;
}

TEST(LayoutSearch, PerBatchFindsTheBestLayoutByEstimate) {
  // A fresh planner has seen no batch: only the (sound) lower bounds prune, so its plan is
  // the best of all layouts by the estimate, though it plans only a few of them.
  const ClusterSpec cluster = test::one_node(8);
  const ModelSpec model = model_preset("qwen2-vl-7b");
  std::vector<Batch> batches = {encoder_heavy_batch(12),
                                test::random_multimodal_batch(5, 24, 12000),
                                test::random_multimodal_batch(9, 16, 30000)};
  for (const Batch& batch : batches) {
    const Plan plan = Planner(cluster, model).plan(batch);
    EXPECT_LE(plan.estimate.step_ms, best_fixed_layout_ms(cluster, model, batch) * (1 + 1e-9))
        << "batch " << batch.step;
    EXPECT_EQ(plan.estimate.layout_switch_ms, 0.0);  // nothing planned before it
  }
}

TEST(LayoutSearch, PlansWheneverSomeLayoutHoldsTheBatch) {
  // Random batches mixing text, images, tiled images and whole videos as single items (some
  // with independent temporal slices, some of one span), some too large for some layouts:
  // whenever any layout of the search space holds a batch, the search returns a plan.
  const ClusterSpec cluster = test::one_node(8);
  ModelSpec model = model_preset("qwen2-vl-7b");
  std::mt19937 rng(2024);
  std::uniform_int_distribution<int> kind(0, 3), count(2, 10);
  std::uniform_int_distribution<std::int64_t> text(50, 30000), image(256, 16384), slices(1, 120),
      per_slice(300, 8000);
  int planned = 0, refused = 0;
  for (int trial = 0; trial < 40; ++trial) {
    Batch batch;
    batch.step = trial;
    for (int i = count(rng); i > 0; --i) {
      Sample s{static_cast<std::int64_t>(batch.samples.size()), text(rng), {}};
      switch (kind(rng)) {
        case 1: {
          const std::int64_t t = image(rng);
          s.visuals.push_back(VisualItem{4 * t, t, 1});
          break;
        }
        case 2: {  // a whole video: 2 frames per temporal slice, or one span when frames = 1
          const std::int64_t n = slices(rng);
          const std::int64_t p = per_slice(rng) / 4 * 4;
          s.visuals.push_back(
              VisualItem{n * p, n * p / 4, n % 5 == 0 ? 1 : static_cast<int>(2 * n)});
          break;
        }
        case 3:
          s.text_tokens += 4 * text(rng);
          break;
        default:
          break;
      }
      batch.samples.push_back(s);
    }
    const bool some_layout = std::isfinite(best_fixed_layout_ms(cluster, model, batch));
    try {
      Planner(cluster, model).plan(batch);
      ++planned;
    } catch (const Error& e) {
      ASSERT_EQ(e.kind(), ErrorKind::DoesNotFit) << e.what();
      EXPECT_FALSE(some_layout) << "batch " << trial << " fits some layout: " << e.what();
      ++refused;
    }
  }
  EXPECT_GT(planned, 0);
  EXPECT_GT(refused, 0);  // the space has batches that fit nowhere: the check is not empty
  std::printf("planned %d batches, refused %d\n", planned, refused);
}

TEST(LayoutSearch, ABatchThatOnlyFitsAtAnotherEncoderTpIsPlannedThere) {
  const ClusterSpec cluster = test::one_node(8);
  const ModelSpec model = model_preset("qwen2-vl-7b");
  const Batch batch = two_huge_slices(400000);
  PlannerOptions fixed = search_off();
  fixed.llm_tp = 2;
  fixed.encoder_tp = 1;
  try {
    Planner(cluster, model, fixed).plan(batch);
    FAIL() << "a slice of 400k patches fits one device at encoder TP 1";
  } catch (const Error& e) {
    // The refusal names the item and its bytes, not an innocent sample's LLM activations.
    const std::string what = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::DoesNotFit);
    EXPECT_NE(what.find("sample id=41: visual item 0"), std::string::npos) << what;
    EXPECT_NE(what.find("encoder tp=1"), std::string::npos) << what;
    EXPECT_NE(what.find("even cut into 2 parts"), std::string::npos) << what;
  }
  PlannerOptions open;
  open.llm_tp = 2;
  const Plan plan = Planner(cluster, model, open).plan(batch);
  EXPECT_GT(plan.encoder.tp, 1);
  EXPECT_LE(*std::max_element(plan.estimate.peak_mem_gib.begin(), plan.estimate.peak_mem_gib.end()),
            plan.estimate.mem_capacity_gib);
}

TEST(LayoutSearch, ABatchThatFitsNoLayoutNamesTheConstraintOfEach) {
  const ClusterSpec cluster = test::one_node(8);
  const ModelSpec model = model_preset("qwen2-vl-7b");
  const Batch batch = two_huge_slices(5000000);  // a slice is more than 8 devices hold
  try {
    Planner(cluster, model).plan(batch);
    FAIL() << "a slice of 5M patches fits";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::DoesNotFit);
    EXPECT_NE(what.find("no module layout holds batch 3"), std::string::npos) << what;
    const auto candidates = detail::layout_candidates(cluster, model, PlannerOptions{});
    for (const detail::LayoutCandidate& c : candidates)
      EXPECT_NE(what.find(describe_layout(c.options) + ":"), std::string::npos)
          << describe_layout(c.options) << " not named in: " << what;
    EXPECT_NE(what.find("sample id=41: visual item 0"), std::string::npos) << what;
    EXPECT_NE(what.find("GiB"), std::string::npos) << what;
  }
}

TEST(LayoutSearch, ASwitchIsChargedAndRepeatsGiveTheSamePlan) {
  const ClusterSpec cluster = test::one_node(8);
  const ModelSpec model = model_preset("qwen2-vl-7b");
  const auto candidates = detail::layout_candidates(cluster, model, PlannerOptions{});
  ASSERT_GT(candidates.size(), 2u);
  EXPECT_EQ(detail::layout_switch_ms(candidates[0], candidates[0]), 0.0);
  EXPECT_GT(detail::layout_switch_ms(candidates[0], candidates[1]), 0.0);

  // Two kinds of batch that want different layouts, alternating: each plan's charge is the
  // switch from the previous plan's layout, and planning a batch again gives the same plan.
  const std::vector<Batch> batches = {encoder_heavy_batch(12),
                                      test::random_text_batch(4, 24, 8, 1, 4000, 60000),
                                      encoder_heavy_batch(10)};
  PlannerOptions per_batch;
  per_batch.layout_search = LayoutSearch::PerBatch;
  const Planner planner(cluster, model, per_batch);
  std::optional<Plan> previous;
  for (std::size_t i = 0; i < batches.size(); ++i) {
    Batch batch = batches[i];
    batch.step = static_cast<std::int64_t>(i);
    const Plan plan = planner.plan(batch);
    EXPECT_EQ(plan_hash(planner.plan(batch)), plan_hash(plan)) << "batch " << i;
    const bool same =
        previous && previous->llm.tp == plan.llm.tp && previous->encoder.tp == plan.encoder.tp &&
        previous->placement == plan.placement && previous->encoder.ranks == plan.encoder.ranks;
    EXPECT_EQ(plan.estimate.layout_switch_ms > 0, previous && !same) << "batch " << i;
    previous = plan;
  }
}

TEST(LayoutSearch, FixedAfterFirstBatchesKeepsOneLayout) {
  const ClusterSpec cluster = test::one_node(8);
  const ModelSpec model = model_preset("qwen2-vl-7b");
  PlannerOptions options;
  options.layout_search = LayoutSearch::FixedAfterFirstBatches;
  options.layout_warmup_batches = 2;
  const Planner planner(cluster, model, options);
  std::vector<Plan> plans;
  for (std::uint32_t seed = 1; seed <= 5; ++seed) {
    Batch batch = seed % 2 ? encoder_heavy_batch(8 + static_cast<int>(seed))
                           : test::random_multimodal_batch(seed, 20, 8000);
    batch.step = seed;
    plans.push_back(planner.plan(batch));
  }
  for (std::size_t i = 3; i < plans.size(); ++i) {
    EXPECT_EQ(plans[i].llm.tp, plans[2].llm.tp);
    EXPECT_EQ(plans[i].encoder.tp, plans[2].encoder.tp);
    EXPECT_EQ(plans[i].placement, plans[2].placement);
  }
}

TEST(LayoutSearch, RunLayoutNeverWorseThanDefaultOnTheSampledBatches) {
  const ClusterSpec cluster = test::one_node(8);
  const ModelSpec model = model_preset("qwen2-vl-7b");
  std::vector<Batch> batches;
  for (std::uint32_t seed = 1; seed <= 4; ++seed)
    batches.push_back(test::random_multimodal_batch(seed, 24, 12000));

  const PlannerOptions chosen = best_dhp_options(cluster, model, batches);
  EXPECT_EQ(chosen.strategy, Strategy::Dhp);
  EXPECT_GT(chosen.llm_tp, 0);
  EXPECT_GT(chosen.encoder_tp, 0);
  EXPECT_EQ(chosen.layout_search, LayoutSearch::Off);
  // Fewer than 8 batches: every batch is sampled, so the comparison is exact.
  EXPECT_LE(summed_estimate_ms(cluster, model, batches, chosen),
            summed_estimate_ms(cluster, model, batches, search_off()) * (1 + 1e-12));
  // And the per-batch search is never worse than the run's one layout.
  EXPECT_LE(summed_estimate_ms(cluster, model, batches, PlannerOptions{}),
            summed_estimate_ms(cluster, model, batches, chosen) * (1 + 1e-12));
}

TEST(LayoutSearch, RunLayoutIsDeterministic) {
  const ClusterSpec cluster = test::one_node(8);
  const ModelSpec model = model_preset("qwen2-vl-7b");
  std::vector<Batch> batches = {test::random_multimodal_batch(11, 20, 8000),
                                encoder_heavy_batch(12)};
  const PlannerOptions a = best_dhp_options(cluster, model, batches);
  const PlannerOptions b = best_dhp_options(cluster, model, batches);
  EXPECT_EQ(describe_layout(a), describe_layout(b));
  EXPECT_EQ(a.encoder_devices, b.encoder_devices);
}

TEST(LayoutSearch, RunLayoutOfABaselineKeepsAnExplicitTp) {
  const ClusterSpec cluster = test::one_node(8);
  const ModelSpec model = model_preset("qwen2-vl-7b");
  const std::vector<Batch> batches = {encoder_heavy_batch(8)};
  PlannerOptions base;
  base.strategy = Strategy::MegatronDcp;
  base.llm_tp = 2;
  const PlannerOptions chosen = best_run_layout(cluster, model, batches, base);
  EXPECT_EQ(chosen.llm_tp, 2);
  EXPECT_EQ(chosen.strategy, Strategy::MegatronDcp);
  EXPECT_LE(summed_estimate_ms(cluster, model, batches, chosen),
            summed_estimate_ms(cluster, model, batches, base) * (1 + 1e-12));
}

TEST(LayoutSearch, TextOnlyModelStaysColocated) {
  const ClusterSpec cluster = test::one_node(8);
  const ModelSpec model = model_preset("megatron-dcp-1b");
  const std::vector<Batch> batches = {test::random_text_batch(3, 32, 7.0, 1.5, 128, 8192)};
  const PlannerOptions chosen = best_dhp_options(cluster, model, batches);
  EXPECT_EQ(chosen.placement, EncoderPlacement::Colocated);
  EXPECT_LE(summed_estimate_ms(cluster, model, batches, chosen),
            summed_estimate_ms(cluster, model, batches, search_off()) * (1 + 1e-12));
}

TEST(LayoutSearch, RejectsAnEmptyRun) {
  EXPECT_THROW(
      best_dhp_options(test::one_node(8), model_preset("qwen2-vl-7b"), std::span<const Batch>{}),
      Error);
}

}  // namespace
}  // namespace dhp
