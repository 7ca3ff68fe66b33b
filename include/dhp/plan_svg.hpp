// Pictures of a plan: one row per device, simulated time along the axis, every group in
// its own colour, encoder work, communication and idle time visible.
#pragma once

#include <string>

#include "dhp/batch.hpp"
#include "dhp/plan.hpp"
#include "dhp/simulator.hpp"

namespace dhp {

// `result` must come from Simulator::run(..., record_timeline = true).
std::string plan_to_svg(const Plan& plan, const Batch& batch, const SimulationResult& result);

}  // namespace dhp
