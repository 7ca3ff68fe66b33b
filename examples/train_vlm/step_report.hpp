// What a trained step tells about the machine it ran on: every process's timed events,
// gathered on world rank 0, turned into the cost model's measurements (for calibration) and
// into a measured timeline drawn with the simulator's prediction for the same plan.
#pragma once

#include <vector>

#include "dhp/communicator.hpp"
#include "dhp/cost_model.hpp"
#include "dhp/step_executor.hpp"
#include "dhp/timeline.hpp"

namespace vlm {

// Every process's events of one step, on world rank 0 (empty on the others). Collective.
std::vector<std::vector<dhp::StepEvent>> gather_events(dhp::Communicator& world,
                                                       const std::vector<dhp::StepEvent>& events);

// The cost model's measurements of a step: per wave, each LLM rank's forward and backward
// (its zigzag shares and whole sequences on its ring) and each encoder rank's forward and
// backward (its parts), timed on the rank's first process.
std::vector<dhp::Measurement> step_measurements(
    const dhp::Batch& batch, const dhp::Plan& plan, const dhp::EncoderSpec& encoder,
    const std::vector<std::vector<dhp::StepEvent>>& events);

// The measured timeline of a step: one row per process.
dhp::StepTimeline measured_timeline(const dhp::Batch& batch, const dhp::Plan& plan,
                                    const dhp::EncoderSpec& encoder,
                                    const std::vector<std::vector<dhp::StepEvent>>& events);

}  // namespace vlm
