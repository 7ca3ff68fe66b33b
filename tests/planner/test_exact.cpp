// The exact solver against a plain enumeration, and dhp's gap to the optimum.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>

#include "dhp/error.hpp"
#include "planner/internal.hpp"
#include "planner_test_util.hpp"

namespace dhp {
namespace {

struct SmallInstance {
  ClusterSpec cluster;
  ModelSpec model = model_preset("megatron-dcp-1b");
  detail::Layout layout;
  CostModel cost;
  explicit SmallInstance(int ranks)
      : cluster(test::one_node(ranks)),
        layout(detail::resolve_layout(cluster, model, options())),
        cost(detail::make_cost_model(cluster, model, layout, options())) {}
  static PlannerOptions options() {
    PlannerOptions o;
    o.llm_tp = 1;
    return o;
  }
};

TEST(Exact, AgreesWithBruteForce) {
  for (int ranks = 2; ranks <= 4; ++ranks) {
    const SmallInstance s(ranks);
    for (std::uint32_t seed = 0; seed < 6; ++seed) {
      const int n = 3 + static_cast<int>(seed % 4);  // 3..6 sequences
      const Batch batch = test::random_text_batch(100 + seed, n, 7.5, 1.3, 128, 40000);
      const auto pruned = detail::solve_exact_wave(batch, s.cost, s.layout, true, 1e300);
      const auto brute = detail::solve_exact_wave(batch, s.cost, s.layout, false, 1e300);
      ASSERT_TRUE(pruned.found);
      ASSERT_TRUE(brute.found);
      EXPECT_NEAR(pruned.makespan_ms, brute.makespan_ms, 1e-9 * brute.makespan_ms)
          << "ranks=" << ranks << " seed=" << seed;
      EXPECT_LE(pruned.nodes, brute.nodes);
    }
  }
}

TEST(Exact, DhpIsWithinAFewPercentOfTheOptimum) {
  const SmallInstance s(8);
  double gap_sum = 0, gap_max = 0;
  int instances = 0;
  for (std::uint32_t seed = 0; seed < 12; ++seed) {
    const Batch batch =
        test::random_text_batch(200 + seed, 8 + static_cast<int>(seed % 3), 8.0, 1.2, 256, 60000);
    const Plan dhp = detail::plan_dhp(batch, s.cost, s.layout, SmallInstance::options());
    const Plan exact = detail::plan_exact(batch, s.cost, s.layout, SmallInstance::options());
    EXPECT_NO_THROW(validate(exact, batch));
    ASSERT_EQ(exact.waves.size(), 1u);
    // Exact is optimal among single-wave plans: never worse than dhp's single-wave plan.
    if (dhp.waves.size() == 1) {
      EXPECT_LE(exact.estimate.wave_ms[0], dhp.estimate.wave_ms[0] * (1 + 1e-9));
    }
    const double gap = dhp.estimate.llm_ms / exact.estimate.llm_ms - 1;
    std::printf("instance %u: %zu sequences, dhp %.3f ms vs exact %.3f ms: gap %.2f%%\n", seed,
                batch.samples.size(), dhp.estimate.llm_ms, exact.estimate.llm_ms, 100 * gap);
    gap_max = std::max(gap_max, gap);
    gap_sum += gap;
    ++instances;
  }
  const double mean_gap = gap_sum / instances;
  std::printf("dhp vs exact: mean LLM-time gap %.2f%%, max %.2f%% over %d instances\n",
              100 * mean_gap, 100 * gap_max, instances);
  // The planner's target against the exact solver: 3% on random small instances
  // (dhp_bench's small-exact: 0.35%).
  // These longer-tailed ones are harder: 1.67% (printed above; 3.84% before dhp's last
  // pass merged groups, moved sequences and cut rings).
  EXPECT_LT(mean_gap, 0.03);
}

TEST(Exact, RefusesLargeInstances) {
  const SmallInstance s(8);
  const Batch batch = test::random_text_batch(1, 13, 7.0, 1.0, 128, 4000);
  try {
    detail::plan_exact(batch, s.cost, s.layout, SmallInstance::options());
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("13 sequences"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dhp
