// The dhp planner end to end: invariants, memory, determinism, errors.
#include <gtest/gtest.h>

#include <algorithm>

#include "dhp/dataset.hpp"
#include "dhp/error.hpp"
#include "dhp/planner.hpp"
#include "planner/internal.hpp"
#include "planner_test_util.hpp"

namespace dhp {
namespace {

void expect_sound(const Plan& plan, const Batch& batch) {
  EXPECT_NO_THROW(validate(plan, batch));
  for (int c : test::placements_per_sample(plan, batch)) EXPECT_EQ(c, 1);
  for (const WavePlan& w : plan.waves) {
    std::vector<int> seen(plan.llm.ranks, 0);
    for (const GroupPlan& g : w.groups) {
      EXPECT_GE(g.degree(), 1);
      for (int r : g.ranks) {
        ASSERT_GE(r, 0);
        ASSERT_LT(r, plan.llm.ranks);
        EXPECT_EQ(++seen[r], 1) << "rank " << r << " in two groups";
      }
    }
    for (const SequencePlan& s : w.sequences) {
      const int degree = w.groups.at(s.group).degree();
      if (s.sharding == Sharding::Whole) {
        EXPECT_GE(s.member, 0);
        EXPECT_LT(s.member, degree);
      } else {
        EXPECT_EQ(s.member, -1);
        EXPECT_GE(degree, 2);
      }
    }
  }
  for (double gib : plan.estimate.peak_mem_gib) EXPECT_LE(gib, plan.estimate.mem_capacity_gib);
}

TEST(Strategy, NamesRoundTrip) {
  for (Strategy s : all_strategies()) EXPECT_EQ(strategy_from_string(to_string(s)), s);
  try {
    strategy_from_string("fastest");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("megatron_dcp"), std::string::npos);
  }
}

TEST(DhpPlanner, RandomMultimodalBatchesAreSound) {
  const Planner planner(cluster_preset("h100-64"), model_preset("qwen2-vl-7b"));
  for (std::uint32_t seed = 1; seed <= 6; ++seed) {
    const Batch batch = test::random_multimodal_batch(seed, 200, 90000);
    const Plan plan = planner.plan(batch);
    EXPECT_EQ(plan.strategy, "dhp");
    EXPECT_EQ(plan.step, batch.step);
    expect_sound(plan, batch);
  }
}

TEST(DhpPlanner, SequencesNearTheMemoryLimitStillFit) {
  const Planner planner(cluster_preset("h100-8"), model_preset("qwen2-vl-7b"));
  // Find, by doubling, a length that only fits split over several ranks.
  std::int64_t tokens = 4096;
  for (;;) {
    Batch b;
    b.samples.push_back(Sample{1, tokens * 2, {}});
    try {
      planner.plan(b);
    } catch (const Error& e) {
      ASSERT_EQ(e.kind(), ErrorKind::DoesNotFit) << e.what();
      break;
    }
    tokens *= 2;
    ASSERT_LT(tokens, std::int64_t{1} << 32);
  }
  Batch batch = test::random_text_batch(11, 40, 6.5, 1.2, 64, 8000);
  batch.samples.push_back(Sample{77, tokens, {}});
  batch.samples.push_back(Sample{78, tokens * 3 / 4, {}});
  const Plan plan = planner.plan(batch);
  expect_sound(plan, batch);
  // The near-limit samples must be split (whole they do not fit).
  for (const WavePlan& w : plan.waves)
    for (const SequencePlan& s : w.sequences)
      if (batch.samples[s.sample].id == 77) {
        EXPECT_EQ(s.sharding, Sharding::Zigzag);
      }
}

TEST(DhpPlanner, SameInputSamePlan) {
  const Batch batch = test::random_multimodal_batch(42, 300, 60000);
  const Planner a(cluster_preset("h100-64"), model_preset("qwen2-vl-7b"));
  const Planner b(cluster_preset("h100-64"), model_preset("qwen2-vl-7b"));
  EXPECT_EQ(plan_hash(a.plan(batch)), plan_hash(b.plan(batch)));
}

TEST(DhpPlanner, LongTailBeatsOneRankPerSequenceLayout) {
  // A long tail on 8 ranks: dhp must not be slower than the plan it contains as a
  // candidate (every sequence at its memory-minimal degree, least-loaded first).
  const Planner planner(cluster_preset("h100-8"), model_preset("qwen2-vl-7b"));
  const Batch batch = test::random_text_batch(5, 64, 7.0, 1.4, 100, 24000);
  const Plan plan = planner.plan(batch);
  expect_sound(plan, batch);
  double total_whole = 0;
  for (const Sample& s : batch.samples)
    total_whole += planner.cost_model().llm_sequence_ms(s.llm_tokens(), RingSpan{1, false});
  // Perfect balance over 8 ranks is a floor; a sane plan is well under twice the serial time.
  EXPECT_GE(plan.estimate.llm_ms * 1.0001, total_whole / 8 * 0.5);
  EXPECT_LT(plan.estimate.llm_ms, total_whole);
}

// The drafts a plan was assembled from: its groups' degrees and who holds what.
std::vector<detail::WaveDraft> drafts_of(const Plan& plan) {
  std::vector<detail::WaveDraft> waves(plan.waves.size());
  for (std::size_t w = 0; w < plan.waves.size(); ++w) {
    for (const GroupPlan& g : plan.waves[w].groups) {
      detail::GroupDraft d;
      d.degree = g.degree();
      d.whole.resize(static_cast<std::size_t>(g.degree()));
      waves[w].groups.push_back(d);
    }
    for (const SequencePlan& s : plan.waves[w].sequences) {
      detail::GroupDraft& d = waves[w].groups[static_cast<std::size_t>(s.group)];
      if (s.sharding == Sharding::Zigzag)
        d.split.push_back(s.sample);
      else
        d.whole[static_cast<std::size_t>(s.member)].push_back(s.sample);
    }
  }
  return waves;
}

// The waves' order is part of the plan: the LLM's gradient sync hides under the last wave's
// backward, and a colocated encoder's first forward and last backward run beside no LLM
// work. By its own estimate, dhp's plan is at least as good as the same waves with any one
// of them moved first or last.
TEST(DhpPlanner, NoWaveMovedFirstOrLastImprovesThePlan) {
  struct Case {
    ClusterSpec cluster;
    ModelSpec model;
    int tp;
    Batch batch;
  };
  const auto videos = load_activitynet(default_data_path("activitynet"), DatasetAssumptions{});
  const Batch video_batch = make_batches(videos, 1, 128, 3).front();
  std::vector<Case> cases = {
      {cluster_preset("h100-64"), model_preset("qwen2-vl-7b"), 2, video_batch},
      {cluster_preset("h100-64"), model_preset("qwen2-vl-7b"), 1, video_batch},
      {cluster_preset("h100-8"), model_preset("qwen2-vl-7b"), 2,
       test::random_text_batch(7, 64, 9.0, 1.2, 512, 60000)},
  };
  int checked = 0;
  for (const Case& c : cases) {
    PlannerOptions options;
    options.llm_tp = c.tp;
    options.encoder_tp = 1;
    const Planner planner(c.cluster, c.model, options);
    const Plan plan = planner.plan(c.batch);
    const detail::Layout layout = detail::resolve_layout(c.cluster, c.model, options);
    const std::vector<detail::WaveDraft> waves = drafts_of(plan);
    ASSERT_NEAR(detail::estimate_step_ms(c.batch, planner.cost_model(), layout, waves),
                plan.estimate.step_ms, 1e-9 * plan.estimate.step_ms);
    if (waves.size() < 2) continue;
    ++checked;
    const auto at = [](std::size_t i) { return static_cast<std::ptrdiff_t>(i); };
    auto expect_no_better = [&](const std::vector<detail::WaveDraft>& order, std::size_t i,
                                const char* where) {
      EXPECT_GE(detail::estimate_step_ms(c.batch, planner.cost_model(), layout, order),
                plan.estimate.step_ms * (1 - 1e-9))
          << c.cluster.name << " tp " << c.tp << ": wave " << i << " moved " << where;
    };
    for (std::size_t i = 0; i < waves.size(); ++i) {
      if (i + 1 < waves.size()) {  // wave i last (the last wave is already)
        std::vector<detail::WaveDraft> last = waves;
        std::rotate(last.begin() + at(i), last.begin() + at(i + 1), last.end());
        expect_no_better(last, i, "last");
      }
      if (i > 0) {  // wave i first
        std::vector<detail::WaveDraft> first = waves;
        std::rotate(first.begin(), first.begin() + at(i), first.begin() + at(i + 1));
        expect_no_better(first, i, "first");
      }
    }
  }
  EXPECT_GE(checked, 2);
}

TEST(DhpPlanner, BadInputsGiveClearErrors) {
  const Planner planner(cluster_preset("h100-8"), model_preset("qwen2-vl-7b"));
  EXPECT_THROW(planner.plan(Batch{}), Error);
  Batch huge;
  huge.samples.push_back(Sample{31337, 80'000'000, {}});
  try {
    planner.plan(huge);
    FAIL() << "80M tokens fitted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::DoesNotFit);
    EXPECT_NE(std::string(e.what()).find("31337"), std::string::npos) << e.what();
  }
  ClusterSpec none = cluster_preset("h100-8");
  none.num_nodes = 0;
  EXPECT_THROW(Planner(none, model_preset("qwen2-vl-7b")), Error);
  PlannerOptions bad_tp;
  bad_tp.llm_tp = 3;
  EXPECT_THROW(Planner(cluster_preset("h100-8"), model_preset("qwen2-vl-7b"), bad_tp), Error);
}

TEST(DhpPlanner, DisjointPlacementIsSound) {
  PlannerOptions options;
  options.placement = EncoderPlacement::Disjoint;
  options.encoder_devices = 8;
  const Planner planner(cluster_preset("h100-64"), model_preset("qwen2-vl-7b"), options);
  const Batch batch = test::random_multimodal_batch(9, 150, 40000);
  const Plan plan = planner.plan(batch);
  expect_sound(plan, batch);
  EXPECT_EQ(plan.placement, EncoderPlacement::Disjoint);
}

}  // namespace
}  // namespace dhp
