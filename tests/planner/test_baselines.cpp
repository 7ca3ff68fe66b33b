// The baseline strategies: invariants on random batches, and each baseline's defining
// behaviour checked against brute force or hand-counted cases.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <random>

#include "dhp/error.hpp"
#include "planner/baselines.hpp"
#include "planner/internal.hpp"

namespace dhp::detail {
namespace {

using StrategyFn = Plan (*)(const Batch&, const CostModel&, const Layout&, const PlannerOptions&);

struct NamedStrategy {
  const char* name;
  StrategyFn plan;
};
const NamedStrategy kBaselines[] = {
    {"static_best", &plan_static_best},
    {"static_balanced", &plan_static_balanced},
    {"megatron_dcp", &plan_megatron_dcp},
    {"paper_bfd_dp", &plan_paper_bfd_dp},
    {"megatron_dcp_dev", &plan_megatron_dcp_dev},
    {"megatron_dp_balanced", &plan_megatron_dp_balanced},
    {"entrain", &plan_entrain},
};

// A small text model on small devices, so that a few thousand tokens already need CP.
ClusterSpec small_cluster(int nodes, int devices_per_node) {
  ClusterSpec c;
  c.name = "test";
  c.num_nodes = nodes;
  c.devices_per_node = devices_per_node;
  c.mem_capacity_gib = 6;
  c.mem_reserved_gib = 1;
  return c;
}

ModelSpec small_model() {
  ModelSpec m;
  m.name = "test-llm";
  m.llm = {.layers = 4,
           .hidden = 1024,
           .heads = 8,
           .kv_heads = 8,
           .ffn_hidden = 2816,
           .gated_mlp = true,
           .vocab = 32000};
  return m;
}

struct Testbed {
  ClusterSpec cluster;
  ModelSpec model;
  Layout layout;
  CostModel cost;
  double budget;          // activation bytes per device (text only: batch independent)
  std::int64_t one_rank;  // longest sequence one rank holds
};

// TP 1 unless asked: one LLM rank per device, so the tests can count ranks by hand.
PlannerOptions tp1() {
  PlannerOptions options;
  options.llm_tp = 1;
  return options;
}

Testbed make_testbed(int nodes, int devices_per_node, const PlannerOptions& options = tp1()) {
  ClusterSpec cluster = small_cluster(nodes, devices_per_node);
  ModelSpec model = small_model();
  Layout layout = resolve_layout(cluster, model, options);
  CostModel cost = make_cost_model(cluster, model, layout, options);
  const double budget = llm_activation_budget(cost, layout, Batch{});
  const std::int64_t one_rank = max_fitting_tokens(cost, 1, budget, 1);
  return Testbed{cluster, model, layout, cost, budget, one_rank};
}

Batch text_batch(const std::vector<std::int64_t>& lengths) {
  Batch batch;
  for (std::size_t i = 0; i < lengths.size(); ++i) {
    Sample s;
    s.id = 1000 + static_cast<std::int64_t>(i);
    s.text_tokens = lengths[i];
    batch.samples.push_back(s);
  }
  return batch;
}

// Log-uniform lengths from 16 tokens to `longest`.
Batch random_batch(std::mt19937_64& rng, int count, std::int64_t longest) {
  std::uniform_real_distribution<double> u(std::log(16.0), std::log(static_cast<double>(longest)));
  std::vector<std::int64_t> lengths;
  for (int i = 0; i < count; ++i) lengths.push_back(static_cast<std::int64_t>(std::exp(u(rng))));
  return text_batch(lengths);
}

int largest_power_of_two_at_most(int n) {
  int p = 1;
  while (p * 2 <= n) p *= 2;
  return p;
}

// Every sample exactly once, groups within the ranks, every rank within memory.
void expect_plan_invariants(const Plan& plan, const Batch& batch, const Testbed& setup,
                            const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_NO_THROW(validate(plan, batch));
  // static_best may choose its own TP degree: judge memory with that layout's cost model.
  PlannerOptions with_tp;
  with_tp.llm_tp = plan.llm.tp;
  const Layout layout = resolve_layout(setup.cluster, setup.model, with_tp);
  const CostModel cost = make_cost_model(setup.cluster, setup.model, layout, with_tp);
  const double budget = llm_activation_budget(cost, layout, batch);
  EXPECT_EQ(layout.llm.ranks, plan.llm.ranks);
  std::vector<int> seen(batch.samples.size(), 0);
  for (const WavePlan& wave : plan.waves) {
    int ranks_used = 0;
    for (const GroupPlan& group : wave.groups) ranks_used += group.degree();
    EXPECT_LE(ranks_used, plan.llm.ranks);
    // Recompute each rank's activations from the plan itself.
    std::vector<std::vector<std::int64_t>> split(wave.groups.size());
    std::map<std::pair<int, int>, std::vector<std::int64_t>> whole;
    for (const SequencePlan& sp : wave.sequences) {
      ++seen[sp.sample];
      const std::int64_t tokens = batch.samples[sp.sample].llm_tokens();
      if (sp.sharding == Sharding::Zigzag)
        split[sp.group].push_back(tokens);
      else
        whole[{sp.group, sp.member}].push_back(tokens);
    }
    for (std::size_t g = 0; g < wave.groups.size(); ++g) {
      for (int m = 0; m < wave.groups[g].degree(); ++m) {
        const auto it = whole.find({static_cast<int>(g), m});
        const double bytes =
            rank_activation_bytes(cost, split[g], wave.groups[g].degree(),
                                  it == whole.end() ? std::vector<std::int64_t>{} : it->second);
        EXPECT_LE(bytes, budget * (1 + 1e-12)) << "group " << g << " member " << m;
      }
    }
  }
  for (std::size_t s = 0; s < seen.size(); ++s) EXPECT_EQ(seen[s], 1) << "sample " << s;
  for (double gib : plan.estimate.peak_mem_gib) {
    EXPECT_LE(gib, plan.estimate.mem_capacity_gib * (1 + 1e-12));
  }
  EXPECT_GT(plan.estimate.step_ms, 0);
}

TEST(Baselines, RandomBatchesKeepInvariantsAndAreDeterministic) {
  // Node shapes: 4 ranks, 8 ranks over two nodes, and 6 ranks (not a power of two).
  const std::pair<int, int> shapes[] = {{1, 4}, {2, 4}, {1, 6}};
  for (const auto& [nodes, per_node] : shapes) {
    const Testbed setup = make_testbed(nodes, per_node);
    const int ranks = setup.layout.llm.ranks;
    // Megatron can only use power-of-two groups: keep the longest within one of them.
    const int pow2 = largest_power_of_two_at_most(ranks);
    const std::int64_t longest = max_fitting_tokens(setup.cost, pow2, setup.budget, 2 * pow2);
    std::mt19937_64 rng(42 + ranks);
    for (int trial = 0; trial < 6; ++trial) {
      const Batch batch = random_batch(rng, 4 + trial * 7, longest);
      for (const NamedStrategy& strategy : kBaselines) {
        const std::string what = fmt::format("{} ranks={} trial={}", strategy.name, ranks, trial);
        Plan plan = strategy.plan(batch, setup.cost, setup.layout, PlannerOptions{});
        expect_plan_invariants(plan, batch, setup, what);
        EXPECT_EQ(plan.strategy, strategy.name);
        const Plan again = strategy.plan(batch, setup.cost, setup.layout, PlannerOptions{});
        EXPECT_EQ(plan_hash(plan), plan_hash(again)) << what;
      }
    }
  }
}

TEST(Baselines, EverySampleThatCannotFitIsRejectedWithItsNumbers) {
  const Testbed setup = make_testbed(1, 4);
  const Batch batch = text_batch({100, setup.one_rank * 100, 200});
  for (const NamedStrategy& strategy : kBaselines) {
    try {
      strategy.plan(batch, setup.cost, setup.layout, PlannerOptions{});
      ADD_FAILURE() << strategy.name << " planned a sample that cannot fit";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::DoesNotFit) << strategy.name;
      EXPECT_NE(std::string(e.what()).find("1001"), std::string::npos) << e.what();
    }
  }
}

// --- static_best ---

TEST(StaticBest, PicksTheCheapestLayoutThatHoldsTheLongestSequence) {
  const ClusterSpec cluster = small_cluster(1, 8);
  const ModelSpec model = small_model();
  const Testbed setup = make_testbed(1, 8);
  std::mt19937_64 rng(7);
  std::vector<Batch> batches;
  for (int i = 0; i < 3; ++i) batches.push_back(random_batch(rng, 24, setup.one_rank / 2));
  // One sequence longer than a rank holds: every cp=1 layout must be excluded.
  batches[1].samples[3].text_tokens = setup.one_rank * 3 / 2;
  std::int64_t longest = 0;
  for (const Batch& b : batches)
    for (const Sample& s : b.samples) longest = std::max(longest, s.llm_tokens());

  const StaticLayout chosen = best_static_layout(cluster, model, batches, Strategy::StaticBest);

  // Brute force: every TP dividing the heads and the node, every CP dividing the ranks.
  double best_ms = std::numeric_limits<double>::infinity();
  StaticLayout best;
  int excluded = 0;
  for (int tp = 1; tp <= cluster.devices_per_node; ++tp) {
    if (cluster.devices_per_node % tp || model.llm.heads % tp || model.llm.kv_heads % tp) continue;
    PlannerOptions options;
    options.llm_tp = tp;
    const Layout layout = resolve_layout(cluster, model, options);
    const CostModel cost = make_cost_model(cluster, model, layout, options);
    const double budget = llm_activation_budget(cost, layout, Batch{});
    const int ranks = layout.llm.ranks;
    for (int cp = 1; cp <= ranks; ++cp) {
      if (ranks % cp) continue;
      if (rank_activation_bytes(cost, {padded_tokens(longest, cp)}, cp, {}) > budget) {
        ++excluded;
        EXPECT_FALSE(chosen.tp == tp && chosen.cp == cp) << "chose a layout that cannot hold it";
        // Planning with it fails loudly instead of truncating.
        options.static_layout = StaticLayout{tp, cp, ranks / cp, 0};
        EXPECT_THROW(plan_static_best(batches[1], cost, layout, options), Error);
        continue;
      }
      // The search stops halving once a pack gives every replica two bins' worth of tokens.
      std::int64_t fewest = std::numeric_limits<std::int64_t>::max();
      for (const Batch& b : batches) fewest = std::min(fewest, b.total_llm_tokens());
      const auto packs =
          static_pack_candidates(cost, cp, budget, longest, 0, fewest / (2 * (ranks / cp)));
      ASSERT_FALSE(packs.empty());
      EXPECT_EQ(packs.front(), max_fitting_tokens(cost, cp, budget, 2 * cp));
      for (std::int64_t pack : packs) {
        EXPECT_EQ(pack % (2 * cp), 0);
        EXPECT_GE(pack, padded_tokens(longest, cp));
        options.static_layout = StaticLayout{tp, cp, ranks / cp, pack};
        double total = 0;
        for (const Batch& b : batches) {
          const Plan plan = plan_static_best(b, cost, layout, options);
          total += plan.estimate.step_ms;
          EXPECT_EQ(plan.llm.tp, tp);
          for (const WavePlan& wave : plan.waves) {
            EXPECT_LE(static_cast<int>(wave.groups.size()), ranks / cp);
            for (const GroupPlan& g : wave.groups) EXPECT_EQ(g.degree(), cp);
          }
        }
        if (total < best_ms) {
          best_ms = total;
          best = *options.static_layout;
        }
      }
    }
  }
  EXPECT_GT(excluded, 0);
  EXPECT_EQ(chosen.tp, best.tp);
  EXPECT_EQ(chosen.cp, best.cp);
  EXPECT_EQ(chosen.dp, best.dp);
  EXPECT_EQ(chosen.pack_tokens, best.pack_tokens);
  EXPECT_EQ(chosen.pack_tokens % (2 * chosen.cp), 0);
}

TEST(StaticBest, DealsBinsToReplicasInTurn) {
  const Testbed setup = make_testbed(1, 4);
  const int cp = 2;
  const std::int64_t pack = max_fitting_tokens(setup.cost, cp, setup.budget, 2 * cp);
  // Sequences just over half a bin: one per bin, so 5 bins over 2 replicas = 3 waves.
  const Batch batch = text_batch(std::vector<std::int64_t>(5, pack / 2 + 2 * cp));
  const auto waves = static_best_waves(batch, setup.cost, setup.layout, cp, pack, setup.budget);
  ASSERT_EQ(waves.size(), 3u);
  EXPECT_EQ(waves[0].groups.size(), 2u);
  EXPECT_EQ(waves[1].groups.size(), 2u);
  EXPECT_EQ(waves[2].groups.size(), 1u);
  for (const WaveDraft& wave : waves) {
    for (const GroupDraft& g : wave.groups) {
      EXPECT_EQ(g.degree, cp);
      EXPECT_EQ(g.split.size(), 1u);
    }
  }
  // Short sequences share bins up to the pack length.
  const Batch small = text_batch(std::vector<std::int64_t>(8, pack / 4 - 2 * cp));
  const auto packed = static_best_waves(small, setup.cost, setup.layout, cp, pack, setup.budget);
  ASSERT_EQ(packed.size(), 1u);
  ASSERT_EQ(packed[0].groups.size(), 2u);
  EXPECT_EQ(packed[0].groups[0].split.size(), 4u);
  EXPECT_EQ(packed[0].groups[1].split.size(), 4u);
}

// --- static_balanced ---

TEST(StaticBalanced, SpreadsWorkOverReplicasWithinTheLptBound) {
  const Testbed setup = make_testbed(1, 4);
  std::mt19937_64 rng(3);
  // Short sequences: every replica runs one micro-batch, so the wave is the LPT schedule.
  const Batch batch = random_batch(rng, 13, setup.one_rank / 16);
  const auto waves = static_balanced_waves(batch, setup.cost, setup.layout, 1, setup.budget);
  ASSERT_EQ(waves.size(), 1u);
  ASSERT_EQ(waves[0].groups.size(), 4u);
  double total = 0, largest = 0, worst_replica = 0;
  for (const GroupDraft& g : waves[0].groups) {
    ASSERT_EQ(g.whole.size(), 1u);
    double load = 0;
    for (int s : g.whole[0]) {
      const double ms =
          setup.cost.llm_sequence_ms(batch.samples[s].llm_tokens(), RingSpan{1, false});
      load += ms;
      largest = std::max(largest, ms);
    }
    total += load;
    worst_replica = std::max(worst_replica, load);
  }
  // Graham's bound for LPT: at most 4/3 of the optimum (and the optimum is at least this).
  EXPECT_LE(worst_replica, 4.0 / 3.0 * std::max(total / 4, largest) + 1e-9);
}

TEST(StaticBalanced, RespectsTheRunsTokenLimitPerRank) {
  const Testbed setup = make_testbed(1, 4);
  PlannerOptions options = tp1();
  options.max_tokens_per_rank = 600;
  std::mt19937_64 rng(4);
  const Batch batch = random_batch(rng, 40, 2000);  // needs cp 4 for 600 tokens per rank
  const Plan plan = plan_static_balanced(batch, setup.cost, setup.layout, options);
  expect_plan_invariants(plan, batch, setup, "static_balanced with a token limit");
  EXPECT_GT(plan.waves.size(), 1u);
  for (const WavePlan& wave : plan.waves) {
    std::vector<std::int64_t> per_rank(wave.groups.size(), 0);
    for (const SequencePlan& sp : wave.sequences) {
      const int d = wave.groups[sp.group].degree();
      per_rank[sp.group] += (batch.samples[sp.sample].llm_tokens() + d - 1) / d;
    }
    for (std::int64_t t : per_rank) EXPECT_LE(t, options.max_tokens_per_rank);
  }
}

// --- megatron_dcp ---

TEST(MegatronDcp, CpSizeIsTheNextPowerOfTwo) {
  EXPECT_EQ(megatron_cp_size(1, 1024), 1);
  EXPECT_EQ(megatron_cp_size(1024, 1024), 1);
  EXPECT_EQ(megatron_cp_size(1025, 1024), 2);
  EXPECT_EQ(megatron_cp_size(3 * 1024, 1024), 4);
  EXPECT_EQ(megatron_cp_size(4 * 1024 + 1, 1024), 8);
  EXPECT_THROW(megatron_cp_size(10, 0), Error);
}

TEST(MegatronDcp, PowerOfTwoGroupsWithinTheTokenLimit) {
  for (const auto& [nodes, per_node] : {std::pair{1, 8}, std::pair{1, 6}}) {
    const Testbed setup = make_testbed(nodes, per_node);
    const int ranks = setup.layout.llm.ranks;
    PlannerOptions options;
    options.max_tokens_per_rank = std::min<std::int64_t>(1024, setup.one_rank / 2);
    std::mt19937_64 rng(11);
    for (int trial = 0; trial < 5; ++trial) {
      const Batch batch = random_batch(rng, 30, 3 * options.max_tokens_per_rank);
      const Plan plan = plan_megatron_dcp(batch, setup.cost, setup.layout, options);
      expect_plan_invariants(plan, batch, setup, fmt::format("ranks={} trial={}", ranks, trial));
      for (const WavePlan& wave : plan.waves) {
        int used = 0;
        std::vector<std::int64_t> per_rank(wave.groups.size(), 0);
        for (const GroupPlan& g : wave.groups) {
          // Powers of two, or every rank: fill_empty_gpus doubles to min(2 x size, ranks).
          const int d = g.degree();
          EXPECT_TRUE((d & (d - 1)) == 0 || d == ranks) << "degree " << d;
          used += d;
        }
        // Power-of-two sizes that sum to at most the ranks can be laid out aligned.
        EXPECT_LE(used, ranks);
        for (const SequencePlan& sp : wave.sequences) {
          const std::int64_t tokens = batch.samples[sp.sample].llm_tokens();
          const int d = wave.groups[sp.group].degree();
          EXPECT_GE(d, megatron_cp_size(tokens, options.max_tokens_per_rank));
          per_rank[sp.group] += (tokens + d - 1) / d;
        }
        for (std::int64_t t : per_rank) EXPECT_LE(t, options.max_tokens_per_rank);
      }
    }
  }
}

TEST(MegatronDcp, DefersOverflowToTheNextMicroBatch) {
  const Testbed setup = make_testbed(1, 4);
  PlannerOptions options;
  options.max_tokens_per_rank = 1000;
  // Twelve sequences of exactly one rank's worth: four per micro-batch, three micro-batches.
  const Batch full = text_batch(std::vector<std::int64_t>(12, 1000));
  const Plan plan = plan_megatron_dcp(full, setup.cost, setup.layout, options);
  ASSERT_EQ(plan.waves.size(), 3u);
  for (const WavePlan& wave : plan.waves) {
    ASSERT_EQ(wave.groups.size(), 4u);
    for (const GroupPlan& g : wave.groups) EXPECT_EQ(g.degree(), 1);
    EXPECT_EQ(wave.sequences.size(), 4u);
  }
  // Idle ranks are filled by doubling the smallest group (fill_empty_gpus).
  const Plan lone = plan_megatron_dcp(text_batch({600}), setup.cost, setup.layout, options);
  ASSERT_EQ(lone.waves.size(), 1u);
  ASSERT_EQ(lone.waves[0].groups.size(), 1u);
  EXPECT_EQ(lone.waves[0].groups[0].degree(), 4);
}

TEST(MegatronDcp, ClosesTheWholeMicroBatchWhenASequenceCannotBePlaced) {
  // Megatron's next_hdp_group, longest first: 1000 x 3 and 700 take the four ranks; the
  // 600-token sequence finds no free rank and no group with room, so the micro-batch closes,
  // although the 300-token one after it would still fit beside the 700. The dev branch's
  // scheduler places it and only defers the 600 (sample 3).
  const Testbed setup = make_testbed(1, 4);
  PlannerOptions options;
  options.max_tokens_per_rank = 1000;
  const Batch batch = text_batch({1000, 1000, 1000, 600, 700, 300});
  const Plan published = plan_megatron_dcp(batch, setup.cost, setup.layout, options);
  ASSERT_EQ(published.waves.size(), 2u);
  EXPECT_EQ(published.waves[0].sequences.size(), 4u);
  EXPECT_EQ(published.waves[1].sequences.size(), 2u);
  const Plan dev = plan_megatron_dcp_dev(batch, setup.cost, setup.layout, options);
  ASSERT_EQ(dev.waves.size(), 2u);
  EXPECT_EQ(dev.waves[0].sequences.size(), 5u);
  ASSERT_EQ(dev.waves[1].sequences.size(), 1u);
  EXPECT_EQ(dev.waves[1].sequences[0].sample, 3);
}

TEST(MegatronDcpDev, DefersOnlyWhatHasNoPlacementWithinTheCap) {
  const Testbed setup = make_testbed(1, 4);
  PlannerOptions options;
  options.max_tokens_per_rank = 1000;
  // Twelve sequences of one rank's worth: four per micro-batch, as the published scheduler.
  const Plan full = plan_megatron_dcp_dev(text_batch(std::vector<std::int64_t>(12, 1000)),
                                          setup.cost, setup.layout, options);
  ASSERT_EQ(full.waves.size(), 3u);
  for (const WavePlan& wave : full.waves) EXPECT_EQ(wave.sequences.size(), 4u);
  // A lone short sequence: the idle ranks are filled by doubling its group to all four.
  const Plan lone = plan_megatron_dcp_dev(text_batch({600}), setup.cost, setup.layout, options);
  ASSERT_EQ(lone.waves.size(), 1u);
  ASSERT_EQ(lone.waves[0].groups.size(), 1u);
  EXPECT_EQ(lone.waves[0].groups[0].degree(), 4);
}

// --- megatron_dp_balanced ---

TEST(MegatronDpBalanced, PacksInDataOrderAndMakesThePackCountAMultipleOfDp) {
  const Testbed setup = make_testbed(1, 4);
  // CP 2, DP 2, packs of 2 x 1000 tokens, next fit in data order: [1500] [600 1200] [700 300];
  // three packs, so the last pack's last sequence moves into a pack of its own.
  const auto waves = megatron_dp_balanced_waves(text_batch({1500, 600, 1200, 700, 300}), setup.cost,
                                                setup.layout, 2, 1000);
  ASSERT_EQ(waves.size(), 2u);
  ASSERT_EQ(waves[0].groups.size(), 2u);
  EXPECT_EQ(waves[0].groups[0].split, (std::vector<int>{0}));
  EXPECT_EQ(waves[0].groups[1].split, (std::vector<int>{1, 2}));
  ASSERT_EQ(waves[1].groups.size(), 2u);
  EXPECT_EQ(waves[1].groups[0].split, (std::vector<int>{3}));
  EXPECT_EQ(waves[1].groups[1].split, (std::vector<int>{4}));
  for (const WaveDraft& wave : waves)
    for (const GroupDraft& g : wave.groups) EXPECT_EQ(g.degree, 2);
}

// --- entrain ---

TEST(Entrain, BalancesMicroBatchesAndDefersTheExcess) {
  const Testbed setup = make_testbed(1, 4);
  // Sequences whose activations need two micro-batches at CP 1: entrain spreads the work so
  // that no replica of any micro-batch holds more than the LPT bound above the mean.
  std::mt19937_64 rng(7);
  const Batch batch = random_batch(rng, 40, setup.one_rank / 2);
  const double budget = llm_activation_budget(setup.cost, setup.layout, batch);
  const auto waves = entrain_waves(batch, setup.cost, setup.layout, 1, budget, 0);
  ASSERT_GE(waves.size(), 1u);
  std::vector<int> seen(batch.samples.size(), 0);
  double total = 0, heaviest = 0;
  std::vector<double> loads;
  for (const WaveDraft& wave : waves) {
    for (const GroupDraft& g : wave.groups) {
      double load = 0;
      for (int s : samples_of(g)) {
        ++seen[s];
        const double ms = setup.cost.llm_sequence_ms(batch.samples[s].llm_tokens(), {1, false});
        load += ms;
        heaviest = std::max(heaviest, ms);
      }
      loads.push_back(load);
      total += load;
    }
  }
  for (int count : seen) EXPECT_EQ(count, 1);
  const double mean = total / (4.0 * static_cast<double>(waves.size()));
  for (double load : loads) EXPECT_LE(load, mean + heaviest + 1e-9);
}

// --- paper_bfd_dp ---

// All allocations n_j >= min_j with sum <= ranks, by enumeration.
double brute_force_makespan(const std::vector<std::vector<double>>& time,
                            const std::vector<int>& min_degree, int ranks) {
  double best = std::numeric_limits<double>::infinity();
  std::vector<int> degrees(time.size());
  std::function<void(std::size_t, int, double)> visit = [&](std::size_t j, int left, double worst) {
    if (j == time.size()) {
      best = std::min(best, worst);
      return;
    }
    for (int m = min_degree[j]; m <= left; ++m) visit(j + 1, left - m, std::max(worst, time[j][m]));
  };
  visit(0, ranks, 0.0);
  return best;
}

TEST(PaperBfdDp, DynamicProgramMatchesBruteForce) {
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> u(0.1, 10.0);
  for (int trial = 0; trial < 300; ++trial) {
    const int ranks = 1 + static_cast<int>(rng() % 8);
    const int groups = 1 + static_cast<int>(rng() % std::min(ranks, 4));
    std::vector<int> min_degree(groups, 1);
    int spare = ranks - groups;
    for (int& k : min_degree) {
      const int extra = spare > 0 ? static_cast<int>(rng() % (spare + 1)) : 0;
      k += extra;
      spare -= extra;
    }
    std::vector<std::vector<double>> time(groups, std::vector<double>(ranks + 1));
    for (auto& row : time) {
      // Not monotone on purpose (communication can dominate), sometimes infeasible.
      for (double& t : row) t = rng() % 10 == 0 ? std::numeric_limits<double>::infinity() : u(rng);
    }
    for (int j = 0; j < groups; ++j) time[j][ranks] = u(rng);  // keep one degree feasible
    const double expected = brute_force_makespan(time, min_degree, ranks);
    if (!std::isfinite(expected)) continue;
    const DeviceAllocation got = allocate_devices_dp(time, min_degree, ranks);
    EXPECT_DOUBLE_EQ(got.makespan, expected) << "trial " << trial;
    int used = 0;
    double worst = 0;
    for (int j = 0; j < groups; ++j) {
      EXPECT_GE(got.degrees[j], min_degree[j]);
      used += got.degrees[j];
      worst = std::max(worst, time[j][got.degrees[j]]);
    }
    EXPECT_LE(used, ranks);
    EXPECT_DOUBLE_EQ(worst, got.makespan);
  }
  EXPECT_THROW(allocate_devices_dp({{0, 1, 1}, {0, 1, 1}}, {2, 1}, 2), Error);
}

TEST(PaperBfdDp, AtomicGroupsAreBestFitDecreasing) {
  const Testbed setup = make_testbed(1, 8);
  std::mt19937_64 rng(9);
  const Batch batch = random_batch(rng, 40, setup.one_rank * 3);
  const auto groups = bfd_atomic_groups(batch, setup.cost, setup.budget, 8);
  std::vector<int> seen(batch.samples.size(), 0);
  for (const AtomicGroup& g : groups) {
    ASSERT_FALSE(g.samples.empty());
    for (int s : g.samples) ++seen[s];
    // Fits at its minimal degree, which is the smallest that holds its first sequence.
    EXPECT_LE(group_activation_bytes(setup.cost, batch, g.samples, g.min_degree), setup.budget);
    const std::int64_t first = batch.samples[g.samples.front()].llm_tokens();
    if (g.min_degree > 1) {
      EXPECT_GT(rank_activation_bytes(setup.cost, {first}, g.min_degree - 1, {}), setup.budget);
    }
    for (int s : g.samples) EXPECT_LE(batch.samples[s].llm_tokens(), first);
  }
  for (int count : seen) EXPECT_EQ(count, 1);

  // With the run's token limit, every atomic group also stays within it per rank.
  const std::int64_t limit = setup.one_rank / 4;
  const auto limited = bfd_atomic_groups(batch, setup.cost, setup.budget, 8, limit);
  EXPECT_GT(limited.size(), groups.size());
  for (const AtomicGroup& g : limited) {
    std::int64_t per_rank = 0;
    for (int s : g.samples) {
      per_rank += (batch.samples[s].llm_tokens() + g.min_degree - 1) / g.min_degree;
    }
    EXPECT_LE(per_rank, limit);
  }

  const Plan plan = plan_paper_bfd_dp(batch, setup.cost, setup.layout, PlannerOptions{});
  expect_plan_invariants(plan, batch, setup, "paper_bfd_dp");
  // Every atomic group stays together and gets at least its minimal degree.
  for (const WavePlan& wave : plan.waves) {
    for (const AtomicGroup& g : groups) {
      const auto in_wave =
          std::find_if(wave.sequences.begin(), wave.sequences.end(),
                       [&](const SequencePlan& sp) { return sp.sample == g.samples[0]; });
      if (in_wave == wave.sequences.end()) continue;
      EXPECT_GE(wave.groups[in_wave->group].degree(), g.min_degree);
      for (int s : g.samples) {
        const auto it = std::find_if(wave.sequences.begin(), wave.sequences.end(),
                                     [&](const SequencePlan& sp) { return sp.sample == s; });
        ASSERT_NE(it, wave.sequences.end());
        EXPECT_EQ(it->group, in_wave->group);
      }
    }
  }
}

}  // namespace
}  // namespace dhp::detail
