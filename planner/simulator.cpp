// Event-level execution of a plan on the modelled cluster (docs/simulator.md).
//
// Finer than the planner's estimate (CostModel::llm_sequence_ms summed per rank): linear
// layers run on a rank's packed tokens, attention per sequence on the exact uneven zigzag
// chunks, every ring step of every layer waits for the KV block from its actual predecessor
// over the actual link between those two ranks, the encoder's forward runs before the LLM
// work it feeds and each item's backward once its consumer is done (colocated: after the next
// wave's forward), boundary transfers share each device's link, and
// the gradient sync's buckets leave under the last backwards (detail::llm_sync_end,
// detail::encoder_sync_span, shared with the estimate).
#include "dhp/simulator.hpp"

#include <algorithm>
#include <cmath>
#include <optional>
#include <span>
#include <utility>

#include "dhp/error.hpp"
#include "internal.hpp"
#include "simulation_run.hpp"
#include "units.hpp"

namespace dhp {

const char* to_string(EventKind k) noexcept {
  switch (k) {
    case EventKind::Encoder:
      return "encoder";
    case EventKind::Boundary:
      return "boundary";
    case EventKind::Compute:
      return "compute";
    case EventKind::RingComm:
      return "ring_comm";
    case EventKind::Wait:
      return "wait";
    case EventKind::GradSync:
      return "grad_sync";
  }
  return "unknown";
}

namespace detail {
namespace {

// SplitMix64's finaliser: a well-mixed 64-bit hash of one word.
std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

double SimulationRun::noise(Kernel kind, std::uint64_t a, std::uint64_t b) const {
  if (noise_.sigma <= 0) return 1.0;
  const std::uint64_t h =
      mix(mix(mix(mix(noise_.seed) ^ static_cast<std::uint64_t>(kind)) ^ a) ^ b);
  // Two uniforms in (0, 1] from the hash's halves, then Box-Muller.
  const double u1 = (static_cast<double>(h >> 32) + 1.0) / 4294967296.0;
  const double u2 = (static_cast<double>(h & 0xffffffffULL) + 1.0) / 4294967296.0;
  const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * 3.14159265358979323846 * u2);
  return std::exp(noise_.sigma * z);
}

SimulationRun::SimulationRun(const CostModel& cost, const Plan& plan, const Batch& batch,
                             bool record, KernelNoise noise)
    : cost_(cost), plan_(plan), batch_(batch), record_(record), noise_(noise) {
  const int world = cost.cluster().world_size();
  DHP_CHECK(plan.llm.ranks >= 1 && plan.llm.first_device >= 0 &&
                plan.llm.first_device + plan.llm.num_devices() <= world,
            InvalidArgument,
            "simulator: LLM layout (first device {}, {} ranks x tp {}) does not fit {} devices",
            plan.llm.first_device, plan.llm.ranks, plan.llm.tp, world);
  DHP_CHECK(
      plan.encoder.ranks == 0 || (plan.encoder.first_device >= 0 &&
                                  plan.encoder.first_device + plan.encoder.num_devices() <= world),
      InvalidArgument,
      "simulator: encoder layout (first device {}, {} ranks x tp {}) does not fit {} devices",
      plan.encoder.first_device, plan.encoder.ranks, plan.encoder.tp, world);
  device_free_.assign(static_cast<size_t>(world), 0.0);
  busy_.assign(static_cast<size_t>(world), 0.0);
  act_peak_.assign(static_cast<size_t>(world), 0.0);
  wave_activation_.assign(static_cast<size_t>(world), 0.0);
  used_.assign(static_cast<size_t>(world), false);
  static_.assign(static_cast<size_t>(world), 0.0);
  llm_end_.assign(static_cast<size_t>(plan.llm.ranks), 0.0);
  enc_end_.assign(static_cast<size_t>(plan.encoder.ranks), 0.0);
  last_backward_ms_.assign(static_cast<size_t>(plan.llm.ranks), 0.0);
  wait_threshold_ms_ = std::max(0.01, 2e-3 * plan.estimate.step_ms);
}

SimulationResult SimulationRun::run() {
  // The plan's structure (every sample once, every encoder part once, parts in their
  // sample's wave) is validate()'s to check; what follows checks what it does not.
  validate(plan_, batch_);
  const int waves = static_cast<int>(plan_.waves.size());
  place_static_memory();
  price_encoder_tasks();
  item_ready_.assign(plan_.encoder_tasks.size(), 0.0);
  // Each task's are written (llm_wave) and read (encoder_pass) in its own wave only.
  grad_ready_.assign(plan_.encoder_tasks.size(), 0.0);
  consumer_done_.assign(plan_.encoder_tasks.size(), 0.0);
  encoder_clock_.resize(static_cast<size_t>(plan_.encoder.ranks));
  encoder_bytes_.assign(static_cast<size_t>(waves),
                        std::vector<EncoderBytes>(static_cast<size_t>(plan_.encoder.ranks)));

  const bool disjoint = plan_.placement == EncoderPlacement::Disjoint;
  if (waves > 0) encoder_pass(0, /*backward=*/false);
  for (int w = 0; w < waves; ++w) {
    if (disjoint && w + 1 < waves) encoder_pass(w + 1, /*backward=*/false);
    llm_wave(w);
    if (!disjoint && w + 1 < waves) {
      // Colocated: the next wave's forward first (other ranks wait for its outputs), then
      // this wave's backward; both waves' items are held in between.
      encoder_pass(w + 1, /*backward=*/false);
      hold_two_waves(w);
    }
    encoder_pass(w, /*backward=*/true);
  }
  return finish();
}

void SimulationRun::place_static_memory() {
  const double llm_static = cost_.llm_static_bytes(plan_.llm.ranks);
  for (int r = 0; r < plan_.llm.ranks; ++r) {
    for_devices(plan_.llm, r, [&](int d) {
      static_[static_cast<size_t>(d)] += llm_static;
      used_[static_cast<size_t>(d)] = true;
    });
  }
  if (plan_.encoder.ranks == 0) return;
  const double enc_static = cost_.encoder_static_bytes(plan_.encoder.ranks);
  for (int e = 0; e < plan_.encoder.ranks; ++e) {
    for_devices(plan_.encoder, e, [&](int d) {
      static_[static_cast<size_t>(d)] += enc_static;
      used_[static_cast<size_t>(d)] = true;
    });
  }
}

SimulationResult SimulationRun::finish() {
  const int world = cost_.cluster().world_size();
  const auto& coef = cost_.coefficients();
  const bool colocated = plan_.placement == EncoderPlacement::Colocated;
  double llm_done = 0;
  for (double end : llm_end_) llm_done = std::max(llm_done, end);
  const double llm_sync_end =
      detail::llm_sync_end(llm_end_, last_backward_ms_,
                           cost_.llm_grad_sync_full_ms(plan_.llm.ranks), coef.grad_sync_overlap);
  const double enc_sync = cost_.encoder_grad_sync_full_ms(plan_.encoder.ranks);
  double enc_done = 0;
  for (double e : enc_end_) enc_done = std::max(enc_done, e);
  const detail::SyncSpan enc_sync_span = detail::encoder_sync_span(
      llm_sync_end, enc_done, enc_sync, coef.grad_sync_overlap, colocated);
  // A rank shows the sync once its devices compute nothing else (colocated: the LLM's sync
  // runs under the encoder's last backward).
  auto expose = [&](const ModuleLayout& layout, int rank, double start, double end) {
    start = std::max(start, ready_at(layout, rank));
    if (end <= start) return;
    for_devices(layout, rank, [&](int d) { busy_[static_cast<size_t>(d)] += end - start; });
    event(layout.device_of(rank), -1, -1, EventKind::GradSync, start, end);
  };
  for (int r = 0; r < plan_.llm.ranks; ++r) expose(plan_.llm, r, llm_done, llm_sync_end);
  for (int e = 0; e < plan_.encoder.ranks; ++e)
    expose(plan_.encoder, e, enc_sync_span.start, enc_sync_span.end);

  SimulationResult result;
  result.step_ms = std::max({llm_sync_end, enc_sync_span.end, llm_done, enc_done});
  result.device_busy_ms = busy_;
  result.device_idle_fraction.assign(static_cast<size_t>(world), 1.0);
  result.device_peak_mem_gib.assign(static_cast<size_t>(world), 0.0);
  double idle_sum = 0;
  int used = 0;
  for (int d = 0; d < world; ++d) {
    const size_t i = static_cast<size_t>(d);
    if (!used_[i]) continue;
    ++used;
    const double busy = std::min(busy_[i], result.step_ms);
    result.device_idle_fraction[i] = result.step_ms > 0 ? 1.0 - busy / result.step_ms : 0.0;
    idle_sum += result.device_idle_fraction[i];
    result.device_peak_mem_gib[i] = (static_[i] + act_peak_[i]) / kGiB;
    result.max_peak_mem_gib = std::max(result.max_peak_mem_gib, result.device_peak_mem_gib[i]);
  }
  result.mean_idle_fraction = used > 0 ? idle_sum / used : 0.0;
  result.mem_capacity_gib = cost_.cluster().mem_capacity_gib - cost_.cluster().mem_reserved_gib;
  std::sort(timeline_.begin(), timeline_.end(), [](const TimelineEvent& a, const TimelineEvent& b) {
    return a.device != b.device ? a.device < b.device : a.start_ms < b.start_ms;
  });
  result.timeline = merge_waits(std::move(timeline_), result.step_ms);
  return result;
}

// Keeps the timeline small: a rank's ring waits closer than 0.1% of the step to each other
// become one span, and waits shorter than 0.05% of the step are dropped.
std::vector<TimelineEvent> SimulationRun::merge_waits(std::vector<TimelineEvent> events,
                                                      double step_ms) {
  std::vector<TimelineEvent> out;
  out.reserve(events.size());
  const double gap = 1e-3 * step_ms, shortest = 5e-4 * step_ms;
  auto last_wait = [&](const TimelineEvent& e) -> TimelineEvent* {
    for (auto it = out.rbegin(); it != out.rend() && it->device == e.device; ++it)
      if (it->kind == EventKind::Wait && it->wave == e.wave && it->group == e.group) return &*it;
    return nullptr;
  };
  for (const TimelineEvent& e : events) {
    if (e.kind != EventKind::Wait) {
      out.push_back(e);
      continue;
    }
    TimelineEvent* previous = last_wait(e);
    if (previous && e.start_ms - previous->end_ms < gap)
      previous->end_ms = e.end_ms;
    else
      out.push_back(e);
  }
  std::erase_if(out, [&](const TimelineEvent& e) {
    return e.kind == EventKind::Wait && e.end_ms - e.start_ms < shortest;
  });
  return out;
}

}  // namespace detail

Simulator::Simulator(CostModel cost_model, KernelNoise noise)
    : cost_(std::move(cost_model)), noise_(noise) {
  DHP_CHECK(noise.sigma >= 0 && std::isfinite(noise.sigma), InvalidArgument,
            "Simulator: kernel noise sigma={} must be finite and >= 0", noise.sigma);
}

SimulationResult Simulator::run(const Plan& plan, const Batch& batch, bool record_timeline) const {
  // A static layout may fix other TP degrees than the planner's default: the plan's rule.
  const int encoder_tp = plan.encoder.ranks > 0 ? plan.encoder.tp : cost_.encoder_tp();
  std::optional<CostModel> at_plan;
  if (plan.llm.tp != cost_.llm_tp() || encoder_tp != cost_.encoder_tp())
    at_plan.emplace(cost_.cluster(), cost_.model(), plan.llm.tp, encoder_tp, cost_.coefficients());
  return detail::SimulationRun(at_plan ? *at_plan : cost_, plan, batch, record_timeline, noise_)
      .run();
}

}  // namespace dhp
