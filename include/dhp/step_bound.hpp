// A lower bound on the step of any plan of one batch: no strategy (dhp, a baseline, the exact
// solver) can be estimated below it on the cluster, under any module layout the options leave
// open. It says how far a plan is from the best possible: step / bound.
#pragma once

#include <string>

#include "dhp/batch.hpp"
#include "dhp/cluster.hpp"
#include "dhp/model.hpp"
#include "dhp/planner.hpp"

namespace dhp {

struct StepBound {
  // The bound: at each module layout the largest of the terms below, then the least over
  // the layouts (the one it is reached at in `layout`).
  double ms = 0;
  // The devices' mean work at that layout (every sequence at its least rank-time, each item
  // whole on one encoder rank, the fixed part of every rank-wave memory forces, sequences
  // whose activations do not fit one rank at their memory-minimal degree) plus the part of
  // the gradient syncs that cannot hide under the last backward.
  double work_ms = 0;
  // The longest sample's fastest time on any group the layout allows that holds it (a
  // micro-batch's overhead and the unhidden LLM sync included).
  double longest_sample_ms = 0;
  // A visual item at its fastest cut (one span of a video; ring shards of an image up to the
  // planner's most parts), its sample's LLM work at its fastest degree between its forward and
  // its backward, and a micro-batch's overhead: the longest over the batch's longest items
  // (0 for a text-only model).
  double longest_item_ms = 0;
  std::string binding;    // "work", "longest sample" or "longest item": the largest at `layout`
  PlannerOptions layout;  // llm_tp, encoder_tp, placement, encoder_devices of the bound
  int layouts_tried = 0;
};

// The bound under the planner's cost model (options.coefficients when set, else
// defaults_for(cluster)), over every LLM and encoder TP and placement `options` leaves open
// (layout_candidates, as dhp's layout search and best_run_layout see them), items allowed to be
// cut whatever options.strategy and options.split_visual_items say. The planner's
// estimate of any plan of `batch` (plan.estimate.step_ms) is at least `ms`; the simulator
// re-derives times at a finer grain and may differ by the estimate's error. Throws DoesNotFit
// when no layout's parameters fit the devices.
StepBound step_lower_bound(const ClusterSpec& cluster, const ModelSpec& model, const Batch& batch,
                           const PlannerOptions& options = {});

}  // namespace dhp
