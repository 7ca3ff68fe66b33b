// One simulated LLM group of a wave, layer by layer, with exact ring-step synchronisation:
// every ring step of every layer waits for the KV block from its actual predecessor over the
// actual link (or, Ulysses, for the all-to-all of the whole group).
#include <algorithm>
#include <vector>

#include "simulation_run.hpp"

namespace dhp::detail {
namespace {

// Causal (query, key) pairs of query chunk q against key chunk k.
double chunk_pairs(std::int64_t tokens, int d, int q, int k) {
  if (k > q) return 0;
  const double lq = static_cast<double>(chunk_len(tokens, d, q));
  if (k == q) return lq * (lq + 1) / 2;
  return lq * static_cast<double>(chunk_len(tokens, d, k));
}

}  // namespace

// One group's LLM work, layer by layer, with exact ring-step synchronisation.
class SimulationRun::GroupRun {
 public:
  GroupRun(SimulationRun& run, const GroupPlan& group, const std::vector<std::int64_t>& split,
           int wave, int index, const std::vector<LayerTimes>& times, std::vector<double>& clock,
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
        run_.event(device, wave_, index_, EventKind::RingComm, ring_first_[static_cast<size_t>(m)],
                   ring_last_[static_cast<size_t>(m)]);
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

  SimulationRun& run_;
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

// Every group of the wave: forward (vocabulary projection, then each layer), backward
// (vocabulary projection, then each layer, its forward recomputed first under full recompute).
void SimulationRun::run_groups(WaveRun& wr) {
  const WavePlan& wave = plan_.waves[static_cast<size_t>(wr.w)];
  const bool full = cost_.model().training.recompute == Recompute::Full;
  const int layers = cost_.model().llm.layers;
  wr.backward_start.assign(static_cast<size_t>(plan_.llm.ranks), 0.0);
  for (size_t g = 0; g < wave.groups.size(); ++g) {
    const GroupPlan& group = wave.groups[g];
    GroupRun gr(*this, group, wr.split[g], wr.w, static_cast<int>(g), wr.times, wr.clock, wr.busy);
    gr.output_pass(1.0);
    for (int l = 0; l < layers; ++l) gr.layer(1.0, 1.0);
    gr.output_pass(2.0);
    for (int m = 0; m < group.degree(); ++m)
      wr.backward_start[static_cast<size_t>(group.ranks[static_cast<size_t>(m)])] =
          wr.clock[static_cast<size_t>(group.ranks[static_cast<size_t>(m)])];
    for (int l = 0; l < layers; ++l) {
      if (full) gr.layer(1.0, 1.0);  // recompute the layer's forward, ring included
      gr.layer(2.0, 2.0);            // backward: 2x compute, KV and dK/dV travel
    }
    gr.flush_events();
  }
}

}  // namespace dhp::detail
