#include "robustness.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "dhp/error.hpp"
#include "dhp/simulator.hpp"
#include "stats.hpp"

namespace dhp::bench {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// One draw's run of every strategy: the sum of its batches' simulated steps on the draw's
// machine (NaN where it failed a batch).
std::vector<double> run_draw(const ScenarioData& data, const std::vector<CostCoefficients>& nominal,
                             const std::vector<StrategyPlans>& plans,
                             const RobustnessConfig& config, int draw) {
  std::mt19937_64 rng(config.seed * 1000003ULL + static_cast<std::uint64_t>(draw));
  std::vector<Simulator> machines;
  for (std::size_t c = 0; c < data.clusters.size(); ++c) {
    const CostCoefficients truth =
        perturbed_coefficients(nominal[c], config.coefficient_spread, rng);
    // The simulator runs each plan at the plan's own TP degrees.
    machines.emplace_back(CostModel(data.clusters[c], data.model, 1, 1, truth),
                          KernelNoise{config.kernel_sigma, rng()});
  }
  std::vector<double> totals;
  for (const StrategyPlans& sp : plans) {
    double total = 0;
    for (std::size_t b = 0; b < sp.plans.size() && !std::isnan(total); ++b) {
      if (!sp.plans[b]) {
        total = kNaN;
        break;
      }
      const Simulator& machine = machines[static_cast<std::size_t>(data.cluster_of_batch[b])];
      total += machine.run(*sp.plans[b], batch_for(data, sp.strategy, b)).step_ms;
    }
    totals.push_back(total);
  }
  return totals;
}

}  // namespace

CostCoefficients perturbed_coefficients(const CostCoefficients& nominal, double spread,
                                        std::mt19937_64& rng) {
  DHP_CHECK(spread >= 0 && spread < 1, InvalidArgument,
            "perturbed_coefficients: spread={} must be in [0, 1)", spread);
  std::uniform_real_distribution<double> factor(1 - spread, 1 + spread);
  auto fraction = [&](double v) { return std::clamp(v * factor(rng), 1e-3, 1.0); };
  CostCoefficients c = nominal;
  c.gemm_efficiency = fraction(c.gemm_efficiency);
  c.attention_efficiency = fraction(c.attention_efficiency);
  c.half_efficiency_tokens *= factor(rng);
  c.layer_overhead_us *= factor(rng);
  c.ring_step_overhead_us *= factor(rng);
  c.comm_efficiency = fraction(c.comm_efficiency);
  c.overlap_efficiency = fraction(c.overlap_efficiency);
  c.grad_sync_overlap = std::clamp(c.grad_sync_overlap * factor(rng), 0.0, 1.0);
  return c;
}

Batch batch_for(const ScenarioData& data, Strategy strategy, std::size_t b) {
  Batch batch = data.batches[b];
  const auto pad = data.pad_to.find(strategy);
  if (pad == data.pad_to.end()) return batch;
  for (Sample& s : batch.samples) {
    const std::int64_t tokens = s.llm_tokens();
    s.text_tokens += (pad->second - tokens % pad->second) % pad->second;
  }
  return batch;
}

RobustnessResult robustness(const std::string& scenario, const ScenarioData& data,
                            const std::vector<CostCoefficients>& nominal,
                            const std::vector<StrategyPlans>& plans,
                            const RobustnessConfig& config) {
  DHP_CHECK(config.draws >= 1, InvalidArgument, "robustness: draws={} must be >= 1", config.draws);
  auto index_of = [&](Strategy s) {
    for (std::size_t i = 0; i < plans.size(); ++i)
      if (plans[i].strategy == s) return static_cast<long>(i);
    return -1L;
  };
  const long dhp = index_of(Strategy::Dhp), reference = index_of(Strategy::StaticBest);
  DHP_CHECK(dhp >= 0 && reference >= 0, InvalidArgument,
            "robustness on {}: needs dhp's and static_best's plans", scenario);

  RobustnessConfig nominal_config = config;
  nominal_config.coefficient_spread = 0;
  nominal_config.kernel_sigma = 0;
  const std::vector<double> at_nominal = run_draw(data, nominal, plans, nominal_config, 0);

  const std::size_t n = plans.size();
  std::vector<std::vector<double>> speedups(n);
  std::vector<int> ahead(n, 0), planned(n, 0);
  std::vector<double> over_best;
  int ahead_of_all = 0;
  for (int d = 0; d < config.draws; ++d) {
    const std::vector<double> totals = run_draw(data, nominal, plans, config, d + 1);
    double best_baseline = std::numeric_limits<double>::infinity();
    for (std::size_t i = 0; i < n; ++i) {
      if (std::isnan(totals[i])) continue;
      ++planned[i];
      speedups[i].push_back(totals[static_cast<std::size_t>(reference)] / totals[i]);
      if (totals[static_cast<std::size_t>(dhp)] <= totals[i]) ++ahead[i];
      if (static_cast<long>(i) != dhp && plans[i].strategy != Strategy::Exact)
        best_baseline = std::min(best_baseline, totals[i]);
    }
    const double mine = totals[static_cast<std::size_t>(dhp)];
    if (mine <= best_baseline) ++ahead_of_all;
    over_best.push_back(best_baseline / mine);
  }

  RobustnessResult result;
  result.scenario = scenario;
  result.config = config;
  for (std::size_t i = 0; i < n; ++i) {
    RobustnessRow row;
    row.strategy = to_string(plans[i].strategy);
    row.draws = planned[i];
    row.nominal_ms = at_nominal[i];
    row.speedup_p5 = percentile(speedups[i], 5);
    row.speedup_p50 = percentile(speedups[i], 50);
    row.speedup_p95 = percentile(speedups[i], 95);
    row.dhp_ahead = planned[i] > 0 ? static_cast<double>(ahead[i]) / planned[i] : kNaN;
    result.rows.push_back(row);
  }
  result.dhp_ahead_of_all = static_cast<double>(ahead_of_all) / config.draws;
  result.dhp_over_best_p5 = percentile(over_best, 5);
  result.dhp_over_best_p50 = percentile(over_best, 50);
  result.dhp_over_best_p95 = percentile(over_best, 95);
  return result;
}

}  // namespace dhp::bench
