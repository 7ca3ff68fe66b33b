// A static HTML page about one batch's plan (dhp_plan --report): the inputs, the plan's
// summary and waves, its simulated timeline (plan_svg.hpp), the load of every device, and
// the same batch planned by the other strategies on one time axis. One self-contained
// file: inline CSS and SVG, no script, nothing fetched.
#pragma once

#include <string>
#include <vector>

#include "dhp/batch.hpp"
#include "dhp/cluster.hpp"
#include "dhp/model.hpp"
#include "dhp/plan.hpp"
#include "dhp/planner.hpp"
#include "dhp/simulator.hpp"

namespace dhp {

// One strategy's plan of a batch, simulated with its timeline.
struct StrategyRun {
  std::string strategy;
  Plan plan;
  SimulationResult simulation;  // with its timeline
  double planner_ms = 0;        // wall time of Planner::plan
  std::string error;            // set when the strategy gave no plan; plan/simulation empty
};

// Plans `batch` with `options` (options.strategy) and simulates the plan, timeline
// recorded. Throws what the planner throws (dhp::Error).
StrategyRun run_strategy(const ClusterSpec& cluster, const ModelSpec& model,
                         const PlannerOptions& options, const Batch& batch);

// run_strategy for every strategy of all_strategies() but options.strategy, each with
// the rest of `options`; a strategy that throws dhp::Error gets a run holding its message.
std::vector<StrategyRun> run_other_strategies(const ClusterSpec& cluster, const ModelSpec& model,
                                              const PlannerOptions& options, const Batch& batch);

struct PlanReport {
  ClusterSpec cluster;
  ModelSpec model;
  Batch batch;
  StrategyRun subject;              // the plan the page is about
  std::vector<StrategyRun> others;  // the same batch by other strategies (may be empty)
};

std::string plan_report_html(const PlanReport& report);

}  // namespace dhp
