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

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// Zigzag: 2d chunks with floor boundaries (uneven when 2d does not divide L); member i holds
// chunks i and 2d-1-i.
std::int64_t chunk_begin(std::int64_t tokens, int d, int c) { return c * tokens / (2 * d); }
std::int64_t chunk_len(std::int64_t tokens, int d, int c) {
  return chunk_begin(tokens, d, c + 1) - chunk_begin(tokens, d, c);
}

// Causal (query, key) pairs of query chunk q against key chunk k.
double chunk_pairs(std::int64_t tokens, int d, int q, int k) {
  if (k > q) return 0;
  const double lq = static_cast<double>(chunk_len(tokens, d, q));
  if (k == q) return lq * (lq + 1) / 2;
  return lq * static_cast<double>(chunk_len(tokens, d, k));
}

// What one LLM rank does in one wave.
struct RankWork {
  int group = -1;
  int member = -1;
  std::vector<std::int64_t> whole;  // sequences held whole
  double local_tokens = 0;          // whole + this member's zigzag chunks
  double activation_bytes = 0;
};

// One LLM rank's per-layer forward times (ms, one TP rank), ring excluded.
struct LayerTimes {
  double qkv = 0;        // q/k/v projection
  double attention = 0;  // sequences held whole
  double post = 0;       // output projection + MLP
  double output = 0;     // vocabulary projection, once per pass
  // Per layer and pass whatever the pass's compute: the TP collectives (half before the
  // attention, half after) and the launch overhead. The backward's extra all-gathers hide
  // under its weight-gradient GEMMs, so it exposes as many collectives as the forward.
  double tp_comm = 0;
  double overhead = 0;
};

class Run {
 public:
  Run(const CostModel& cost, const Plan& plan, const Batch& batch, bool record)
      : cost_(cost), plan_(plan), batch_(batch), record_(record) {
    const int world = cost.cluster().world_size();
    DHP_CHECK(plan.llm.ranks >= 1 && plan.llm.first_device >= 0 &&
                  plan.llm.first_device + plan.llm.num_devices() <= world,
              InvalidArgument,
              "simulator: LLM layout (first device {}, {} ranks x tp {}) does not fit {} devices",
              plan.llm.first_device, plan.llm.ranks, plan.llm.tp, world);
    DHP_CHECK(
        plan.encoder.ranks == 0 ||
            (plan.encoder.first_device >= 0 &&
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

  SimulationResult run() {
    // The plan's structure (every sample once, every encoder part once, parts in their
    // sample's wave) is validate()'s to check; what follows checks what it does not.
    validate(plan_, batch_);
    const int waves = static_cast<int>(plan_.waves.size());
    place_static_memory();
    DHP_CHECK(plan_.encoder_tasks.empty() || cost_.model().encoder.has_value(), InvalidArgument,
              "simulator: the plan has {} encoder tasks but model '{}' has no encoder",
              plan_.encoder_tasks.size(), cost_.model().name);
    tasks_by_wave_.assign(static_cast<size_t>(waves), {});
    // Every task's time, bytes and LLM tokens; the shards of one item form a ring
    // (plan.hpp), listed once in rings_ in task order.
    task_ms_.assign(plan_.encoder_tasks.size(), 0.0);
    task_bytes_.assign(plan_.encoder_tasks.size(), 0.0);
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
        task_bytes_[t] = cost_.encoder_activation_bytes(part);
        continue;
      }
      int& ring = ring_of_item[static_cast<size_t>(first_visual[task.sample] + task.visual)];
      if (ring < 0) {
        ring = static_cast<int>(rings_.size());
        rings_.emplace_back();
      }
      rings_[static_cast<size_t>(ring)].push_back(t);
      ring_of_[t] = ring;
      task_bytes_[t] = cost_.encoder_shard_activation_bytes(part, task.parts);
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
          item_of(first), RingSpan{first.parts, detail::encoder_ring_crosses_nodes(
                                                    cost_.cluster(), plan_.encoder, ranks)});
      for (size_t t : ring) task_ms_[t] = ms;
    }
    item_ready_.assign(plan_.encoder_tasks.size(), 0.0);
    // Each task's are written (llm_wave) and read (encoder_pass) in its own wave only.
    grad_ready_.assign(plan_.encoder_tasks.size(), 0.0);
    consumer_done_.assign(plan_.encoder_tasks.size(), 0.0);
    encoder_clock_.resize(static_cast<size_t>(plan_.encoder.ranks));
    encoder_activation_.assign(static_cast<size_t>(waves),
                               std::vector<double>(static_cast<size_t>(plan_.encoder.ranks), 0.0));

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

 private:
  // ---- devices ----
  template <typename F>
  void for_devices(const ModuleLayout& layout, int rank, F&& f) {
    for (int k = 0; k < layout.tp; ++k) f(layout.device_of(rank, k));
  }
  double ready_at(const ModuleLayout& layout, int rank) {
    double t = 0;
    for_devices(layout, rank,
                [&](int d) { t = std::max(t, device_free_[static_cast<size_t>(d)]); });
    return t;
  }
  void occupy(const ModuleLayout& layout, int rank, double until, double busy) {
    for_devices(layout, rank, [&](int d) {
      device_free_[static_cast<size_t>(d)] = std::max(device_free_[static_cast<size_t>(d)], until);
      busy_[static_cast<size_t>(d)] += busy;
    });
  }
  void event(int device, int wave, int group, EventKind kind, double start, double end,
             int task = -1) {
    if (record_ && end > start) timeline_.push_back({device, wave, group, kind, start, end, task});
  }
  void wait_event(int device, int wave, int group, double start, double end) {
    if (end - start >= wait_threshold_ms_) event(device, wave, group, EventKind::Wait, start, end);
  }

  void place_static_memory() {
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

  // The visual item a task encodes (all of it, or a part: task_tokens_ has the part's size).
  const VisualItem& item_of(const EncoderTask& task) const {
    return batch_.samples[static_cast<size_t>(task.sample)]
        .visuals[static_cast<size_t>(task.visual)];
  }

  // ---- encoder ----
  // Forward of every item of wave w on its encoder rank, in task order; the backward (the
  // rest of encoder_item_ms) once the item's gradients are back (run() says when: colocated
  // after the next wave's forward), in the order the items' consumers finish, as a runtime
  // that runs each item's backward as its gradients arrive; by task order among equals, so
  // every rank of a ring meets the rings in the same order. A ring's shards start together,
  // when the last of their ranks is free (and, in backward, has its gradients).
  void encoder_pass(int w, bool backward) {
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
          encoder_activation_[static_cast<size_t>(w)][static_cast<size_t>(rank)] += task_bytes_[m];
        }
      }
    }
  }

  // ---- LLM ----
  LayerTimes layer_times(const RankWork& work) const {
    LayerTimes t;
    const double tp = cost_.llm_tp();
    const double n = work.local_tokens;
    if (n <= 0) return t;
    const double tp_comm = cost_.llm_tp_comm_ms(n);
    t.qkv = cost_.gemm_ms(cost_.llm_layer_qkv_flops(n) / tp, n);
    t.post = cost_.gemm_ms(cost_.llm_layer_post_flops(n) / tp, n);
    t.tp_comm = tp_comm;
    t.overhead = cost_.layer_overhead_ms();
    for (std::int64_t len : work.whole) {
      const double l = static_cast<double>(len);
      t.attention += cost_.attention_ms(cost_.llm_attention_pair_flops(l * (l + 1) / 2) / tp, l);
    }
    t.output = cost_.gemm_ms(cost_.llm_output_layer_flops(n) / tp, n);
    return t;
  }

  void llm_wave(int w) {
    const WavePlan& wave = plan_.waves[static_cast<size_t>(w)];
    const int ranks = plan_.llm.ranks;
    const auto& llm_arch = cost_.model().llm;
    const double bytes_act = cost_.model().training.bytes_per_activation;
    std::vector<RankWork> work(static_cast<size_t>(ranks));
    std::vector<std::vector<std::int64_t>> split(wave.groups.size());

    // validate() (run()) has checked every rank, group, member and sample index used below.
    for (size_t g = 0; g < wave.groups.size(); ++g) {
      const GroupPlan& group = wave.groups[g];
      for (size_t m = 0; m < group.ranks.size(); ++m) {
        const int r = group.ranks[m];
        work[static_cast<size_t>(r)].group = static_cast<int>(g);
        work[static_cast<size_t>(r)].member = static_cast<int>(m);
      }
    }
    // Which LLM ranks receive each sample, and which share of its tokens.
    std::vector<std::pair<int, int>> holder(batch_.samples.size(), {-1, -1});  // (group, member|-1)
    for (const SequencePlan& seq : wave.sequences) {
      const GroupPlan& group = wave.groups[static_cast<size_t>(seq.group)];
      const std::int64_t tokens = batch_.samples[static_cast<size_t>(seq.sample)].llm_tokens();
      const int d = group.degree();
      if (seq.sharding == Sharding::Whole || d == 1) {
        const int member = seq.sharding == Sharding::Whole ? seq.member : 0;
        RankWork& rw = work[static_cast<size_t>(group.ranks[static_cast<size_t>(member)])];
        rw.whole.push_back(tokens);
        rw.local_tokens += static_cast<double>(tokens);
        rw.activation_bytes += cost_.llm_activation_bytes(tokens, 1);
        holder[static_cast<size_t>(seq.sample)] = {seq.group, member};
      } else {
        split[static_cast<size_t>(seq.group)].push_back(tokens);
        for (int m = 0; m < d; ++m) {
          RankWork& rw = work[static_cast<size_t>(group.ranks[static_cast<size_t>(m)])];
          rw.local_tokens +=
              static_cast<double>(chunk_len(tokens, d, m) + chunk_len(tokens, d, 2 * d - 1 - m));
          rw.activation_bytes += cost_.llm_activation_bytes(tokens, d);
        }
        holder[static_cast<size_t>(seq.sample)] = {seq.group, -1};
      }
    }

    // Boundary: encoder outputs of this wave delivered to the LLM ranks that hold their
    // samples. Transfers into one device share its link (NVLink inside the node, its NIC
    // across), as do the transfers out of one encoder device; gradients go the same way back.
    const auto& cluster = cost_.cluster();
    const double eff = cost_.coefficients().comm_efficiency;
    std::vector<double> arrival(static_cast<size_t>(ranks), 0.0);
    struct Transfer {
      size_t task;
      int rank;
      double bytes;
      bool cross;
      bool local;
    };
    std::vector<Transfer> transfers;
    std::vector<double> in_ms(static_cast<size_t>(ranks), 0.0);
    std::vector<double> out_ms(static_cast<size_t>(std::max(plan_.encoder.ranks, 1)), 0.0);
    for (size_t t : tasks_by_wave_[static_cast<size_t>(w)]) {
      const EncoderTask& task = plan_.encoder_tasks[t];
      const auto [g, member] = holder[static_cast<size_t>(task.sample)];
      const GroupPlan& group = wave.groups[static_cast<size_t>(g)];
      const double bytes = static_cast<double>(task_tokens_[t]) * llm_arch.hidden * bytes_act;
      const int src = plan_.encoder.device_of(task.rank);
      auto add = [&](int r, double share) {
        const int dst = plan_.llm.device_of(r);
        const bool local = src == dst;
        const bool cross = cluster.node_of(src) != cluster.node_of(dst);
        transfers.push_back({t, r, bytes * share, cross, local});
        if (local) return;
        const double ms =
            bytes * share /
            ((cross ? cluster.inter_node : cluster.intra_node).bandwidth_gbs * 1e6 * eff);
        in_ms[static_cast<size_t>(r)] += ms;
        out_ms[static_cast<size_t>(task.rank)] += ms;
      };
      if (member >= 0)
        add(group.ranks[static_cast<size_t>(member)], 1.0);
      else
        for (int r : group.ranks) add(r, 1.0 / group.degree());
    }
    auto transfer_ms = [&](const Transfer& tr) {
      if (tr.local) return 0.0;
      const LinkSpec& link = tr.cross ? cluster.inter_node : cluster.intra_node;
      return link.latency_us / 1e3 +
             std::max(in_ms[static_cast<size_t>(tr.rank)],
                      out_ms[static_cast<size_t>(plan_.encoder_tasks[tr.task].rank)]);
    };
    for (const Transfer& tr : transfers) {
      arrival[static_cast<size_t>(tr.rank)] =
          std::max(arrival[static_cast<size_t>(tr.rank)], item_ready_[tr.task] + transfer_ms(tr));
    }

    // Start of every rank: its devices free (colocated: after the encoder forward) and its
    // inputs arrived.
    std::vector<double> clock(static_cast<size_t>(ranks), 0.0);
    std::vector<double> busy(static_cast<size_t>(ranks), 0.0);
    std::vector<double> wave_start(static_cast<size_t>(ranks), 0.0);
    for (int r = 0; r < ranks; ++r) {
      const RankWork& rw = work[static_cast<size_t>(r)];
      if (rw.local_tokens <= 0) continue;
      const double free = ready_at(plan_.llm, r);
      const double start = std::max(free, arrival[static_cast<size_t>(r)]);
      const int device = plan_.llm.device_of(r);
      if (start > free) {
        event(device, w, rw.group, EventKind::Boundary, free, start);
        busy[static_cast<size_t>(r)] += std::min(start - free, in_ms[static_cast<size_t>(r)]);
      }
      clock[static_cast<size_t>(r)] = start + cost_.wave_overhead_ms();
      busy[static_cast<size_t>(r)] += cost_.wave_overhead_ms();
      wave_start[static_cast<size_t>(r)] = start;
    }

    std::vector<LayerTimes> times(static_cast<size_t>(ranks));
    for (int r = 0; r < ranks; ++r)
      times[static_cast<size_t>(r)] = layer_times(work[static_cast<size_t>(r)]);

    const bool full = cost_.model().training.recompute == Recompute::Full;
    const int layers = llm_arch.layers;
    std::vector<double> backward_start(static_cast<size_t>(ranks), 0.0);
    for (size_t g = 0; g < wave.groups.size(); ++g) {
      const GroupPlan& group = wave.groups[g];
      GroupRun gr(*this, group, split[g], w, static_cast<int>(g), times, clock, busy);
      gr.output_pass(1.0);
      for (int l = 0; l < layers; ++l) gr.layer(1.0, 1.0);
      gr.output_pass(2.0);
      for (int m = 0; m < group.degree(); ++m)
        backward_start[static_cast<size_t>(group.ranks[static_cast<size_t>(m)])] =
            clock[static_cast<size_t>(group.ranks[static_cast<size_t>(m)])];
      for (int l = 0; l < layers; ++l) {
        if (full) gr.layer(1.0, 1.0);  // recompute the layer's forward, ring included
        gr.layer(2.0, 2.0);            // backward: 2x compute, KV and dK/dV travel
      }
      gr.flush_events();
    }

    // Commit: devices busy until the rank's end; activation peak of this wave.
    for (int r = 0; r < ranks; ++r) {
      const RankWork& rw = work[static_cast<size_t>(r)];
      if (rw.local_tokens <= 0) continue;
      const double end = clock[static_cast<size_t>(r)];
      occupy(plan_.llm, r, end, busy[static_cast<size_t>(r)]);
      event(plan_.llm.device_of(r), w, rw.group, EventKind::Compute,
            wave_start[static_cast<size_t>(r)], end);
      llm_end_[static_cast<size_t>(r)] = std::max(llm_end_[static_cast<size_t>(r)], end);
      last_backward_ms_[static_cast<size_t>(r)] = end - backward_start[static_cast<size_t>(r)];
      for_devices(plan_.llm, r,
                  [&](int d) { wave_activation_[static_cast<size_t>(d)] += rw.activation_bytes; });
    }
    // Gradients of the encoder outputs go back once the holder's backward is done.
    for (const Transfer& tr : transfers) {
      grad_ready_[tr.task] =
          std::max(grad_ready_[tr.task], clock[static_cast<size_t>(tr.rank)] + transfer_ms(tr));
      consumer_done_[tr.task] =
          std::max(consumer_done_[tr.task], clock[static_cast<size_t>(tr.rank)]);
    }
    commit_wave_memory(w);
  }

  // Bytes encoder rank e holds for wave w's items, and the next wave's with `and_next`.
  double items_held(int w, int e, bool and_next) const {
    double held = encoder_activation_[static_cast<size_t>(w)][static_cast<size_t>(e)];
    if (and_next && static_cast<size_t>(w + 1) < encoder_activation_.size())
      held += encoder_activation_[static_cast<size_t>(w + 1)][static_cast<size_t>(e)];
    return held;
  }

  // Colocated, between waves w and w + 1 a device holds both waves' encoder items and no LLM
  // activations.
  void hold_two_waves(int w) {
    for (int e = 0; e < plan_.encoder.ranks; ++e) {
      const double held = items_held(w, e, true);
      for_devices(plan_.encoder, e, [&](int d) {
        act_peak_[static_cast<size_t>(d)] = std::max(act_peak_[static_cast<size_t>(d)], held);
      });
    }
  }

  // Encoder activations live from the forward to the backward of their wave; disjoint
  // encoders run one wave ahead, so they hold two waves at once.
  void commit_wave_memory(int w) {
    const bool disjoint = plan_.placement == EncoderPlacement::Disjoint;
    for (int e = 0; e < plan_.encoder.ranks; ++e) {
      const double held = items_held(w, e, disjoint);
      for_devices(plan_.encoder, e,
                  [&](int d) { wave_activation_[static_cast<size_t>(d)] += held; });
    }
    for (size_t d = 0; d < act_peak_.size(); ++d) {
      act_peak_[d] = std::max(act_peak_[d], wave_activation_[d]);
      wave_activation_[d] = 0;
    }
  }

  // One group's LLM work, layer by layer, with exact ring-step synchronisation.
  class GroupRun {
   public:
    GroupRun(Run& run, const GroupPlan& group, const std::vector<std::int64_t>& split, int wave,
             int index, const std::vector<LayerTimes>& times, std::vector<double>& clock,
             std::vector<double>& busy)
        : run_(run),
          group_(group),
          wave_(wave),
          index_(index),
          times_(times),
          clock_(clock),
          busy_(busy),
          d_(group.degree()),
          ring_(!split.empty() && d_ > 1) {
      if (!ring_) return;
      const CostModel& cost = run.cost_;
      const double tp = cost.llm_tp();
      ulysses_ = group.attention != CpAttention::Ring;
      step_ms_.assign(static_cast<size_t>(d_ * d_), 0.0);
      block_bytes_.assign(static_cast<size_t>(d_), 0.0);
      cross_.assign(static_cast<size_t>(d_), false);
      const auto& cluster = cost.cluster();
      for (int i = 0; i < d_; ++i) {
        const int pred = (i + d_ - 1) % d_;
        cross_[static_cast<size_t>(i)] =
            cluster.node_of(run.plan_.llm.device_of(group.ranks[static_cast<size_t>(pred)])) !=
            cluster.node_of(run.plan_.llm.device_of(group.ranks[static_cast<size_t>(i)]));
        any_cross_ = any_cross_ || cross_[static_cast<size_t>(i)];
      }
      for (std::int64_t tokens : split) {
        for (int i = 0; i < d_; ++i) {
          const int qa = i, qb = 2 * d_ - 1 - i;
          const double local =
              static_cast<double>(chunk_len(tokens, d_, qa) + chunk_len(tokens, d_, qb));
          block_bytes_[static_cast<size_t>(i)] += cost.kv_block_bytes(local);
          for (int s = 0; s < d_; ++s) {
            const int j = (i - s + d_) % d_;  // whose KV block member i holds at step s
            const int ka = j, kb = 2 * d_ - 1 - j;
            const double pairs = chunk_pairs(tokens, d_, qa, ka) + chunk_pairs(tokens, d_, qa, kb) +
                                 chunk_pairs(tokens, d_, qb, ka) + chunk_pairs(tokens, d_, qb, kb);
            if (pairs > 0)
              step_ms_[static_cast<size_t>(i * d_ + s)] +=
                  cost.attention_ms(cost.llm_attention_pair_flops(pairs) / tp, local);
          }
        }
        // Ulysses: each member runs whole sequences on heads/d after an all-to-all.
        const double l = static_cast<double>(tokens);
        ulysses_attention_ms_ +=
            cost.attention_ms(cost.llm_attention_pair_flops(l * (l + 1) / 2) / (tp * d_), l);
        ulysses_bytes_ += l / d_ *
                          (2.0 * cost.model().llm.hidden +
                           2.0 * cost.model().llm.kv_heads * cost.model().llm.head_dim()) *
                          cost.model().training.bytes_per_activation / tp;
      }
      recv_.assign(static_cast<size_t>(d_), 0.0);
      start_.assign(static_cast<size_t>(d_), 0.0);
      link_free_.assign(static_cast<size_t>(d_), 0.0);
      ring_first_.assign(static_cast<size_t>(d_), -1.0);
      ring_last_.assign(static_cast<size_t>(d_), 0.0);
      wait_start_.assign(static_cast<size_t>(d_), -1.0);
      wait_end_.assign(static_cast<size_t>(d_), 0.0);
    }

    // The vocabulary projection (and loss) of a pass: scale 1 forward, 2 backward.
    void output_pass(double scale) {
      for (int m = 0; m < d_; ++m) compute(m, times_[rank_index(m)].output * scale);
    }

    // One layer of one pass: compute scaled by `scale`, ring bytes by `bytes_scale`.
    void layer(double scale, double bytes_scale) {
      for (int m = 0; m < d_; ++m) {
        const LayerTimes& t = times_[rank_index(m)];
        compute(m, t.qkv * scale + t.tp_comm / 2);
      }
      if (ring_) {
        if (ulysses_)
          ulysses(scale, bytes_scale);
        else
          ring(scale, bytes_scale);
      }
      for (int m = 0; m < d_; ++m) {
        const LayerTimes& t = times_[rank_index(m)];
        compute(m, (t.attention + t.post) * scale + t.tp_comm / 2 + t.overhead);
      }
    }

    void flush_events() {
      if (!ring_) return;
      for (int m = 0; m < d_; ++m) {
        const int device = run_.plan_.llm.device_of(group_.ranks[static_cast<size_t>(m)]);
        close_wait(m);
        if (ring_first_[static_cast<size_t>(m)] >= 0)
          run_.event(device, wave_, index_, EventKind::RingComm,
                     ring_first_[static_cast<size_t>(m)], ring_last_[static_cast<size_t>(m)]);
      }
    }

   private:
    size_t rank_index(int m) const {
      return static_cast<size_t>(group_.ranks[static_cast<size_t>(m)]);
    }
    double& clock(int m) { return clock_[rank_index(m)]; }
    void compute(int m, double ms) {
      clock(m) += ms;
      busy_[rank_index(m)] += ms;
    }
    // Merge a member's consecutive ring waits into one Wait span (one layer apart at most).
    void note_wait(int m, double start, double end) {
      const size_t i = static_cast<size_t>(m);
      if (wait_start_[i] >= 0 && start - wait_end_[i] > merge_gap_ms()) close_wait(m);
      if (wait_start_[i] < 0) wait_start_[i] = start;
      wait_end_[i] = end;
    }
    void close_wait(int m) {
      const size_t i = static_cast<size_t>(m);
      if (wait_start_[i] < 0) return;
      run_.wait_event(run_.plan_.llm.device_of(group_.ranks[i]), wave_, index_, wait_start_[i],
                      wait_end_[i]);
      wait_start_[i] = -1;
    }
    double merge_gap_ms() const { return run_.wait_threshold_ms_; }

    void ring(double scale, double bytes_scale) {
      const CostModel& cost = run_.cost_;
      const double overhead = cost.ring_step_overhead_ms();
      const double hidden_fraction = cost.coefficients().overlap_efficiency;
      // Block for step s + 1 into member i: the one that started at member i-s-1.
      auto hop_ms = [&](int i, int s) {
        const int origin = ((i - s - 1) % d_ + d_) % d_;
        return cost.p2p_ms(block_bytes_[static_cast<size_t>(origin)] * bytes_scale,
                           cross_[static_cast<size_t>(i)]);
      };
      std::fill(link_free_.begin(), link_free_.end(), 0.0);
      for (int s = 0; s < d_; ++s) {
        for (int i = 0; i < d_; ++i) {
          double& now = clock(i);
          if (ring_first_[static_cast<size_t>(i)] < 0) ring_first_[static_cast<size_t>(i)] = now;
          // Step 0 uses the member's own KV block, ready after its q/k/v projection.
          const double got = s == 0 ? now : recv_[static_cast<size_t>(i)];
          if (got > now) {
            // Waiting on a block in flight is exposed communication; waiting longer than the
            // transfer itself means the predecessor was late: idle.
            busy_[rank_index(i)] += std::min(got - now, hop_ms(i, s - 1));
            note_wait(i, now, got);
            now = got;
          }
          start_[static_cast<size_t>(i)] = now;
          double step = step_ms_[static_cast<size_t>(i * d_ + s)] * scale;
          // The next block streams in during this step and slows it a little.
          if (s + 1 < d_) step += (1.0 - hidden_fraction) * std::min(hop_ms(i, s), step);
          compute(i, step + overhead);
          ring_last_[static_cast<size_t>(i)] = now;
        }
        if (s + 1 == d_) break;
        // As each member starts step s it posts the block it holds to its successor; a
        // member's sends leave one after the other.
        for (int i = 0; i < d_; ++i) {
          const size_t pred = static_cast<size_t>((i + d_ - 1) % d_);
          const double sent = std::max(start_[pred], link_free_[pred]);
          recv_[static_cast<size_t>(i)] = sent + hop_ms(i, s);
          link_free_[pred] = recv_[static_cast<size_t>(i)];
        }
      }
    }

    // Ulysses: two all-to-alls (q/k/v in, output back) per layer and pass; a collective, so
    // every member waits for the slowest.
    void ulysses(double scale, double bytes_scale) {
      const CostModel& cost = run_.cost_;
      const double a2a = 2.0 * cost.alltoall_ms(ulysses_bytes_ * bytes_scale, d_, any_cross_);
      double start = 0;
      for (int i = 0; i < d_; ++i) start = std::max(start, clock(i));
      for (int i = 0; i < d_; ++i) {
        double& now = clock(i);
        if (ring_first_[static_cast<size_t>(i)] < 0) ring_first_[static_cast<size_t>(i)] = now;
        if (start > now) note_wait(i, now, start);
        now = start;
        compute(i, a2a + ulysses_attention_ms_ * scale);
        ring_last_[static_cast<size_t>(i)] = now;
      }
    }

    Run& run_;
    const GroupPlan& group_;
    int wave_;
    int index_;
    const std::vector<LayerTimes>& times_;
    std::vector<double>& clock_;
    std::vector<double>& busy_;
    int d_;
    bool ring_;
    bool ulysses_ = false;
    bool any_cross_ = false;
    std::vector<double> step_ms_;      // [member * d + step], forward
    std::vector<double> block_bytes_;  // KV bytes of each member's block (one TP shard)
    std::vector<bool> cross_;          // hop into member i crosses nodes
    double ulysses_attention_ms_ = 0;
    double ulysses_bytes_ = 0;
    std::vector<double> recv_, start_, link_free_, ring_first_, ring_last_, wait_start_, wait_end_;
  };

  SimulationResult finish() {
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
    std::sort(timeline_.begin(), timeline_.end(),
              [](const TimelineEvent& a, const TimelineEvent& b) {
                return a.device != b.device ? a.device < b.device : a.start_ms < b.start_ms;
              });
    result.timeline = merge_waits(std::move(timeline_), result.step_ms);
    return result;
  }

  // Keeps the timeline small: a rank's ring waits closer than 0.1% of the step to each other
  // become one span, and waits shorter than 0.05% of the step are dropped.
  static std::vector<TimelineEvent> merge_waits(std::vector<TimelineEvent> events, double step_ms) {
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

  const CostModel& cost_;
  const Plan& plan_;
  const Batch& batch_;
  bool record_;
  double wait_threshold_ms_ = 0.01;
  std::vector<double> device_free_, busy_, act_peak_, static_;
  std::vector<double> wave_activation_;  // per device, bytes held in the current wave
  std::vector<bool> used_;
  std::vector<double> llm_end_, enc_end_, last_backward_ms_;
  std::vector<std::vector<size_t>> tasks_by_wave_;
  std::vector<double> item_ready_, grad_ready_;
  std::vector<double> consumer_done_;  // per encoder task: when its consumers' LLM ended
  std::vector<size_t> order_;          // a wave's tasks in the order a backward pass runs them
  std::vector<double> encoder_clock_;  // per encoder rank: encoder_pass's clock
  std::vector<double> task_ms_, task_bytes_;  // per encoder task: fwd + bwd time, bytes
  std::vector<std::int64_t> task_tokens_;     // per encoder task: its part's LLM tokens
  std::vector<int> ring_of_;                  // per encoder task: index into rings_, -1: none
  std::vector<std::vector<size_t>> rings_;    // each ring's tasks, in task order
  std::vector<std::vector<double>> encoder_activation_;  // [wave][encoder rank] bytes
  std::vector<TimelineEvent> timeline_;
};

}  // namespace

Simulator::Simulator(CostModel cost_model) : cost_(std::move(cost_model)) {}

SimulationResult Simulator::run(const Plan& plan, const Batch& batch, bool record_timeline) const {
  // A static layout may fix other TP degrees than the planner's default: the plan's rule.
  const int encoder_tp = plan.encoder.ranks > 0 ? plan.encoder.tp : cost_.encoder_tp();
  std::optional<CostModel> at_plan;
  if (plan.llm.tp != cost_.llm_tp() || encoder_tp != cost_.encoder_tp())
    at_plan.emplace(cost_.cluster(), cost_.model(), plan.llm.tp, encoder_tp, cost_.coefficients());
  return Run(at_plan ? *at_plan : cost_, plan, batch, record_timeline).run();
}

}  // namespace dhp
