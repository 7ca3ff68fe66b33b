// A simulated plan as a StepTimeline: the simulator's events become activities on every
// device of their rank, each naming the samples it works on (from the plan: which rank of
// a group holds which sequence, which encoder rank encodes which item).
#include "dhp/plan_svg.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <utility>
#include <vector>

namespace dhp {
namespace {

std::int64_t ceil_share(std::int64_t tokens, int parts) {
  return parts > 1 ? (tokens + parts - 1) / parts : tokens;
}

// Per (wave, LLM rank): the samples the rank holds in that wave, with its tokens of each.
using RankShares = std::map<std::pair<int, int>, std::vector<SampleShare>>;

RankShares llm_shares(const Plan& plan, const Batch& batch) {
  RankShares shares;
  for (std::size_t w = 0; w < plan.waves.size(); ++w) {
    const WavePlan& wave = plan.waves[w];
    for (const SequencePlan& seq : wave.sequences) {
      const GroupPlan& group = wave.groups[static_cast<std::size_t>(seq.group)];
      const Sample& sample = batch.samples[static_cast<std::size_t>(seq.sample)];
      const std::int64_t tokens = sample.llm_tokens();
      const int degree = group.degree();
      if (seq.sharding == Sharding::Whole) {
        const int rank = group.ranks[static_cast<std::size_t>(seq.member)];
        shares[{static_cast<int>(w), rank}].push_back({sample.id, tokens, "whole"});
        continue;
      }
      for (int m = 0; m < degree; ++m)
        shares[{static_cast<int>(w), group.ranks[static_cast<std::size_t>(m)]}].push_back(
            {sample.id, ceil_share(tokens, degree),
             fmt::format("zigzag share {} of {}, {} tokens in all", m + 1, degree, tokens)});
    }
  }
  return shares;
}

SampleShare encoder_share(const Batch& batch, const EncoderTask& task, bool backward) {
  const Sample& sample = batch.samples[static_cast<std::size_t>(task.sample)];
  const VisualItem& item = sample.visuals[static_cast<std::size_t>(task.visual)];
  std::string detail = fmt::format("{}, {} {}: {} patches", backward ? "backward" : "forward",
                                   item.frames > 1 ? "video" : "image", task.visual, item.patches);
  if (task.parts > 1) detail += fmt::format(", part {} of {}", task.part + 1, task.parts);
  return {sample.id, ceil_share(item.llm_tokens, task.parts), std::move(detail)};
}

ActivityKind activity_kind(EventKind kind) {
  switch (kind) {
    case EventKind::Encoder:
      return ActivityKind::Encoder;
    case EventKind::Boundary:
      return ActivityKind::Boundary;
    case EventKind::Compute:
      return ActivityKind::LlmCompute;
    case EventKind::RingComm:
      return ActivityKind::RingComm;
    case EventKind::Wait:
      return ActivityKind::Wait;
    case EventKind::GradSync:
      return ActivityKind::GradSync;
  }
  return ActivityKind::Wait;
}

// The devices an event occupies. The simulator records a rank's events on the rank's first
// device only, but a TP group works (and waits) together. Encoder work and encoder waits
// (no LLM group) belong to the encoder layout; gradient sync may be either module's, so it
// spans both where the device starts a rank of each (colocated placement).
std::vector<int> devices_of(const Plan& plan, const TimelineEvent& e) {
  std::vector<int> devices;
  auto add_rank_devices = [&](const ModuleLayout& module) {
    const int offset = e.device - module.first_device;
    if (module.tp < 1 || offset < 0 || offset >= module.num_devices() || offset % module.tp != 0)
      return;
    for (int t = 0; t < module.tp; ++t) devices.push_back(module.device_of(offset / module.tp, t));
  };
  const bool encoder = e.kind == EventKind::Encoder || (e.kind == EventKind::Wait && e.group < 0);
  if (!encoder) add_rank_devices(plan.llm);  // LLM work, its waits and the gradient sync
  if (encoder || e.kind == EventKind::GradSync) add_rank_devices(plan.encoder);
  std::sort(devices.begin(), devices.end());
  devices.erase(std::unique(devices.begin(), devices.end()), devices.end());
  if (devices.empty()) devices.push_back(e.device);  // not a rank's first device: as recorded
  return devices;
}

// The LLM rank whose first device is `device`, or -1.
int llm_rank_at(const Plan& plan, int device) {
  const int offset = device - plan.llm.first_device;
  if (plan.llm.tp < 1 || offset < 0 || offset >= plan.llm.num_devices() ||
      offset % plan.llm.tp != 0)
    return -1;
  return offset / plan.llm.tp;
}

std::string plan_title(const Plan& plan, const SimulationResult& result) {
  return fmt::format(
      "{}: step {:.1f} ms (simulated), idle {:.1f}%, peak memory {:.1f} / {:.1f} GiB",
      plan.strategy, result.step_ms, 100 * result.mean_idle_fraction, result.max_peak_mem_gib,
      result.mem_capacity_gib);
}

std::string plan_subtitle(const Plan& plan, const Batch& batch) {
  int groups = 0;
  for (const WavePlan& w : plan.waves) groups += static_cast<int>(w.groups.size());
  std::string text = fmt::format(
      "{} samples, {} tokens; {} waves, {} CP groups; LLM {} ranks x TP {}", batch.samples.size(),
      batch.total_llm_tokens(), plan.waves.size(), groups, plan.llm.ranks, plan.llm.tp);
  if (plan.encoder.ranks > 0)
    text += fmt::format("; encoder {} ranks x TP {} ({})", plan.encoder.ranks, plan.encoder.tp,
                        to_string(plan.placement));
  return text;
}

}  // namespace

StepTimeline plan_timeline(const Plan& plan, const Batch& batch, const SimulationResult& result) {
  StepTimeline timeline;
  timeline.title = plan_title(plan, result);
  timeline.subtitle = plan_subtitle(plan, batch);
  if (result.max_peak_mem_gib > result.mem_capacity_gib) timeline.alert = "(OVER CAPACITY)";
  timeline.clock = "simulated";
  timeline.end_ms = result.step_ms;

  const RankShares shares = llm_shares(plan, batch);
  // A task's first event on a rank is its forward, the second its backward.
  std::map<std::pair<int, int>, int> encoder_runs;  // (device, task) -> events seen
  for (const TimelineEvent& e : result.timeline) {
    Activity a;
    a.kind = activity_kind(e.kind);
    a.start_ms = e.start_ms;
    a.end_ms = e.end_ms;
    a.wave = e.wave;
    a.group = e.group;
    const bool holds_samples = e.kind == EventKind::Compute || e.kind == EventKind::Boundary;
    if (holds_samples && e.wave >= 0) {
      const auto it = shares.find({e.wave, llm_rank_at(plan, e.device)});
      if (it != shares.end()) a.samples = it->second;
      if (e.kind == EventKind::Compute) a.label = fmt::format("w{}", e.wave);
    }
    if (e.kind == EventKind::Encoder && e.task >= 0 &&
        e.task < static_cast<int>(plan.encoder_tasks.size())) {
      const bool backward = encoder_runs[{e.device, e.task}]++ > 0;
      a.samples.push_back(
          encoder_share(batch, plan.encoder_tasks[static_cast<std::size_t>(e.task)], backward));
    }
    for (int device : devices_of(plan, e)) {
      a.device = device;
      timeline.activities.push_back(a);
    }
  }
  return timeline;
}

std::string plan_to_svg(const Plan& plan, const Batch& batch, const SimulationResult& result,
                        const TimelineSvgOptions& options) {
  return timeline_to_svg(plan_timeline(plan, batch, result), options);
}

}  // namespace dhp
