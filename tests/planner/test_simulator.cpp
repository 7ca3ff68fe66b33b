#include "dhp/simulator.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>

#include "cost_test_fixtures.hpp"
#include "dhp/dataset.hpp"
#include "dhp/error.hpp"
#include "dhp/planner.hpp"
#include "planner/internal.hpp"

namespace dhp {
namespace {

using testing::h100_cluster;
using testing::qwen2_vl_7b;

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

ModelSpec text_model() {
  ModelSpec m = qwen2_vl_7b();
  m.encoder.reset();
  return m;
}

Sample text_sample(std::int64_t id, std::int64_t tokens) {
  Sample s;
  s.id = id;
  s.text_tokens = tokens;
  return s;
}

// A plan of `ranks` LLM ranks (tp 1) from device 0 with one wave.
Plan one_wave_plan(int ranks) {
  Plan plan;
  plan.strategy = "by_hand";
  plan.llm = {.tp = 1, .first_device = 0, .ranks = ranks};
  plan.waves.resize(1);
  return plan;
}

// End of the last LLM compute span on each device.
std::map<int, double> compute_end(const SimulationResult& result) {
  std::map<int, double> end;
  for (const TimelineEvent& e : result.timeline)
    if (e.kind == EventKind::Compute) end[e.device] = std::max(end[e.device], e.end_ms);
  return end;
}

// The first device on which a span of kind `a` and one of kind `b` overlap in time; -1: none.
int device_running_both(const SimulationResult& r, EventKind a, EventKind b) {
  for (const TimelineEvent& x : r.timeline) {
    if (x.kind != a) continue;
    for (const TimelineEvent& y : r.timeline)
      if (y.kind == b && y.device == x.device && y.start_ms < x.end_ms - 1e-9 &&
          x.start_ms < y.end_ms - 1e-9)
        return x.device;
  }
  return -1;
}

bool has_event(const SimulationResult& r, EventKind kind) {
  return std::any_of(r.timeline.begin(), r.timeline.end(),
                     [&](const TimelineEvent& e) { return e.kind == kind; });
}

void expect_sane(const SimulationResult& r) {
  EXPECT_GT(r.step_ms, 0);
  for (double f : r.device_idle_fraction) {
    EXPECT_GE(f, 0.0);
    EXPECT_LE(f, 1.0);
  }
  EXPECT_GE(r.mean_idle_fraction, 0.0);
  EXPECT_LE(r.mean_idle_fraction, 1.0);
}

TEST(Simulator, OneWholeSequenceMatchesTheCostModel) {
  const CostModel cost(h100_cluster(1), text_model(), 1, 1);
  Batch batch;
  batch.samples = {text_sample(7, 8192)};
  Plan plan = one_wave_plan(1);
  plan.waves[0].groups = {{.ranks = {0}}};
  plan.waves[0].sequences = {{.sample = 0, .group = 0, .sharding = Sharding::Whole, .member = 0}};

  const SimulationResult r = Simulator(cost).run(plan, batch, true);
  expect_sane(r);
  const double modelled = cost.llm_sequence_ms(8192, {1, false}) + cost.wave_overhead_ms();
  EXPECT_NEAR(r.step_ms, modelled, 0.10 * modelled);
  // One rank: no grad sync, busy the whole step.
  EXPECT_NEAR(r.device_idle_fraction[0], 0.0, 1e-9);
  EXPECT_DOUBLE_EQ(r.device_idle_fraction[1], 1.0);  // device not in the plan
  // Peak memory is the static state plus the sequence's activations.
  const double expected_gib =
      (cost.llm_static_bytes(1) + cost.llm_activation_bytes(8192, 1)) / kGiB;
  EXPECT_NEAR(r.device_peak_mem_gib[0], expected_gib, 1e-9);
  EXPECT_NEAR(r.max_peak_mem_gib, expected_gib, 1e-9);
  EXPECT_DOUBLE_EQ(r.mem_capacity_gib, 74.0);
}

TEST(Simulator, ZigzagRingIsCloseToTheCostModelAndFasterThanWhole) {
  const CostModel cost(h100_cluster(1), text_model(), 1, 1);
  Batch batch;
  batch.samples = {text_sample(1, 65536)};
  Plan plan = one_wave_plan(4);
  plan.waves[0].groups = {{.ranks = {0, 1, 2, 3}}};
  plan.waves[0].sequences = {{.sample = 0, .group = 0, .sharding = Sharding::Zigzag, .member = -1}};
  const SimulationResult ring = Simulator(cost).run(plan, batch);
  expect_sane(ring);
  const double modelled =
      cost.llm_sequence_ms(65536, {4, false}) + cost.wave_overhead_ms() +
      cost.llm_grad_sync_full_ms(4) * (1 - cost.coefficients().grad_sync_overlap);
  EXPECT_NEAR(ring.step_ms, modelled, 0.15 * modelled);
  EXPECT_LT(ring.step_ms, cost.llm_sequence_ms(65536, {1, false}));
}

// The plan's estimate and the simulator price a ring the same way up to what only the
// simulator resolves (uneven zigzag chunks, per-hop timing): a few percent at most.
TEST(Simulator, RingsAgreeWithThePlanEstimate) {
  const ClusterSpec cluster = h100_cluster(2);
  const ModelSpec model = text_model();
  PlannerOptions options;
  options.llm_tp = 1;
  const auto layout = detail::resolve_layout(cluster, model, options);
  const CostModel cost = detail::make_cost_model(cluster, model, layout, options);
  // Prints the table of docs/simulator.md ("Agreement with the cost model").
  const int degrees[] = {1, 3, 4, 8, 12};
  std::printf("| tokens | d=1 | d=3 | d=4 | d=8 | d=12 |\n");
  int checked = 0;
  for (std::int64_t tokens : {2048, 8192, 65536}) {
    std::printf("| %lld |", static_cast<long long>(tokens));
    for (int degree : degrees) {
      if (cost.llm_static_bytes(layout.llm.ranks) + cost.llm_activation_bytes(tokens, degree) >
          cost.capacity_bytes()) {
        std::printf(" n/a |");  // does not fit at this degree
        continue;
      }
      Batch batch;
      batch.samples = {text_sample(1, tokens)};
      detail::GroupDraft group;
      group.degree = degree;
      group.whole.resize(degree);
      if (degree == 1)
        group.whole[0] = {0};
      else
        group.split = {0};
      detail::WaveDraft wave;
      wave.groups = {group};
      const Plan plan = detail::build_plan("by_hand", batch, cost, layout, {wave});
      const SimulationResult r = Simulator(cost).run(plan, batch);
      std::printf(" %+.1f%% |", 100 * (r.step_ms / plan.estimate.step_ms - 1));
      EXPECT_NEAR(r.step_ms, plan.estimate.step_ms, 0.04 * plan.estimate.step_ms)
          << "degree " << degree << ", " << tokens << " tokens";
      ++checked;
    }
    std::printf("\n");
  }
  EXPECT_GE(checked, 8);
}

// Gradient buckets leave once every rank produced them: a rank that finished early with a
// short last backward does not stop the critical rank's long backward from hiding the sync.
TEST(Simulator, GradSyncHidesUnderTheCriticalRanksBackward) {
  const CostModel cost(h100_cluster(1), text_model(), 1, 1);
  Batch batch;
  batch.samples = {text_sample(1, 16384), text_sample(2, 256)};
  Plan plan = one_wave_plan(2);
  plan.waves[0].groups = {{.ranks = {0}}, {.ranks = {1}}};
  plan.waves[0].sequences = {{.sample = 0, .group = 0, .sharding = Sharding::Whole, .member = 0},
                             {.sample = 1, .group = 1, .sharding = Sharding::Whole, .member = 0}};
  const SimulationResult r = Simulator(cost).run(plan, batch, true);
  const auto end = compute_end(r);
  const double sync = cost.llm_grad_sync_full_ms(2);
  ASSERT_GT(end.at(0) - end.at(1), sync);  // rank 1 is long done
  EXPECT_NEAR(r.step_ms, end.at(0) + sync * (1 - cost.coefficients().grad_sync_overlap),
              1e-6 * r.step_ms);
}

TEST(Simulator, ExtraWorkOnOneRingMemberDelaysEveryMember) {
  const CostModel cost(h100_cluster(1), text_model(), 1, 1);
  Batch batch;
  batch.samples = {text_sample(1, 32768), text_sample(2, 16384)};
  Plan balanced = one_wave_plan(4);
  balanced.waves[0].groups = {{.ranks = {0, 1, 2, 3}}};
  balanced.waves[0].sequences = {
      {.sample = 0, .group = 0, .sharding = Sharding::Zigzag, .member = -1}};
  Batch balanced_batch;
  balanced_batch.samples = {batch.samples[0]};

  Plan loaded = balanced;
  loaded.waves[0].sequences.push_back(
      {.sample = 1, .group = 0, .sharding = Sharding::Whole, .member = 1});

  const auto before = compute_end(Simulator(cost).run(balanced, balanced_batch, true));
  const SimulationResult after_result = Simulator(cost).run(loaded, batch, true);
  expect_sane(after_result);
  const auto after = compute_end(after_result);
  // Member 1's extra sequence is ~quadratic work; the others wait for its KV blocks every
  // layer, so each of them finishes much later too — not just member 1.
  const double extra = cost.llm_sequence_ms(16384, {1, false});
  for (int device = 0; device < 4; ++device) {
    ASSERT_TRUE(before.count(device) && after.count(device));
    EXPECT_GT(after.at(device) - before.at(device), 0.5 * extra) << "device " << device;
  }
  // The waiting members show up as idle time and as Wait events.
  EXPECT_GT(after_result.device_idle_fraction[0], after_result.device_idle_fraction[1]);
  bool waited = false;
  for (const auto& e : after_result.timeline) waited |= e.kind == EventKind::Wait && e.device == 0;
  EXPECT_TRUE(waited);
}

TEST(Simulator, RingAcrossNodesIsSlowerThanInsideANode) {
  const CostModel cost(h100_cluster(2), text_model(), 1, 1);
  Batch batch;
  batch.samples = {text_sample(1, 4099)};  // 2d does not divide it: uneven chunks
  Plan inside = one_wave_plan(16);
  inside.waves[0].groups = {{.ranks = {0, 1, 2, 3}}};
  inside.waves[0].sequences = {
      {.sample = 0, .group = 0, .sharding = Sharding::Zigzag, .member = -1}};
  Plan across = inside;
  across.waves[0].groups = {{.ranks = {0, 1, 8, 9}}};
  const double t_inside = Simulator(cost).run(inside, batch).step_ms;
  const double t_across = Simulator(cost).run(across, batch).step_ms;
  EXPECT_GT(t_across, t_inside);
}

// Qwen2-VL style batch: two waves of image+text samples on one node.
struct VisualSetup {
  Batch batch;
  Plan plan;
};

VisualSetup visual_setup(EncoderPlacement placement) {
  VisualSetup s;
  for (int i = 0; i < 8; ++i) {
    Sample sample = text_sample(i, 512);
    sample.visuals = {{.patches = 16384, .llm_tokens = 4096, .frames = 1}};
    s.batch.samples.push_back(sample);
  }
  Plan& plan = s.plan;
  plan.strategy = "by_hand";
  plan.placement = placement;
  if (placement == EncoderPlacement::Colocated) {
    plan.llm = {.tp = 1, .first_device = 0, .ranks = 8};
    plan.encoder = {.tp = 1, .first_device = 0, .ranks = 8};
  } else {
    plan.llm = {.tp = 1, .first_device = 0, .ranks = 4};
    plan.encoder = {.tp = 1, .first_device = 4, .ranks = 4};
  }
  plan.waves.resize(2);
  const int llm_ranks = plan.llm.ranks;
  for (int w = 0; w < 2; ++w) {
    for (int r = 0; r < llm_ranks; ++r) plan.waves[w].groups.push_back({.ranks = {r}});
    for (int k = 0; k < 4; ++k) {
      const int sample = w * 4 + k;
      plan.waves[w].sequences.push_back(
          {.sample = sample, .group = k % llm_ranks, .sharding = Sharding::Whole, .member = 0});
      plan.encoder_tasks.push_back(
          {.sample = sample, .visual = 0, .wave = w, .rank = k % plan.encoder.ranks});
    }
  }
  return s;
}

TEST(Simulator, DisjointEncoderOverlapsTheLlm) {
  const CostModel cost(h100_cluster(1), qwen2_vl_7b(), 1, 1);
  const VisualSetup s = visual_setup(EncoderPlacement::Disjoint);
  const SimulationResult r = Simulator(cost).run(s.plan, s.batch, true);
  expect_sane(r);
  // Some encoder work of wave 1 runs while wave 0's LLM computes.
  bool overlapped = false;
  for (const auto& enc : r.timeline) {
    if (enc.kind != EventKind::Encoder || enc.wave != 1) continue;
    for (const auto& llm : r.timeline) {
      if (llm.kind == EventKind::Compute && llm.wave == 0 && enc.start_ms < llm.end_ms &&
          llm.start_ms < enc.end_ms)
        overlapped = true;
    }
  }
  EXPECT_TRUE(overlapped);
  // Encoder devices hold encoder state, LLM devices LLM state.
  EXPECT_LT(r.device_peak_mem_gib[5], r.device_peak_mem_gib[0]);
}

TEST(Simulator, ColocatedEncoderRunsBeforeItsWaveOnTheSameDevices) {
  const CostModel cost(h100_cluster(1), qwen2_vl_7b(), 1, 1);
  const VisualSetup s = visual_setup(EncoderPlacement::Colocated);
  const SimulationResult r = Simulator(cost).run(s.plan, s.batch, true);
  expect_sane(r);
  ASSERT_TRUE(has_event(r, EventKind::Compute));
  ASSERT_TRUE(has_event(r, EventKind::Encoder));
  EXPECT_EQ(device_running_both(r, EventKind::Compute, EventKind::Encoder), -1)
      << "encoder and LLM overlap on a device";
  // Colocated devices hold both modules' state.
  const double statics = (cost.llm_static_bytes(8) + cost.encoder_static_bytes(8)) / kGiB;
  EXPECT_GT(r.device_peak_mem_gib[0], statics);
}

// Colocated, a device encodes the next wave's items (other ranks wait for them) before it runs
// the last wave's encoder backward.
TEST(Simulator, ColocatedDevicesEncodeTheNextWaveBeforeTheLastOnesBackward) {
  const CostModel cost(h100_cluster(1), qwen2_vl_7b(), 1, 1);
  const VisualSetup s = visual_setup(EncoderPlacement::Colocated);
  const SimulationResult r = Simulator(cost).run(s.plan, s.batch, true);
  expect_sane(r);
  for (int device = 0; device < 4; ++device) {
    double first_of_wave1 = 1e300, last_of_wave0 = 0;
    for (const auto& e : r.timeline) {
      if (e.kind != EventKind::Encoder || e.device != device) continue;
      if (e.wave == 1) first_of_wave1 = std::min(first_of_wave1, e.start_ms);
      if (e.wave == 0) last_of_wave0 = std::max(last_of_wave0, e.start_ms);
    }
    EXPECT_LT(first_of_wave1, last_of_wave0) << "device " << device;
  }
}

// An encoder rank runs its items' backwards in the order their consumers finish: the item
// of a short sequence does not wait behind the item of a long one listed first.
TEST(Simulator, EncoderBackwardFollowsTheOrderItsConsumersFinish) {
  const CostModel cost(h100_cluster(1), qwen2_vl_7b(), 1, 1);
  Batch batch;
  Plan plan = one_wave_plan(8);
  plan.placement = EncoderPlacement::Colocated;
  plan.encoder = {.tp = 1, .first_device = 0, .ranks = 8};
  const VisualItem item{.patches = 4096, .llm_tokens = 1024, .frames = 1};
  for (int s = 0; s < 2; ++s) {
    Sample sample = text_sample(s, s == 0 ? 32768 : 256);
    sample.visuals = {item};
    batch.samples.push_back(sample);
    plan.waves[0].groups.push_back({.ranks = {s + 1}});
    plan.waves[0].sequences.push_back(
        {.sample = s, .group = s, .sharding = Sharding::Whole, .member = 0});
    plan.encoder_tasks.push_back({.sample = s, .visual = 0, .wave = 0, .rank = 0});
  }
  const SimulationResult r = Simulator(cost).run(plan, batch, true);
  expect_sane(r);
  const auto end = compute_end(r);
  ASSERT_GT(end.at(1), end.at(2) + cost.encoder_item_ms(item));  // sample 0 ends much later
  double first_backward = 1e300;
  for (const auto& e : r.timeline)
    if (e.kind == EventKind::Encoder && e.device == 0 && e.start_ms >= end.at(2))
      first_backward = std::min(first_backward, e.start_ms);
  EXPECT_LT(first_backward, end.at(1));
}

// Colocated, the LLM's gradient buckets leave while the devices run the encoder's last
// backward: the step ends with the encoder's exposed sync, not with both syncs in series.
TEST(Simulator, ColocatedLlmGradSyncRunsUnderTheEncodersLastBackward) {
  const CostModel cost(h100_cluster(1), qwen2_vl_7b(), 1, 1);
  const VisualSetup s = visual_setup(EncoderPlacement::Colocated);
  const SimulationResult r = Simulator(cost).run(s.plan, s.batch, true);
  double llm_done = 0, encoder_done = 0, llm_sync_start = 1e300;
  for (const auto& e : r.timeline) {
    if (e.kind == EventKind::Compute) llm_done = std::max(llm_done, e.end_ms);
    if (e.kind == EventKind::Encoder) encoder_done = std::max(encoder_done, e.end_ms);
    if (e.kind == EventKind::GradSync) llm_sync_start = std::min(llm_sync_start, e.start_ms);
  }
  ASSERT_GT(encoder_done, llm_done);  // the last wave's encoder backward follows the LLM
  const double overlap = cost.coefficients().grad_sync_overlap;
  const double llm_exposed = cost.llm_grad_sync_full_ms(8) * (1 - overlap);
  const double encoder_exposed = cost.encoder_grad_sync_full_ms(8) * (1 - overlap);
  ASSERT_GT(llm_exposed, 1.0);
  // Devices 4-7 run nothing: their share of the LLM's sync shows from the LLM's end.
  EXPECT_NEAR(llm_sync_start, llm_done, 1e-9 * r.step_ms);
  const double hidden = std::min(llm_exposed, encoder_done - llm_done);
  EXPECT_NEAR(r.step_ms, encoder_done + llm_exposed - hidden + encoder_exposed, 1e-9 * r.step_ms);
  EXPECT_LT(r.step_ms, encoder_done + llm_exposed + encoder_exposed - 0.5 * hidden);
  // A device shows the sync only where it computes nothing else.
  EXPECT_EQ(device_running_both(r, EventKind::GradSync, EventKind::Encoder), -1);
}

// Colocated, between two waves a device holds both waves' encoder items (the next wave's
// forward runs before the last one's backward), with no LLM activations.
TEST(Simulator, ColocatedDevicesHoldTwoWavesOfEncoderItemsBetweenWaves) {
  const CostModel cost(h100_cluster(1), qwen2_vl_7b(), 1, 1);
  Batch batch;
  Plan plan;
  plan.strategy = "by_hand";
  plan.placement = EncoderPlacement::Colocated;
  plan.llm = {.tp = 1, .first_device = 0, .ranks = 8};
  plan.encoder = {.tp = 1, .first_device = 0, .ranks = 8};
  plan.waves.resize(2);
  const VisualItem item{.patches = 65536, .llm_tokens = 16384, .frames = 1};
  for (int w = 0; w < 2; ++w) {
    Sample sample = text_sample(w, 64);
    sample.visuals = {item};
    batch.samples.push_back(sample);
    // The LLM runs on rank 1, the item is encoded on device 0: device 0 has no LLM work.
    plan.waves[w].groups = {{.ranks = {1}}};
    plan.waves[w].sequences = {{.sample = w, .group = 0, .sharding = Sharding::Whole, .member = 0}};
    plan.encoder_tasks.push_back({.sample = w, .visual = 0, .wave = w, .rank = 0});
  }
  const SimulationResult r = Simulator(cost).run(plan, batch);
  const double statics = cost.llm_static_bytes(8) + cost.encoder_static_bytes(8);
  // Both items' held bytes, and the working set of the one layer running at a time.
  const EncoderBytes bytes = cost.encoder_item_bytes(item);
  ASSERT_GT(bytes.working, 0);
  EXPECT_NEAR(r.device_peak_mem_gib[0] * kGiB, statics + 2 * bytes.held + bytes.working,
              1e-9 * statics);
}
// A static layout fixes its own TP (here 4) where the planner's default is smaller: the
// simulator given the default's cost model runs the plan at the plan's degrees, exactly as
// one built for them.
TEST(Simulator, RunsAPlanAtItsOwnTpDegrees) {
  const ClusterSpec cluster = h100_cluster(1);
  const ModelSpec model = text_model();
  PlannerOptions options;
  // Calibrated coefficients, not the defaults: the rebuilt cost model must keep them.
  options.coefficients = defaults_for(cluster);
  options.coefficients.gemm_efficiency *= 0.5;
  options.coefficients.layer_overhead_us *= 3;
  options.coefficients_set = true;
  options.strategy = Strategy::StaticBest;
  options.static_layout = StaticLayout{.tp = 4, .cp = 2, .dp = 1, .pack_tokens = 16384};
  const Planner planner(cluster, model, options);
  PlannerOptions default_options = options;
  default_options.static_layout.reset();
  const Planner default_planner(cluster, model, default_options);
  ASSERT_NE(default_planner.cost_model().llm_tp(), 4);
  Batch batch;
  for (int i = 0; i < 5; ++i) batch.samples.push_back(text_sample(i, 1000 + 997 * i));
  const Plan plan = planner.plan(batch);
  ASSERT_EQ(plan.llm.tp, 4);
  const SimulationResult got = Simulator(default_planner.cost_model()).run(plan, batch);
  const CostModel at_plan(cluster, model, 4, planner.cost_model().encoder_tp(),
                          planner.cost_model().coefficients());
  const SimulationResult want = Simulator(at_plan).run(plan, batch);
  EXPECT_EQ(got.step_ms, want.step_ms);
  EXPECT_EQ(got.device_peak_mem_gib, want.device_peak_mem_gib);
  EXPECT_NEAR(got.step_ms, plan.estimate.step_ms, 0.05 * plan.estimate.step_ms);

  // The encoder's degree too: a plan at encoder TP 2, simulated through a cost model built
  // for encoder TP 1, runs as one built for 2.
  PlannerOptions mm;
  mm.llm_tp = 2;
  mm.encoder_tp = 2;
  const ModelSpec vlm = qwen2_vl_7b();
  const Planner vlm_planner(cluster, vlm, mm);
  Batch images;
  for (int i = 0; i < 6; ++i) {
    Sample s = text_sample(i, 300 + 41 * i);
    s.visuals.push_back(VisualItem{4 * (1024 + 97 * i), 1024 + 97 * i, 1});
    images.samples.push_back(s);
  }
  const Plan vlm_plan = vlm_planner.plan(images);
  ASSERT_EQ(vlm_plan.encoder.tp, 2);
  const CostModel at_etp1(cluster, vlm, 2, 1, vlm_planner.cost_model().coefficients());
  const CostModel at_etp2(cluster, vlm, 2, 2, vlm_planner.cost_model().coefficients());
  EXPECT_EQ(Simulator(at_etp1).run(vlm_plan, images).step_ms,
            Simulator(at_etp2).run(vlm_plan, images).step_ms);
}

TEST(Simulator, BadPlansAreErrors) {
  const CostModel cost(h100_cluster(1), text_model(), 1, 1);
  Batch batch;
  batch.samples = {text_sample(1, 100)};
  Plan plan = one_wave_plan(1);
  plan.waves[0].groups = {{.ranks = {3}}};
  plan.waves[0].sequences = {{.sample = 0, .group = 0, .sharding = Sharding::Whole, .member = 0}};
  EXPECT_THROW(Simulator(cost).run(plan, batch), Error);
  plan = one_wave_plan(9);  // more ranks than devices
  EXPECT_THROW(Simulator(cost).run(plan, batch), Error);
}

// 64 ranks on 8 nodes, 512 sequences: rings of several degrees plus whole sequences.
TEST(Simulator, SixtyFourRanksFiveHundredSequencesIsFast) {
  const CostModel cost(h100_cluster(8), text_model(), 1, 1);
  Batch batch;
  Plan plan = one_wave_plan(64);
  int rank = 0;
  for (int degree : {8, 8, 5, 3, 6, 2, 2}) {
    GroupPlan g;
    for (int k = 0; k < degree; ++k) g.ranks.push_back(rank++);
    plan.waves[0].groups.push_back(g);
  }
  while (rank < 64) plan.waves[0].groups.push_back({.ranks = {rank++}});
  const int groups = static_cast<int>(plan.waves[0].groups.size());
  for (int i = 0; i < 512; ++i) {
    batch.samples.push_back(text_sample(i, 256 + (i * 7919) % 8192));
    const int g = i % groups;
    const bool split = plan.waves[0].groups[static_cast<size_t>(g)].degree() > 1 && i % 3 == 0;
    plan.waves[0].sequences.push_back(
        {.sample = i,
         .group = g,
         .sharding = split ? Sharding::Zigzag : Sharding::Whole,
         .member = split ? -1 : i % plan.waves[0].groups[static_cast<size_t>(g)].degree()});
  }
  const Simulator sim(cost);
  const auto start = std::chrono::steady_clock::now();
  const SimulationResult r = sim.run(plan, batch, true);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  expect_sane(r);
  RecordProperty("simulate_ms", std::to_string(ms));
  std::printf("64 ranks, 512 sequences: simulated in %.2f ms (step %.1f ms, %zu events)\n", ms,
              r.step_ms, r.timeline.size());
  EXPECT_LT(ms, 1000.0);  // the target is well under 50 ms in an optimised build
}

// A colocated encoder rank runs each item's backward once that item's consumer is done, in
// the order the consumers end, as the simulator does: a clip whose short sequence ended is
// not held back behind one whose long sequence is still running. The estimate does the same,
// so on a real video batch (64 GPUs, several waves) the two agree within 1% at every LLM TP.
// With a rank's whole backward started after its last consumer, the estimate was 1.1% above
// the simulator at TP 1 and 4.4% at TP 2 on this batch (the test fails so), and the layout
// search passed TP 2 over.
TEST(Simulator, EstimateRunsEachEncoderBackwardWhenItsConsumerEnds) {
  const ClusterSpec cluster = cluster_preset("h100-64");
  const ModelSpec model = model_preset("qwen2-vl-7b");
  const auto pool = load_activitynet(default_data_path("activitynet"), DatasetAssumptions{});
  const Batch batch = make_batches(pool, 1, 128, 2).front();
  for (int tp : {1, 2, 4}) {
    PlannerOptions options;
    options.llm_tp = tp;
    options.encoder_tp = 1;
    const Planner planner(cluster, model, options);
    const Plan plan = planner.plan(batch);
    ASSERT_EQ(plan.placement, EncoderPlacement::Colocated);
    EXPECT_GE(plan.waves.size(), 3u) << "tp " << tp;
    const SimulationResult r = Simulator(planner.cost_model()).run(plan, batch);
    EXPECT_NEAR(plan.estimate.step_ms, r.step_ms, 0.01 * r.step_ms) << "tp " << tp;
  }
}

}  // namespace
}  // namespace dhp

namespace dhp {
namespace {

// 4096 ranks on 512 nodes, 16384 sequences over two waves, rings up to degree 64.
TEST(Simulator, FourThousandRanksStaysInSeconds) {
  const CostModel cost(testing::h100_cluster(512), text_model(), 1, 1);
  Batch batch;
  Plan plan = one_wave_plan(4096);
  plan.waves.resize(2);
  for (int w = 0; w < 2; ++w) {
    int rank = 0;
    for (int degree : {64, 64, 32, 24, 16, 12, 8, 8, 5, 3}) {
      GroupPlan g;
      for (int k = 0; k < degree; ++k) g.ranks.push_back(rank++);
      plan.waves[static_cast<size_t>(w)].groups.push_back(g);
    }
    while (rank < 4096) plan.waves[static_cast<size_t>(w)].groups.push_back({.ranks = {rank++}});
  }
  for (int i = 0; i < 16384; ++i) {
    const int w = i % 2;
    WavePlan& wave = plan.waves[static_cast<size_t>(w)];
    const int g = (i / 2) % static_cast<int>(wave.groups.size());
    const int degree = wave.groups[static_cast<size_t>(g)].degree();
    const bool split = degree > 1 && (i / 2) % 5 == 0;
    batch.samples.push_back(text_sample(i, 128 + (i * 7919) % 16384));
    wave.sequences.push_back({.sample = i,
                              .group = g,
                              .sharding = split ? Sharding::Zigzag : Sharding::Whole,
                              .member = split ? -1 : (i / 2) % degree});
  }
  const auto start = std::chrono::steady_clock::now();
  const SimulationResult r = Simulator(cost).run(plan, batch);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  expect_sane(r);
  std::printf("4096 ranks, 16384 sequences: simulated in %.1f ms (step %.1f ms)\n", ms, r.step_ms);
  EXPECT_LT(ms, 10000.0);  // target: a couple of seconds at most
}

// The encoder's exposed sync (estimate and simulator alike): after its last backward by the
// unhidden share; on links shared with the LLM after the LLM's sync, and then hidden only
// as far as the backward outlasts the LLM's sync.
TEST(Simulator, EncoderSyncSpanFollowsTheLlmsOnSharedLinks) {
  using detail::encoder_sync_span;
  const double o = 0.5, sync = 40;
  // Own links: from the backward's end, half of it hidden.
  auto own = encoder_sync_span(/*llm_sync_end=*/500, /*encoder_end=*/300, sync, o, false);
  EXPECT_DOUBLE_EQ(own.start, 300);
  EXPECT_DOUBLE_EQ(own.end, 320);
  // Shared, the backward outlasts the LLM's sync by more than the hidden share.
  auto after = encoder_sync_span(100, 300, sync, o, true);
  EXPECT_DOUBLE_EQ(after.start, 300);
  EXPECT_DOUBLE_EQ(after.end, 320);
  // Shared, by less: only that much hides.
  auto partly = encoder_sync_span(290, 300, sync, o, true);
  EXPECT_DOUBLE_EQ(partly.start, 300);
  EXPECT_DOUBLE_EQ(partly.end, 330);
  // Shared, the backward ends before the LLM's sync: none of it hides.
  auto none = encoder_sync_span(400, 300, sync, o, true);
  EXPECT_DOUBLE_EQ(none.start, 400);
  EXPECT_DOUBLE_EQ(none.end, 440);
}

// dhp's colocated plans over several waves (the next wave's forward before the last one's
// backward, two waves' items held between them): the estimate follows the simulator and
// both keep memory within capacity.
TEST(Simulator, ColocatedMultiWavePlansAgreeWithTheirEstimate) {
  const ClusterSpec cluster = h100_cluster(1);
  const ModelSpec model = qwen2_vl_7b();
  PlannerOptions options;
  options.llm_tp = 1;
  options.encoder_tp = 1;
  const Planner planner(cluster, model, options);
  Batch batch;
  for (int i = 0; i < 24; ++i) {
    Sample s = text_sample(i, 2000 + 1733 * (i % 7));
    const std::int64_t frames = 8 + 2 * (i % 5);
    s.visuals.push_back(VisualItem{
        .patches = 576 * frames, .llm_tokens = 144 * frames, .frames = static_cast<int>(frames)});
    batch.samples.push_back(s);
  }
  const Plan plan = planner.plan(batch);
  ASSERT_EQ(plan.placement, EncoderPlacement::Colocated);
  ASSERT_GE(plan.waves.size(), 2u);
  const SimulationResult r = Simulator(planner.cost_model()).run(plan, batch);
  expect_sane(r);
  EXPECT_LE(r.max_peak_mem_gib, r.mem_capacity_gib + 1e-9);
  for (double gib : plan.estimate.peak_mem_gib) EXPECT_LE(gib, r.mem_capacity_gib + 1e-9);
  // Per device (TP 1: LLM rank r is device r), the simulated peak as the estimate's.
  ASSERT_EQ(plan.estimate.peak_mem_gib.size(), r.device_peak_mem_gib.size());
  for (std::size_t d = 0; d < r.device_peak_mem_gib.size(); ++d)
    EXPECT_NEAR(r.device_peak_mem_gib[d], plan.estimate.peak_mem_gib[d], 1e-6) << "device " << d;
  EXPECT_NEAR(r.step_ms, plan.estimate.step_ms, 0.01 * plan.estimate.step_ms);
}

}  // namespace
}  // namespace dhp
