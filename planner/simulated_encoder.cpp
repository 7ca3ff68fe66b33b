// The simulated encoder: each task's time and bytes, the forward and backward passes of a
// wave's items on their encoder ranks, and the encoder memory held between passes.
#include <algorithm>
#include <span>
#include <utility>

#include "dhp/error.hpp"
#include "internal.hpp"
#include "simulation_run.hpp"

namespace dhp::detail {

// Every task's time, bytes and LLM tokens; the shards of one item form a ring (plan.hpp),
// listed once in rings_ in task order.
void SimulationRun::price_encoder_tasks() {
  DHP_CHECK(plan_.encoder_tasks.empty() || cost_.model().encoder.has_value(), InvalidArgument,
            "simulator: the plan has {} encoder tasks but model '{}' has no encoder",
            plan_.encoder_tasks.size(), cost_.model().name);
  tasks_by_wave_.assign(plan_.waves.size(), {});
  task_ms_.assign(plan_.encoder_tasks.size(), 0.0);
  task_bytes_.assign(plan_.encoder_tasks.size(), EncoderBytes{});
  task_tokens_.assign(plan_.encoder_tasks.size(), 0);
  ring_of_.assign(plan_.encoder_tasks.size(), -1);
  rings_.clear();
  const std::vector<int> first_visual = visual_offsets(batch_);
  std::vector<int> ring_of_item(static_cast<size_t>(first_visual.back()), -1);
  for (size_t t = 0; t < plan_.encoder_tasks.size(); ++t) {
    const EncoderTask& task = plan_.encoder_tasks[t];
    tasks_by_wave_[static_cast<size_t>(task.wave)].push_back(t);
    const VisualItem& whole = item_of(task);
    const VisualItem part =
        task.parts == 1 ? whole
                        : encoder_part(*cost_.model().encoder, whole, task.part, task.parts);
    task_tokens_[t] = part.llm_tokens;
    if (!encoder_parts_are_shards(*cost_.model().encoder, whole, task.parts)) {
      task_ms_[t] = cost_.encoder_item_ms(part);
      task_bytes_[t] = cost_.encoder_item_bytes(part);
      continue;
    }
    int& ring = ring_of_item[static_cast<size_t>(first_visual[task.sample] + task.visual)];
    if (ring < 0) {
      ring = static_cast<int>(rings_.size());
      rings_.emplace_back();
    }
    rings_[static_cast<size_t>(ring)].push_back(t);
    ring_of_[t] = ring;
    task_bytes_[t] = cost_.encoder_shard_bytes(part, task.parts);
  }
  // A ring's shards run on distinct ranks and take the same time, priced once.
  for (const std::vector<size_t>& ring : rings_) {
    const EncoderTask& first = plan_.encoder_tasks[ring.front()];
    std::vector<int> ranks;
    for (size_t t : ring) ranks.push_back(plan_.encoder_tasks[t].rank);
    std::sort(ranks.begin(), ranks.end());  // whether it crosses nodes does not need the order
    DHP_CHECK(std::adjacent_find(ranks.begin(), ranks.end()) == ranks.end(), InvalidArgument,
              "simulator: the {} ring shards of sample {} visual {} need distinct encoder ranks",
              first.parts, first.sample, first.visual);
    const double ms = cost_.encoder_shard_ms(
        item_of(first),
        RingSpan{first.parts, encoder_ring_crosses_nodes(cost_.cluster(), plan_.encoder, ranks)});
    for (size_t t : ring) task_ms_[t] = ms;
  }
}

// Forward of every item of wave w on its encoder rank, in task order; the backward (the
// rest of encoder_item_ms) once the item's gradients are back (run() says when: colocated
// after the next wave's forward), in the order the items' consumers finish, as a runtime
// that runs each item's backward as its gradients arrive; by task order among equals, so
// every rank of a ring meets the rings in the same order. A ring's shards start together,
// when the last of their ranks is free (and, in backward, has its gradients).
void SimulationRun::encoder_pass(int w, bool backward) {
  const double forward_share = 1.0 / cost_.compute_passes();
  const double share = backward ? 1.0 - forward_share : forward_share;
  std::vector<double>& clock = encoder_clock_;
  std::fill(clock.begin(), clock.end(), -1.0);
  const std::vector<size_t>* order = &tasks_by_wave_[static_cast<size_t>(w)];
  if (backward) {
    order_ = *order;
    std::sort(order_.begin(), order_.end(), [&](size_t a, size_t b) {
      return std::pair(consumer_done_[a], a) < std::pair(consumer_done_[b], b);
    });
    order = &order_;
  }
  for (size_t t : *order) {
    // A ring runs once, from its first shard (rings list their tasks in task order, as
    // tasks_by_wave_ does, and all in one wave: validate() checks parts run in their
    // sample's wave).
    const int ring = ring_of_[t];
    if (ring >= 0 && rings_[static_cast<size_t>(ring)].front() != t) continue;
    const std::span<const size_t> members =
        ring < 0 ? std::span<const size_t>(&t, 1)
                 : std::span<const size_t>(rings_[static_cast<size_t>(ring)]);
    double start = 0;
    for (size_t m : members) {
      const int rank = plan_.encoder_tasks[m].rank;
      double& now = clock[static_cast<size_t>(rank)];
      if (now < 0) now = ready_at(plan_.encoder, rank);
      start = std::max({start, now, backward ? grad_ready_[m] : 0.0});
    }
    for (size_t m : members) {
      const int rank = plan_.encoder_tasks[m].rank;
      double& now = clock[static_cast<size_t>(rank)];
      const int device = plan_.encoder.device_of(rank);
      if (start > now) wait_event(device, w, -1, now, start);
      now = start + task_ms_[m] * share;
      occupy(plan_.encoder, rank, now, now - start);
      event(device, w, -1, EventKind::Encoder, start, now, static_cast<int>(m));
      if (backward) {
        enc_end_[static_cast<size_t>(rank)] = std::max(enc_end_[static_cast<size_t>(rank)], now);
      } else {
        item_ready_[m] = now;
        EncoderBytes& held = encoder_bytes_[static_cast<size_t>(w)][static_cast<size_t>(rank)];
        held.held += task_bytes_[m].held;
        held.working = std::max(held.working, task_bytes_[m].working);
      }
    }
  }
}

// Bytes encoder rank e holds for wave w's items, and the next wave's with `and_next`.
// Bytes encoder rank e holds for wave w's items, and the next wave's with `and_next`: their
// held bytes and the largest working set among them (one item runs at a time).
EncoderBytes SimulationRun::items_held(int w, int e, bool and_next) const {
  EncoderBytes held = encoder_bytes_[static_cast<size_t>(w)][static_cast<size_t>(e)];
  if (and_next && static_cast<size_t>(w + 1) < encoder_bytes_.size()) {
    const EncoderBytes& next = encoder_bytes_[static_cast<size_t>(w + 1)][static_cast<size_t>(e)];
    held.held += next.held;
    held.working = std::max(held.working, next.working);
  }
  return held;
}

// Colocated, between waves w and w + 1 a device holds both waves' encoder items and no LLM
// activations while it runs the next wave's forward and this wave's backward.
void SimulationRun::hold_two_waves(int w) {
  for (int e = 0; e < plan_.encoder.ranks; ++e) {
    const double peak = items_held(w, e, true).peak();
    for_devices(plan_.encoder, e, [&](int d) {
      act_peak_[static_cast<size_t>(d)] = std::max(act_peak_[static_cast<size_t>(d)], peak);
    });
  }
}

// Encoder activations live from the forward to the backward of their wave. Colocated, the
// wave's LLM work runs beside their held bytes (no encoder layer runs then), and a wave's
// passes alone need its working set on top; disjoint encoders run one wave ahead, so they
// hold two waves at once while they compute.
void SimulationRun::commit_wave_memory(int w) {
  const bool disjoint = plan_.placement == EncoderPlacement::Disjoint;
  for (int e = 0; e < plan_.encoder.ranks; ++e) {
    const EncoderBytes held = items_held(w, e, disjoint);
    const double beside_llm = disjoint ? held.peak() : held.held;
    for_devices(plan_.encoder, e, [&](int d) {
      wave_activation_[static_cast<size_t>(d)] += beside_llm;
      act_peak_[static_cast<size_t>(d)] = std::max(act_peak_[static_cast<size_t>(d)], held.peak());
    });
  }
  for (size_t d = 0; d < act_peak_.size(); ++d) {
    act_peak_[d] = std::max(act_peak_[d], wave_activation_[d]);
    wave_activation_[d] = 0;
  }
}

}  // namespace dhp::detail
