// Drafts -> Plan, the LLM side and the step: node-aware placement of each wave's groups, the
// wave on the devices' clocks (colocated encoder forward, LLM groups, the previous wave's
// encoder backward), the memory check per device and the step with its gradient sync.
// Which encoder rank encodes what is encoder_assignment.cpp's.
#include "plan_assembly.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>

#include "dhp/error.hpp"
#include "units.hpp"

namespace dhp::detail {
namespace {}  // namespace

PlanAssembler::PlanAssembler(const std::string& strategy, const Batch& batch, const CostModel& cost,
                             const Layout& layout, const std::vector<WaveDraft>& waves,
                             bool check_memory, const SampleCosts& sample_costs)
    : strategy_(strategy),
      batch_(batch),
      cost_(cost),
      layout_(layout),
      waves_(waves),
      check_memory_(check_memory),
      sc_(sample_costs),
      R_(layout.llm.ranks),
      rpn_(std::max(1, layout.llm_ranks_per_node)),
      E_(layout.encoder.ranks),
      world_(cost.cluster().world_size()),
      capacity_(cost.capacity_bytes()),
      llm_static_(cost.llm_static_bytes(R_)),
      enc_static_(E_ > 0 ? cost.encoder_static_bytes(E_) : 0.0),
      colocated_(layout.placement == EncoderPlacement::Colocated),
      chained_(colocated_ || sample_costs.encoder_ms.empty()),
      backward_share_((cost.compute_passes() - 1) / cost.compute_passes()),
      peak_bytes_(R_, 0.0),
      rank_ms_(R_),
      rank_bytes_(R_),
      rank_group_(R_),
      rank_end_(R_, 0.0),
      rank_last_backward_(R_, 0.0),
      rank_inputs_(R_, 0.0),
      rank_remote_(R_, 0),
      colocated_rank_(E_, -1),
      room_llm_(E_),
      room_pass_(E_),
      encoder_clock_(E_, -1.0),
      pending_ms_(E_, 0.0),
      pending_held_(E_, 0.0),
      pending_working_(E_, 0.0),
      enc_load_(E_),
      enc_start_(E_),
      enc_held_(E_),
      enc_working_(E_),
      enc_sent_(E_),
      device_free_(chained_ ? world_ : 0, 0.0),
      device_bytes_(world_),
      enc_wave_ms_(waves.size(), 0.0),
      boundary_wave_ms_(waves.size(), 0.0) {
  plan_.strategy = strategy;
  plan_.step = batch.step;
  plan_.placement = layout.placement;
  plan_.llm = layout.llm;
  plan_.encoder = layout.encoder;
  plan_.waves.resize(waves.size());
  for (int e = 0; e < E_ && colocated_; ++e) {
    const int r = (layout.encoder.device_of(e) - layout.llm.first_device) / layout.llm.tp;
    if (r >= 0 && r < R_) colocated_rank_[e] = r;
  }
}

Plan PlanAssembler::assemble() && {
  index_samples();
  collect_wave_items();
  for (std::size_t w = 0; w < waves_.size(); ++w) {
    place_llm_wave(w);
    hold_llm_memory();
    if (E_ > 0) assign_encoder_items(w);
    if (chained_) {
      run_encoder_forward(w);
      run_pending_backward();
      run_llm_groups(w);
      queue_encoder_backward(w);
    }
    check_wave_memory(w);
  }
  if (chained_) run_pending_backward();
  finish_estimate();
  return std::move(plan_);
}

// Every sample's wave, group and member (-1: split).
void PlanAssembler::index_samples() {
  wave_sequences_.assign(waves_.size(), 0);
  sample_wave_.assign(batch_.samples.size(), -1);
  sample_group_.resize(batch_.samples.size());
  sample_member_.resize(batch_.samples.size());
  for (std::size_t w = 0; w < waves_.size(); ++w) {
    for (std::size_t g = 0; g < waves_[w].groups.size(); ++g) {
      const GroupDraft& gd = waves_[w].groups[g];
      auto note = [&](int s, int member) {
        DHP_CHECK(s >= 0 && s < static_cast<int>(batch_.samples.size()), Internal,
                  "{}: sample index {} out of range", strategy_, s);
        sample_wave_[s] = static_cast<int>(w);
        sample_group_[s] = static_cast<int>(g);
        sample_member_[s] = member;
        ++wave_sequences_[w];
      };
      for (int s : gd.split) note(s, -1);
      for (std::size_t m = 0; m < gd.whole.size(); ++m)
        for (int s : gd.whole[m]) note(s, static_cast<int>(m));
    }
  }
}

// Each wave's encoder items, longest first: one pass over the batch's sorted visuals rather
// than one per wave, each wave's items in one allocation.
void PlanAssembler::collect_wave_items() {
  wave_items_.resize(E_ > 0 ? waves_.size() : 0);
  wave_encoder_ms_.assign(waves_.size(), 0.0);
  if (E_ > 0) {
    std::vector<std::size_t> count(waves_.size(), 0);
    for (const SampleCosts::Visual& v : sc_.visuals_longest_first)
      if (sample_wave_[v.sample] >= 0) ++count[sample_wave_[v.sample]];
    for (std::size_t w = 0; w < waves_.size(); ++w) wave_items_[w].reserve(count[w]);
  }
  for (std::size_t i = 0; i < sc_.visuals_longest_first.size() && E_ > 0; ++i) {
    const SampleCosts::Visual& v = sc_.visuals_longest_first[i];
    const int w = sample_wave_[v.sample];
    if (w < 0) continue;
    wave_items_[w].push_back(EncoderItem{v.sample, v.visual, sample_group_[v.sample],
                                         sample_member_[v.sample], v.ms, v.bytes, v.llm_tokens});
    wave_encoder_ms_[w] += v.ms;
  }
  plan_.encoder_tasks.reserve(E_ > 0 ? sc_.visuals_longest_first.size() : 0);  // parts add more
}

// The wave's groups on concrete ranks, its sequences, and each rank's LLM time and bytes.
void PlanAssembler::place_llm_wave(std::size_t w) {
  const WaveDraft& draft = waves_[w];
  WavePlan& wave = plan_.waves[w];
  std::vector<int> degrees;
  degrees.reserve(draft.groups.size());
  for (const GroupDraft& g : draft.groups) degrees.push_back(g.degree);
  std::vector<std::vector<int>> placed = place_groups(degrees, R_, rpn_);

  std::fill(rank_ms_.begin(), rank_ms_.end(), 0.0);
  std::fill(rank_bytes_.begin(), rank_bytes_.end(), 0.0);
  std::fill(rank_group_.begin(), rank_group_.end(), -1);
  wave.groups.resize(draft.groups.size());
  wave.sequences.reserve(wave_sequences_[w]);
  for (std::size_t g = 0; g < draft.groups.size(); ++g) {
    const GroupDraft& gd = draft.groups[g];
    GroupPlan& gp = wave.groups[g];
    gp.ranks = std::move(placed[g]);
    gp.attention = CpAttention::Ring;
    DHP_CHECK(gd.whole.size() <= static_cast<std::size_t>(gd.degree), Internal,
              "{}: wave {} group {} of degree {} lists {} members with whole sequences", strategy_,
              w, g, gd.degree, gd.whole.size());
    const RingSpan ring{gd.degree, crosses_nodes(gp.ranks, rpn_)};
    split_tokens_.clear();
    double split_bytes = 0;
    for (int s : gd.split) {
      split_tokens_.push_back(sc_.tokens[s]);
      split_bytes += gd.degree == 1 ? sc_.whole_bytes[s]
                                    : cost_.llm_activation_bytes(split_tokens_.back(), gd.degree);
      wave.sequences.push_back(SequencePlan{s, static_cast<int>(g), Sharding::Zigzag, -1});
    }
    GroupMemberMs member_ms(cost_, split_tokens_, ring);
    for (int m = 0; m < gd.degree; ++m) {
      whole_tokens_.clear();
      double whole_bytes = 0;
      if (m < static_cast<int>(gd.whole.size())) {
        for (int s : gd.whole[m]) {
          whole_tokens_.push_back(sc_.tokens[s]);
          whole_bytes += sc_.whole_bytes[s];
          wave.sequences.push_back(SequencePlan{s, static_cast<int>(g), Sharding::Whole, m});
        }
      }
      const int r = gp.ranks[m];
      rank_group_[r] = static_cast<int>(g);
      rank_ms_[r] = member_ms(whole_tokens_);
      rank_bytes_[r] = split_bytes + whole_bytes;
    }
  }
  double wave_ms = 0;
  for (int r = 0; r < R_; ++r) wave_ms = std::max(wave_ms, rank_ms_[r]);
  plan_.estimate.wave_ms.push_back(wave_ms + cost_.wave_overhead_ms());
  first_task_ = plan_.encoder_tasks.size();
  task_consumer_.clear();
  task_ms_.clear();
  task_ring_.clear();
}

// Memory per device, the LLM's part (static + this wave's activations), and the room it
// leaves each encoder rank for the wave's items (colocated: on the same devices).
void PlanAssembler::hold_llm_memory() {
  std::fill(device_bytes_.begin(), device_bytes_.end(), 0.0);
  for (int r = 0; r < R_; ++r)
    for (int t = 0; t < layout_.llm.tp; ++t)
      device_bytes_[layout_.llm.device_of(r, t)] += llm_static_ + rank_bytes_[r];
  std::fill(enc_load_.begin(), enc_load_.end(), 0.0);
  std::fill(enc_held_.begin(), enc_held_.end(), 0.0);
  std::fill(enc_working_.begin(), enc_working_.end(), 0.0);
  std::fill(enc_sent_.begin(), enc_sent_.end(), 0);
  for (int e = 0; e < E_; ++e) {
    double used = 0;
    for (int t = 0; t < layout_.encoder.tp && colocated_; ++t)
      used = std::max(used, device_bytes_[layout_.encoder.device_of(e, t)]);
    room_llm_[e] = capacity_ - enc_static_ - used;
    room_pass_[e] = capacity_ - held_beside_forward(e);
  }
}

// The wave on the devices' clocks, no barrier between waves: each encoder rank encodes its
// items as soon as its devices are free; an LLM group starts once its members' devices are
// free and every item they consume is encoded (plus the wave's boundary transfer if any came
// from other devices); its ring steps keep the members together until the slowest is done.
// An item's backward needs its consumer's gradients and runs after the next wave's forward:
// the devices first encode what other ranks wait for. A task's item is consumed by one rank
// (a whole sequence's holder) or by every member of a group (a split sequence). Group
// consumers are kept per group, not per member: a large group would otherwise be visited
// once per item.
namespace {
// group_home_: the one member that gets all of the group's items on its own devices (>= 0),
// every member gets some from other devices (kMixed), or the group consumes none (kNone).
constexpr int kNone = -1, kMixed = -2;
}  // namespace

void PlanAssembler::run_encoder_forward(std::size_t w) {
  const WavePlan& wave = plan_.waves[w];
  const double forward_share = 1.0 / cost_.compute_passes();  // as the simulator splits it
  std::fill(rank_inputs_.begin(), rank_inputs_.end(), 0.0);
  std::fill(rank_remote_.begin(), rank_remote_.end(), false);
  std::fill(encoder_clock_.begin(), encoder_clock_.end(), -1.0);
  const std::size_t G = wave.groups.size();
  group_inputs_.assign(G, 0.0);
  group_home_.assign(G, kNone);
  group_end_.assign(G, 0.0);
  for (std::size_t t = first_task_; t < plan_.encoder_tasks.size();) {
    // A ring's shards (consecutive tasks) start together, when the last member is free.
    const std::size_t end = t + task_ring_[t - first_task_];
    double start = 0;
    for (std::size_t k = t; k < end; ++k) {
      double& clock = encoder_clock_[plan_.encoder_tasks[k].rank];
      if (clock < 0) clock = devices_free(layout_.encoder, plan_.encoder_tasks[k].rank);
      start = std::max(start, clock);
    }
    for (; t < end; ++t) {
      const EncoderTask& task = plan_.encoder_tasks[t];
      double& clock = encoder_clock_[task.rank];
      clock = start + task_ms_[t - first_task_] * forward_share;
      const auto [group, member] = task_consumer_[t - first_task_];
      if (member >= 0) {
        const int r = wave.groups[group].ranks[member];
        rank_inputs_[r] = std::max(rank_inputs_[r], clock);
        if (colocated_rank_[task.rank] != r) rank_remote_[r] = true;
      } else {
        group_inputs_[group] = std::max(group_inputs_[group], clock);
        const int home = colocated_rank_[task.rank];
        const int local = home >= 0 && rank_group_[home] == group ? home : kMixed;
        int& h = group_home_[group];
        h = h == kNone || h == local ? local : kMixed;
      }
    }
  }
  for (int e = 0; e < E_; ++e)
    if (encoder_clock_[e] >= 0) occupy(layout_.encoder, e, encoder_clock_[e]);
}

// Each group starts when its members' devices are free and their inputs are encoded (and
// delivered), and ends with its slowest member.
void PlanAssembler::run_llm_groups(std::size_t w) {
  const WavePlan& wave = plan_.waves[w];
  for (std::size_t g = 0; g < wave.groups.size(); ++g) {
    const GroupPlan& gp = wave.groups[g];
    double start = 0, longest = 0;
    for (int r : gp.ranks) {
      double inputs = rank_inputs_[r];
      bool remote = rank_remote_[r];
      if (group_home_[g] != kNone) {
        inputs = std::max(inputs, group_inputs_[g]);
        remote = remote || group_home_[g] != r;
      }
      if (remote) inputs += boundary_wave_ms_[w];
      start = std::max({start, devices_free(layout_.llm, r), inputs});
      longest = std::max(longest, rank_ms_[r]);
    }
    if (longest <= 0) continue;
    group_end_[g] = start + longest + cost_.wave_overhead_ms();
    for (int r : gp.ranks) {
      rank_end_[r] = group_end_[g];
      rank_last_backward_[r] = longest * backward_share_;
      occupy(layout_.llm, r, rank_end_[r]);
    }
  }
}

// This wave's backward waits for the next wave's forward (run_pending_backward), item by item
// in the simulator's order: by when the consumer group ends, then task order (groups that end
// together share a bucket). A bucket per end, no sort of the items.
void PlanAssembler::queue_encoder_backward(std::size_t w) {
  const WavePlan& wave = plan_.waves[w];
  const double forward_share = 1.0 / cost_.compute_passes();
  const std::size_t G = wave.groups.size();
  group_order_.resize(G);
  std::iota(group_order_.begin(), group_order_.end(), 0);
  std::sort(group_order_.begin(), group_order_.end(),
            [&](int a, int b) { return group_end_[a] < group_end_[b]; });
  group_slot_.assign(G + 1, 0);
  group_rank_.resize(G);
  for (std::size_t i = 0, rank = 0; i < G; ++i) {
    if (i > 0 && group_end_[group_order_[i]] != group_end_[group_order_[i - 1]]) ++rank;
    group_rank_[group_order_[i]] = static_cast<int>(rank);
  }
  for (std::size_t t = first_task_; t < plan_.encoder_tasks.size();
       t += static_cast<std::size_t>(task_ring_[t - first_task_]))
    ++group_slot_[group_rank_[task_consumer_[t - first_task_].first] + 1];
  std::partial_sum(group_slot_.begin(), group_slot_.end(), group_slot_.begin());
  pending_.resize(group_slot_[G]);
  for (std::size_t t = first_task_; t < plan_.encoder_tasks.size();) {
    const std::size_t end = t + static_cast<std::size_t>(task_ring_[t - first_task_]);
    const int group = task_consumer_[t - first_task_].first;
    const std::vector<int>& members = wave.groups[group].ranks;
    // The gradient comes back from other devices unless the item's one consumer sits on the
    // encoder rank's own (a ring's shards: any of them).
    bool remote = false;
    for (std::size_t k = t; k < end; ++k) {
      const EncoderTask& task = plan_.encoder_tasks[k];
      const int member = task_consumer_[k - first_task_].second;
      const int only = member >= 0 ? members[member] : members.size() == 1 ? members[0] : -1;
      remote = remote || !(only >= 0 && colocated_rank_[task.rank] == only);
      pending_ms_[task.rank] += task_ms_[k - first_task_] * (1 - forward_share);
    }
    pending_[group_slot_[group_rank_[group]]++] =
        PendingBackward{t, end, group_end_[group] + (remote ? boundary_wave_ms_[w] : 0.0),
                        task_ms_[t - first_task_] * (1 - forward_share)};
    t = end;
  }
}

// The previous wave's encoder backward on the devices' clocks, item by item as the simulator
// runs it: each once its gradients are back and its ranks are free, a ring's members together.
void PlanAssembler::run_pending_backward() {
  std::fill(encoder_clock_.begin(), encoder_clock_.end(), -1.0);
  for (const PendingBackward& p : pending_) {
    double start = p.ready;
    for (std::size_t k = p.first; k < p.end; ++k) {
      double& clock = encoder_clock_[plan_.encoder_tasks[k].rank];
      if (clock < 0) clock = devices_free(layout_.encoder, plan_.encoder_tasks[k].rank);
      start = std::max(start, clock);
    }
    for (std::size_t k = p.first; k < p.end; ++k)
      encoder_clock_[plan_.encoder_tasks[k].rank] = start + p.ms;
  }
  for (int e = 0; e < E_; ++e) {
    if (encoder_clock_[e] < 0) continue;
    occupy(layout_.encoder, e, encoder_clock_[e]);
    encoder_end_ = std::max(encoder_end_, encoder_clock_[e]);
  }
  pending_.clear();
  std::fill(pending_ms_.begin(), pending_ms_.end(), 0.0);
}

// Memory per device: the LLM's part (hold_llm_memory), plus the encoder's held bytes on shared
// devices; and each encoder rank while its passes run beside the previous wave's items.
void PlanAssembler::check_wave_memory(std::size_t w) {
  for (int e = 0; e < E_; ++e)
    for (int t = 0; t < layout_.encoder.tp; ++t)
      device_bytes_[layout_.encoder.device_of(e, t)] += enc_static_ + enc_held_[e];
  auto note_over = [&](double bytes, int rank) {
    if (bytes > capacity_ && bytes - capacity_ > over_bytes_) {
      over_capacity_ = true;
      over_bytes_ = bytes - capacity_;
      over_rank_ = rank;
      over_wave_ = static_cast<int>(w);
    }
  };
  for (int r = 0; r < R_; ++r) {
    double worst = 0;
    for (int t = 0; t < layout_.llm.tp; ++t)
      worst = std::max(worst, device_bytes_[layout_.llm.device_of(r, t)]);
    peak_bytes_[r] = std::max(peak_bytes_[r], worst);
    note_over(worst, r);
  }
  for (int e = 0; e < E_; ++e) {
    const int r = colocated_rank_[e];  // -1 unless colocated
    const double b =
        held_beside_forward(e) + enc_held_[e] + std::max(enc_working_[e], pending_working_[e]);
    if (r >= 0) peak_bytes_[r] = std::max(peak_bytes_[r], b);
    note_over(b, -1 - e);
  }
  pending_held_ = enc_held_;
  pending_working_ = enc_working_;
}

// The step: the waves on the devices' clocks (or a disjoint encoder one wave ahead), then
// the gradient syncs; infinite (or an error) over capacity.
void PlanAssembler::finish_estimate() {
  PlanEstimate& est = plan_.estimate;
  est.llm_ms = std::accumulate(est.wave_ms.begin(), est.wave_ms.end(), 0.0);
  est.encoder_ms = std::accumulate(enc_wave_ms_.begin(), enc_wave_ms_.end(), 0.0);
  const double overlap = cost_.coefficients().grad_sync_overlap;
  const double llm_sync = cost_.llm_grad_sync_full_ms(R_);
  double step = 0;
  if (chained_) {
    // Ranks and encoder ranks meet in the gradient sync: the LLM's buckets leave under each
    // rank's last backward as far as it lasts, and under the encoder's on shared devices.
    const double llm_done = *std::max_element(rank_end_.begin(), rank_end_.end());
    step = std::max(llm_done, encoder_end_);
    const double sync_end = llm_sync_end(rank_end_, rank_last_backward_, llm_sync, overlap);
    const SyncSpan enc_sync = encoder_sync_span(
        sync_end, encoder_end_, cost_.encoder_grad_sync_full_ms(E_), overlap, colocated_);
    est.grad_sync_ms = std::max(sync_end, enc_sync.end) - step;
  } else if (!waves_.empty()) {
    // Disjoint encoder: it runs one wave ahead of the LLM on its own devices.
    const double last_backward = est.wave_ms.back() * backward_share_;
    est.grad_sync_ms = llm_sync - std::min(overlap * llm_sync, last_backward) +
                       cost_.encoder_grad_sync_full_ms(E_) * (1.0 - overlap);
    step = enc_wave_ms_[0];
    for (std::size_t w = 0; w < waves_.size(); ++w) {
      const double next_encoder = w + 1 < waves_.size() ? enc_wave_ms_[w + 1] : 0.0;
      step += std::max(est.wave_ms[w] + boundary_wave_ms_[w], next_encoder);
    }
  }
  est.step_ms = step + est.grad_sync_ms;
  est.mem_capacity_gib = capacity_ / kGiB;
  est.peak_mem_gib.resize(R_);
  for (int r = 0; r < R_; ++r) est.peak_mem_gib[r] = peak_bytes_[r] / kGiB;

  if (!over_capacity_) return;
  if (check_memory_) {
    if (over_rank_ >= 0)
      DHP_THROW(Internal,
                "{}: LLM rank {} in wave {} needs {:.3f} GiB, over the {:.3f} GiB capacity "
                "(a strategy handed over a draft that does not fit)",
                strategy_, over_rank_, over_wave_, (capacity_ + over_bytes_) / kGiB,
                capacity_ / kGiB);
    DHP_THROW(
        DoesNotFit, "{}: encoder rank {} in wave {} needs {:.3f} GiB, over the {:.3f} GiB capacity",
        strategy_, -1 - over_rank_, over_wave_, (capacity_ + over_bytes_) / kGiB, capacity_ / kGiB);
  }
  est.step_ms = std::numeric_limits<double>::infinity();
}

Plan build_plan(const std::string& strategy, const Batch& batch, const CostModel& cost,
                const Layout& layout, const std::vector<WaveDraft>& waves) {
  const SampleCosts sample_costs = make_sample_costs(batch, cost, layout);
  Plan plan =
      PlanAssembler(strategy, batch, cost, layout, waves, /*check_memory=*/true, sample_costs)
          .assemble();
  validate(plan, batch);
  return plan;
}

double estimate_step_ms(const Batch& batch, const CostModel& cost, const Layout& layout,
                        const std::vector<WaveDraft>& waves) {
  return estimate_step_ms(batch, cost, layout, waves, make_sample_costs(batch, cost, layout));
}

Plan estimate_plan(const std::string& strategy, const Batch& batch, const CostModel& cost,
                   const Layout& layout, const std::vector<WaveDraft>& waves,
                   const SampleCosts& sample_costs) {
  return PlanAssembler(strategy, batch, cost, layout, waves, /*check_memory=*/false, sample_costs)
      .assemble();
}

double estimate_step_ms(const Batch& batch, const CostModel& cost, const Layout& layout,
                        const std::vector<WaveDraft>& waves, const SampleCosts& sample_costs) {
  const std::string strategy = "estimate";
  return PlanAssembler(strategy, batch, cost, layout, waves, /*check_memory=*/false, sample_costs)
      .assemble()
      .estimate.step_ms;
}

}  // namespace dhp::detail
