// dhp_bench --robustness: every strategy plans with the nominal cost model (as the benchmark
// runs it), and every plan is then run on perturbed "true" machines: each cost coefficient off
// by up to +-spread (uniform) and every kernel by a lognormal factor (KernelNoise). Per draw,
// each strategy's run (the sum of its batches' steps) gives its speedup over static_best, and
// whether dhp is ahead of each baseline.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "dhp/cost_model.hpp"
#include "dhp/plan.hpp"
#include "dhp/planner.hpp"
#include "scenarios.hpp"

namespace dhp::bench {

struct RobustnessConfig {
  int draws = 100;
  double coefficient_spread = 0.2;  // each coefficient x U(1 - spread, 1 + spread)
  double kernel_sigma = 0.1;        // KernelNoise::sigma
  std::uint64_t seed = 1;
};

// One strategy's plans of a scenario's batches, as the benchmark made them (nullopt where the
// strategy failed a batch), and the coefficients it planned with on each batch's cluster.
struct StrategyPlans {
  Strategy strategy = Strategy::Dhp;
  std::vector<std::optional<Plan>> plans;
};

struct RobustnessRow {
  std::string strategy;
  int draws = 0;          // draws in which every batch of the strategy was planned
  double nominal_ms = 0;  // its run on the nominal model (summed steps)
  double speedup_p5 = 0;  // over static_best, per draw: percentiles over the draws
  double speedup_p50 = 0;
  double speedup_p95 = 0;
  double dhp_ahead = 0;  // fraction of draws where dhp's run is at most this one's
};

struct RobustnessResult {
  std::string scenario;
  RobustnessConfig config;
  std::vector<RobustnessRow> rows;  // in the order of `plans`
  double dhp_ahead_of_all = 0;      // fraction of draws where dhp is at most every baseline
  double dhp_over_best_p5 = 0;      // dhp's speedup over the draw's best baseline
  double dhp_over_best_p50 = 0;
  double dhp_over_best_p95 = 0;
};

// The nominal coefficients with each one scaled by U(1 - spread, 1 + spread), fractions kept
// within (0, 1].
CostCoefficients perturbed_coefficients(const CostCoefficients& nominal, double spread,
                                        std::mt19937_64& rng);

// The batch a strategy plans and runs: padded as its data pipeline pads (ScenarioData::pad_to).
Batch batch_for(const ScenarioData& data, Strategy strategy, std::size_t b);

// Scores the plans on `config.draws` perturbed machines. `nominal[c]` are the coefficients the
// strategies planned with on cluster c. Needs dhp's and static_best's plans among `plans`.
RobustnessResult robustness(const std::string& scenario, const ScenarioData& data,
                            const std::vector<CostCoefficients>& nominal,
                            const std::vector<StrategyPlans>& plans,
                            const RobustnessConfig& config);

}  // namespace dhp::bench
