// Shared plan machinery: node-aware placement, layouts, the fit check, build_plan.
#include <gtest/gtest.h>

#include <set>

#include "dhp/error.hpp"
#include "dhp/simulator.hpp"
#include "planner/internal.hpp"
#include "planner_test_util.hpp"

namespace dhp {
namespace {

int nodes_spanned(const std::vector<int>& ranks, int rpn) {
  std::set<int> nodes;
  for (int r : ranks) nodes.insert(r / rpn);
  return static_cast<int>(nodes.size());
}

int boundary_crossings(const std::vector<int>& ring, int rpn) {
  if (ring.size() < 2) return 0;
  int crossings = 0;
  for (std::size_t i = 0; i < ring.size(); ++i)
    crossings += ring[i] / rpn != ring[(i + 1) % ring.size()] / rpn;
  return crossings;
}

TEST(PlaceGroups, SmallGroupsStayInsideOneNode) {
  const std::vector<int> degrees = {3, 5, 2, 6, 1, 7, 4, 4};  // 32 ranks, nodes of 8
  const auto placed = detail::place_groups(degrees, 32, 8);
  ASSERT_EQ(placed.size(), degrees.size());
  std::set<int> used;
  for (std::size_t g = 0; g < degrees.size(); ++g) {
    EXPECT_EQ(static_cast<int>(placed[g].size()), degrees[g]);
    EXPECT_EQ(nodes_spanned(placed[g], 8), 1) << "group " << g << " of degree " << degrees[g];
    for (int r : placed[g]) EXPECT_TRUE(used.insert(r).second) << "rank " << r << " reused";
  }
}

TEST(PlaceGroups, LargeRingsCrossTheFewestBoundaries) {
  const std::vector<int> degrees = {20, 8, 4};  // 64 ranks, nodes of 8
  const auto placed = detail::place_groups(degrees, 64, 8);
  // 20 ranks need 3 nodes at least; a ring over k nodes crosses k boundaries.
  EXPECT_EQ(nodes_spanned(placed[0], 8), 3);
  EXPECT_EQ(boundary_crossings(placed[0], 8), 3);
  EXPECT_EQ(nodes_spanned(placed[1], 8), 1);
  EXPECT_EQ(nodes_spanned(placed[2], 8), 1);
  EXPECT_FALSE(detail::crosses_nodes(placed[1], 8));
  EXPECT_TRUE(detail::crosses_nodes(placed[0], 8));
}

TEST(PlaceGroups, TooManyRanksIsAnError) {
  EXPECT_THROW(detail::place_groups({4, 5}, 8, 8), Error);
  EXPECT_THROW(detail::place_groups({0}, 8, 8), Error);
}

TEST(ResolveLayout, ExplicitTpMustDivideHeads) {
  const ModelSpec model = model_preset("qwen2-vl-7b");
  PlannerOptions options;
  options.llm_tp = 3;
  try {
    detail::resolve_layout(cluster_preset("h100-8"), model, options);
    FAIL() << "tp=3 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("llm_tp=3"), std::string::npos) << e.what();
  }
}

TEST(ResolveLayout, AutomaticTpDividesHeadsAndNode) {
  const ModelSpec model = model_preset("llama3-70b");
  const auto layout = detail::resolve_layout(cluster_preset("h100-64"), model, {});
  EXPECT_EQ(model.llm.heads % layout.llm_tp, 0);
  EXPECT_EQ(8 % layout.llm_tp, 0);
  EXPECT_EQ(layout.llm.ranks * layout.llm_tp, 64);
  EXPECT_EQ(layout.llm_ranks_per_node, 8 / layout.llm_tp);
}

TEST(ResolveLayout, DisjointPlacesEncoderFirst) {
  PlannerOptions options;
  options.placement = EncoderPlacement::Disjoint;
  options.encoder_devices = 8;
  const auto layout =
      detail::resolve_layout(cluster_preset("h100-64"), model_preset("qwen2-vl-7b"), options);
  EXPECT_EQ(layout.encoder.first_device, 0);
  EXPECT_EQ(layout.encoder.num_devices(), 8);
  EXPECT_EQ(layout.llm.first_device, 8);
  EXPECT_EQ(layout.llm.num_devices(), 56);
  options.encoder_devices = 12;  // not a node multiple
  EXPECT_THROW(
      detail::resolve_layout(cluster_preset("h100-64"), model_preset("qwen2-vl-7b"), options),
      Error);
}

TEST(CheckBatchFits, NamesTheSampleThatCannotFit) {
  const ClusterSpec cluster = cluster_preset("h100-8");
  const ModelSpec model = model_preset("qwen2-vl-7b");
  const auto layout = detail::resolve_layout(cluster, model, {});
  const CostModel cost = detail::make_cost_model(cluster, model, layout, {});
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
  const ClusterSpec cluster = cluster_preset("h100-8");
  const ModelSpec model = model_preset("qwen2-vl-7b");
  const auto layout = detail::resolve_layout(cluster, model, {});
  const CostModel cost = detail::make_cost_model(cluster, model, layout, {});
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
