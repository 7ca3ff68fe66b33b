// Executes a plan on a modelled cluster, event by event: per-rank timelines for the
// encoder, the boundary transfer, LLM forward/backward per layer with ring steps and their
// overlap, and gradient synchronisation. Finer-grained than the planner's estimate.
#pragma once

#include <cstdint>
#include <vector>

#include "dhp/batch.hpp"
#include "dhp/cost_model.hpp"
#include "dhp/plan.hpp"

namespace dhp {

enum class EventKind { Encoder, Boundary, Compute, RingComm, Wait, GradSync };
const char* to_string(EventKind k) noexcept;

struct TimelineEvent {
  int device = 0;  // the first device of the rank the event runs on
  int wave = -1;
  int group = -1;  // LLM group within the wave, -1 for encoder / grad sync
  EventKind kind = EventKind::Compute;
  double start_ms = 0;
  double end_ms = 0;
  int task = -1;  // Encoder events: index into Plan::encoder_tasks (what a picture names)
};

struct SimulationResult {
  double step_ms = 0;
  std::vector<double> device_busy_ms;  // per device: compute + exposed communication
  std::vector<double> device_idle_fraction;
  double mean_idle_fraction = 0;
  std::vector<double> device_peak_mem_gib;
  double max_peak_mem_gib = 0;
  double mem_capacity_gib = 0;
  std::vector<TimelineEvent> timeline;  // only when asked for
};

// Noise of the machine the plan runs on, beyond its coefficients (a robustness study: plans
// made with one cost model, run on a perturbed "true" one). Every kernel time the simulator
// derives is multiplied by exp(sigma x z), z standard normal: one draw per (wave, LLM rank) for
// each of its q/k/v, attention, MLP and output-layer kernels (shared by the layers and passes
// of that wave: a systematic error per shape, harder on a plan than independent launches),
// one per ring step and member of a group, one per encoder task. z comes from a hash of
// `seed` and the kernel's place: the same plan and seed give the same times in any order.
struct KernelNoise {
  double sigma = 0;  // 0: none
  std::uint64_t seed = 0;
};

class Simulator {
 public:
  // The cluster, model and coefficients to simulate with. Each plan runs at its own TP
  // degrees (Plan::llm.tp, Plan::encoder.tp), whatever the degrees the cost model was built
  // for: a static baseline's layout may fix others than the planner's default.
  explicit Simulator(CostModel cost_model, KernelNoise noise = {});
  SimulationResult run(const Plan& plan, const Batch& batch, bool record_timeline = false) const;

 private:
  CostModel cost_;
  KernelNoise noise_;
};

}  // namespace dhp
