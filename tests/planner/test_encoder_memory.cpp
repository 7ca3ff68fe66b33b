// Encoder memory that follows the plan: whole videos and large images as single items, held
// where their parts run, one span group at a time, and checked by the simulator.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <utility>

#include "dhp/error.hpp"
#include "dhp/planner.hpp"
#include "dhp/simulator.hpp"
#include "planner_test_util.hpp"

namespace dhp {
namespace {

// A whole ActivityNet-length video as Qwen2-VL sees it: 768 frames (384 s at 2 fps) of
// 640x360, 299 tokens per 2-frame temporal slice, 4 patches per token.
VisualItem whole_video(int frames = 768) {
  const std::int64_t tokens = static_cast<std::int64_t>(frames / 2) * 299;
  return VisualItem{4 * tokens, tokens, frames};
}

Batch video_batch(const VisualItem& video) {
  Batch b;
  b.step = 1;
  b.samples.push_back(Sample{7, 200, {video}});
  for (int i = 0; i < 40; ++i) b.samples.push_back(Sample{100 + i, 2000 + 211 * i, {}});
  return b;
}

// The plan holds in memory on the simulator (the authority the planner is checked against),
// cuts `item` of sample 0 into parts, and the estimate is within `tolerance` of the step.
void expect_plan_holds(const Plan& plan, const Batch& batch, const CostModel& cost,
                       double tolerance) {
  const SimulationResult sim = Simulator(cost).run(plan, batch);
  EXPECT_LE(sim.max_peak_mem_gib, sim.mem_capacity_gib);
  EXPECT_LE(*std::max_element(plan.estimate.peak_mem_gib.begin(), plan.estimate.peak_mem_gib.end()),
            plan.estimate.mem_capacity_gib);
  int parts = 0;
  for (const EncoderTask& t : plan.encoder_tasks)
    if (t.sample == 0) parts = std::max(parts, t.parts);
  EXPECT_GT(parts, 1);
  EXPECT_NEAR(plan.estimate.step_ms, sim.step_ms, tolerance * sim.step_ms);
}

TEST(EncoderMemory, AWholeLongVideoPlansAtEveryEncoderTp) {
  // 459k patches in one item, 39 GB of encoder activations on one device at encoder TP 1
  // (twice that was once reserved on every device, which refused the batch at encoder TP 1
  // and 2); its 384 temporal slices are independent, so its parts fit wherever they run.
  const ClusterSpec cluster = cluster_preset("h100-64");
  const ModelSpec model = model_preset("qwen2-vl-7b");
  const VisualItem video = whole_video();
  ASSERT_EQ(video.patches, 459264);
  const Batch batch = video_batch(video);
  for (int etp : {1, 2, 4}) {
    PlannerOptions options;
    options.layout_search = LayoutSearch::Off;
    options.llm_tp = 2;
    options.encoder_tp = etp;
    const Planner planner(cluster, model, options);
    const Plan plan = planner.plan(batch);
    SCOPED_TRACE("etp " + std::to_string(etp));
    expect_plan_holds(plan, batch, planner.cost_model(), 0.02);
  }
}

TEST(EncoderMemory, AWholeVideoOfOneSpanRunsAsARing) {
  // An encoder that attends across all frames of a video (no temporal slices): the item is
  // one span, cut into ring shards that run together.
  const ClusterSpec cluster = cluster_preset("h100-64");
  ModelSpec model = model_preset("qwen2-vl-7b");
  model.encoder->temporal_patch_size = 0;
  const VisualItem video = whole_video(240);
  const Batch batch = video_batch(video);
  const Planner planner(cluster, model);
  const Plan plan = planner.plan(batch);
  std::set<int> ranks;
  for (const EncoderTask& t : plan.encoder_tasks)
    if (t.sample == 0) ranks.insert(t.rank);
  EXPECT_EQ(static_cast<int>(ranks.size()), plan.encoder_tasks.front().parts);  // a ring
  expect_plan_holds(plan, batch, planner.cost_model(), 0.03);
}

TEST(EncoderMemory, ImagesWithTilesAreCutAlongTheirTiles) {
  // InternViT-like tiles of 1024 patches: a 40-tile image is 40 spans.
  const ClusterSpec cluster = test::one_node(8);
  ModelSpec model = model_preset("qwen2-vl-7b");
  model.encoder->attention_tile_patches = 1024;
  Batch batch;
  batch.samples.push_back(Sample{0, 300, {VisualItem{40 * 1024, 40 * 256, 1}}});
  for (int i = 1; i < 12; ++i)
    batch.samples.push_back(Sample{i, 200 + 50 * i, {VisualItem{4 * 1024, 4 * 256, 1}}});
  const Planner planner(cluster, model);
  const Plan plan = planner.plan(batch);
  expect_plan_holds(plan, batch, planner.cost_model(), 0.03);
}

TEST(EncoderMemory, AMixedBatchHoldsOnTheSimulator) {
  // Text, images, a one-span MathVista-size image and a whole video, with the layout searched.
  const ClusterSpec cluster = cluster_preset("h100-64");
  const ModelSpec model = model_preset("qwen2-vl-7b");
  Batch batch = video_batch(whole_video(600));
  batch.samples.push_back(Sample{900, 150, {VisualItem{62592, 15648, 1}}});
  for (int i = 0; i < 60; ++i)
    batch.samples.push_back(Sample{1000 + i, 300 + 7 * i, {VisualItem{2304, 576, 1}}});
  const Planner planner(cluster, model);
  const Plan plan = planner.plan(batch);
  expect_plan_holds(plan, batch, planner.cost_model(), 0.03);
}

TEST(EncoderMemory, ALayerRunsOneSpanGroupAtATime) {
  const ClusterSpec cluster = cluster_preset("h100-64");
  ModelSpec model = model_preset("qwen2-vl-7b");
  const VisualItem video = whole_video();
  const CostModel grouped(cluster, model, 2, 1);
  model.training.encoder_span_group_patches = 0;  // the whole item at once
  const CostModel whole(cluster, model, 2, 1);
  const EncoderBytes g = grouped.encoder_item_bytes(video);
  const EncoderBytes w = whole.encoder_item_bytes(video);
  EXPECT_EQ(g.held, w.held);  // every layer's input is kept either way
  // Groups of whole 1196-patch slices, at most 16384 patches: 13 slices.
  EXPECT_EQ(grouped.encoder_span_group_patches(video), 13 * 1196);
  EXPECT_NEAR(g.working / w.working, 13.0 * 1196 / video.patches, 1e-12);
  // An image of one span has no smaller group.
  const VisualItem image{62592, 15648, 1};
  EXPECT_EQ(grouped.encoder_span_group_patches(image), image.patches);
}

}  // namespace
}  // namespace dhp
