// Pictures of a plan: its simulated timeline, one row per device, in the shared timeline
// style (timeline.hpp), so that a plan and a runtime's measured step read the same way.
//
//   const SimulationResult sim = Simulator(cost).run(plan, batch, /*record_timeline=*/true);
//   write_text_file("plan.svg", plan_to_svg(plan, batch, sim));
//
// Several plans of one batch on one time axis (dhp above a baseline, as dhp_plan
// --svg-compare draws them): timelines_to_svg({plan_timeline(a, ...), plan_timeline(b, ...)}).
// A measured step: fill a StepTimeline with the timed activities (device, kind, start/end,
// wave and group, the samples with their tokens) and call timeline_to_svg.
#pragma once

#include <string>

#include "dhp/batch.hpp"
#include "dhp/plan.hpp"
#include "dhp/simulator.hpp"
#include "dhp/timeline.hpp"

namespace dhp {

// The simulated plan as a timeline: a rank's events (recorded on its first device) on every
// device of its TP group; LLM work names the samples each rank holds in that wave with its
// share of their tokens, encoder work the item it encodes. `result` must come from
// Simulator::run(..., record_timeline = true).
StepTimeline plan_timeline(const Plan& plan, const Batch& batch, const SimulationResult& result);

// timeline_to_svg(plan_timeline(plan, batch, result), options).
std::string plan_to_svg(const Plan& plan, const Batch& batch, const SimulationResult& result,
                        const TimelineSvgOptions& options = {});

}  // namespace dhp
