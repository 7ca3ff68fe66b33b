// Encoding one visual item on several encoder ranks: a video's temporal slices as independent
// parts, a single-span image as ring shards (EncoderTask::part/parts).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "dhp/error.hpp"
#include "dhp/planner.hpp"
#include "dhp/simulator.hpp"
#include "planner/cost_terms.hpp"
#include "planner/internal.hpp"

namespace dhp {
namespace {

const EncoderSpec& qwen_encoder() {
  static const ModelSpec model = model_preset("qwen2-vl-7b");
  return *model.encoder;
}

TEST(EncoderParts, SpansAreSlicesOfAVideoOrTilesOfAnImage) {
  EncoderSpec enc = qwen_encoder();
  ASSERT_EQ(enc.temporal_patch_size, 2);
  EXPECT_EQ(encoder_spans(enc, VisualItem{16 * 576, 16 * 144, 16}), 8);
  EXPECT_EQ(encoder_spans(enc, VisualItem{17 * 576, 17 * 144, 17}), 9);  // a half slice
  EXPECT_EQ(encoder_spans(enc, VisualItem{60000, 15000, 1}), 1);         // one full span
  enc.attention_tile_patches = 1024;                                     // InternViT-like
  EXPECT_EQ(encoder_spans(enc, VisualItem{6 * 1024, 6 * 256, 1}), 6);
  EXPECT_EQ(encoder_spans(enc, VisualItem{6 * 1024 + 1, 6 * 256, 1}), 7);
}

TEST(EncoderParts, PartsAddUpToTheItemForAwkwardCounts) {
  EncoderSpec tiled = qwen_encoder();
  tiled.attention_tile_patches = 1024;  // InternViT-like: an image's tiles are its spans
  const std::vector<std::pair<EncoderSpec, VisualItem>> cases = {
      {qwen_encoder(), {37 * 576 + 13, 37 * 144 + 5, 73}},  // a video of 37 slices, odd frames
      {qwen_encoder(), {127 * 33 + 17, 1017, 1}},           // an image: shards of one span
      {qwen_encoder(), {5, 5, 14}},      // 7 slices but only 5 patches: a thin video
      {tiled, {6 * 1024 + 1, 1537, 2}},  // 7 tiles of two frames that attend together
  };
  for (const auto& [enc, item] : cases) {
    const int spans = encoder_spans(enc, item);
    for (int parts : {1, 2, 3, 5, 7, 17, 37}) {
      if ((spans > 1 && parts > spans) || parts > item.patches) continue;
      std::int64_t patches = 0, tokens = 0;
      int frames = 0;
      for (int p = 0; p < parts; ++p) {
        const VisualItem part = encoder_part(enc, item, p, parts);
        EXPECT_GE(part.patches, 1);
        patches += part.patches;
        tokens += part.llm_tokens;
        frames += part.frames;
      }
      EXPECT_EQ(patches, item.patches) << parts << " parts";
      EXPECT_EQ(tokens, item.llm_tokens) << parts << " parts";
      // Slice ranges split a video's frames; tiles and shards each see all the frames.
      const bool slices = temporal_slices(enc, item) > 1;
      EXPECT_EQ(frames, slices ? item.frames : parts * item.frames) << parts << " parts";
      EXPECT_EQ(encoder_parts_are_shards(enc, item, parts), spans == 1 && parts > 1);
    }
  }
}

TEST(EncoderParts, BadPartsAreRejectedWithTheNumbers) {
  const EncoderSpec& enc = qwen_encoder();
  const VisualItem video{8 * 576, 8 * 144, 8};          // 4 slices
  EXPECT_THROW(encoder_part(enc, video, 0, 5), Error);  // more parts than slices
  EXPECT_THROW(encoder_part(enc, video, 4, 4), Error);
  EXPECT_THROW(encoder_part(enc, video, -1, 2), Error);
  try {
    encoder_part(enc, video, 0, 5);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("4 spans"), std::string::npos) << e.what();
  }
}

TEST(EncoderParts, ShardsCostWhatTheyDo) {
  const ClusterSpec cluster = cluster_preset("h100-64");
  const CostModel cost(cluster, model_preset("qwen2-vl-7b"), 2, 1);
  const VisualItem big{62592, 15648, 1};  // a MathVista image at Qwen2-VL's max_pixels
  const double whole = cost.encoder_item_ms(big);
  EXPECT_DOUBLE_EQ(cost.encoder_shard_ms(big, RingSpan{1, false}), whole);
  double previous = whole;
  for (int n : {2, 3, 5, 8}) {
    const double shard = cost.encoder_shard_ms(big, RingSpan{n, false});
    EXPECT_LT(shard, previous) << n;   // a big image gains from every further shard in a node
    EXPECT_GE(n * shard, whole) << n;  // no work disappears: the planner's bound relies on it
    EXPECT_GT(cost.encoder_shard_ms(big, RingSpan{n, true}), shard) << n;  // slower link
    previous = shard;
  }
  EXPECT_LT(cost.encoder_shard_ms(big, RingSpan{8, false}), whole / 6);
  // Shards keep their KV blocks in flight on top of their activations.
  const VisualItem shard = encoder_part(*cost.model().encoder, big, 0, 8);
  EXPECT_GT(cost.encoder_shard_activation_bytes(shard, 8), cost.encoder_activation_bytes(shard));
}

// One giant image among many small ones on a node: the wave waits for it unless it is cut.
Batch giant_image_batch() {
  Batch batch;
  for (int i = 0; i < 24; ++i) {
    Sample s{i, 300 + 40 * i, {VisualItem{1024, 256, 1}}};
    batch.samples.push_back(s);
  }
  batch.samples[5].visuals = {VisualItem{40000, 10000, 1}};
  batch.samples[9].visuals = {VisualItem{48 * 576, 48 * 144, 48}};  // a 24-slice video
  return batch;
}

TEST(EncoderParts, DhpCutsTheLongItemsAndTheSimulatorAgrees) {
  const ClusterSpec cluster = cluster_preset("h100-8");
  const ModelSpec model = model_preset("qwen2-vl-7b");
  const Batch batch = giant_image_batch();
  PlannerOptions cut;
  cut.llm_tp = 1;
  cut.encoder_tp = 1;
  PlannerOptions whole = cut;
  whole.split_visual_items = false;
  const Planner planner(cluster, model, cut);
  const Plan plan = planner.plan(batch);
  const Plan plan_whole = Planner(cluster, model, whole).plan(batch);

  std::map<std::pair<int, int>, std::vector<EncoderTask>> parts;
  for (const EncoderTask& t : plan.encoder_tasks) parts[{t.sample, t.visual}].push_back(t);
  const auto& image = parts.at({5, 0});
  ASSERT_GT(image.size(), 1u) << "the giant image is not sharded";
  std::set<int> ranks;
  for (const EncoderTask& t : image) ranks.insert(t.rank);
  EXPECT_EQ(ranks.size(), image.size()) << "ring shards need distinct ranks";
  EXPECT_GT(parts.at({9, 0}).size(), 1u) << "the long video is not cut into slice ranges";
  for (const EncoderTask& t : plan_whole.encoder_tasks) EXPECT_EQ(t.parts, 1);

  const Simulator sim(planner.cost_model());
  const double simulated = sim.run(plan, batch).step_ms;
  EXPECT_NEAR(plan.estimate.step_ms, simulated, 0.005 * simulated);
  EXPECT_LT(simulated, 0.5 * sim.run(plan_whole, batch).step_ms);
}

TEST(EncoderParts, BaselinesEncodeEveryItemWhole) {
  const ClusterSpec cluster = cluster_preset("h100-8");
  const ModelSpec model = model_preset("qwen2-vl-7b");
  const Batch batch = giant_image_batch();
  for (Strategy s : {Strategy::StaticBalanced, Strategy::MegatronDcp, Strategy::PaperBfdDp}) {
    PlannerOptions o;
    o.strategy = s;
    o.llm_tp = 2;
    o.encoder_tp = 1;
    o.static_layout = StaticLayout{2, 1, 4, 0};
    const Plan plan = Planner(cluster, model, o).plan(batch);
    for (const EncoderTask& t : plan.encoder_tasks) EXPECT_EQ(t.parts, 1) << to_string(s);
  }
}

TEST(EncoderParts, RingShardsStartTogetherInTheSimulator) {
  const ClusterSpec cluster = cluster_preset("h100-8");
  const ModelSpec model = model_preset("qwen2-vl-7b");
  PlannerOptions o;
  o.llm_tp = 2;
  o.encoder_tp = 1;
  const Planner planner(cluster, model, o);
  Batch batch;
  batch.samples = {Sample{0, 100, {VisualItem{1024, 256, 1}}},
                   Sample{1, 100, {VisualItem{8000, 2000, 1}}}};
  detail::WaveDraft wave;
  detail::GroupDraft a, b;
  a.whole = {{0}};
  b.whole = {{1}};
  wave.groups = {a, b};
  Plan plan = detail::build_plan("test", batch, planner.cost_model(),
                                 detail::resolve_layout(cluster, model, o), {wave});
  // Hand-made: rank 0 encodes the small image first, then shard 0 of the big one; rank 1
  // holds shard 1 and must wait for rank 0.
  plan.encoder_tasks = {{.sample = 0, .visual = 0, .wave = 0, .rank = 0},
                        {.sample = 1, .visual = 0, .wave = 0, .rank = 0, .part = 0, .parts = 2},
                        {.sample = 1, .visual = 0, .wave = 0, .rank = 1, .part = 1, .parts = 2}};
  validate(plan, batch);
  const SimulationResult r = Simulator(planner.cost_model()).run(plan, batch, true);
  // Encoder starts on devices 0 and 1 (encoder ranks 0 and 1), in time order: rank 0's are
  // the small image, then its shard; rank 1's first is its shard.
  std::vector<double> starts[2];
  for (const TimelineEvent& e : r.timeline)
    if (e.kind == EventKind::Encoder && e.device < 2) starts[e.device].push_back(e.start_ms);
  for (auto& s : starts) std::sort(s.begin(), s.end());
  ASSERT_GE(starts[0].size(), 2u);
  ASSERT_GE(starts[1].size(), 1u);
  EXPECT_EQ(starts[0][0], 0.0);                  // the small image, at once
  EXPECT_GT(starts[0][1], 0.0);                  // then the shard, after it
  EXPECT_DOUBLE_EQ(starts[1][0], starts[0][1]);  // rank 1's shard waited for rank 0's
  // Two shards on one rank are not a ring.
  plan.encoder_tasks[2].rank = 0;
  EXPECT_THROW(Simulator(planner.cost_model()).run(plan, batch), Error);
}

}  // namespace
}  // namespace dhp
