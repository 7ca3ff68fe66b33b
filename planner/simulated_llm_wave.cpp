// One simulated LLM wave: what each rank holds, the encoder outputs delivered to it over the
// boundary, when each rank starts, its groups layer by layer (simulated_ring_group.cpp), and
// what the wave leaves behind (devices busy, activation peak, gradients sent back).
#include <algorithm>
#include <utility>

#include "simulation_run.hpp"

namespace dhp::detail {

LayerTimes SimulationRun::layer_times(const RankWork& work) const {
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

void SimulationRun::llm_wave(int w) {
  WaveRun wr;
  wr.w = w;
  gather_rank_work(wr);
  deliver_encoder_outputs(wr);
  start_ranks(wr);
  run_groups(wr);
  commit_llm_wave(wr);
  commit_wave_memory(w);
}

// Each rank's group and member, the sequences it holds whole and its share of the split ones;
// which LLM ranks receive each sample, and which share of its tokens.
void SimulationRun::gather_rank_work(WaveRun& wr) const {
  const WavePlan& wave = plan_.waves[static_cast<size_t>(wr.w)];
  wr.work.assign(static_cast<size_t>(plan_.llm.ranks), RankWork{});
  wr.split.assign(wave.groups.size(), {});
  // validate() (run()) has checked every rank, group, member and sample index used below.
  for (size_t g = 0; g < wave.groups.size(); ++g) {
    const GroupPlan& group = wave.groups[g];
    for (size_t m = 0; m < group.ranks.size(); ++m) {
      const int r = group.ranks[m];
      wr.work[static_cast<size_t>(r)].group = static_cast<int>(g);
      wr.work[static_cast<size_t>(r)].member = static_cast<int>(m);
    }
  }
  wr.holder.assign(batch_.samples.size(), {-1, -1});
  for (const SequencePlan& seq : wave.sequences) {
    const GroupPlan& group = wave.groups[static_cast<size_t>(seq.group)];
    const std::int64_t tokens = batch_.samples[static_cast<size_t>(seq.sample)].llm_tokens();
    const int d = group.degree();
    if (seq.sharding == Sharding::Whole || d == 1) {
      const int member = seq.sharding == Sharding::Whole ? seq.member : 0;
      RankWork& rw = wr.work[static_cast<size_t>(group.ranks[static_cast<size_t>(member)])];
      rw.whole.push_back(tokens);
      rw.local_tokens += static_cast<double>(tokens);
      rw.activation_bytes += cost_.llm_activation_bytes(tokens, 1);
      wr.holder[static_cast<size_t>(seq.sample)] = {seq.group, member};
    } else {
      wr.split[static_cast<size_t>(seq.group)].push_back(tokens);
      for (int m = 0; m < d; ++m) {
        RankWork& rw = wr.work[static_cast<size_t>(group.ranks[static_cast<size_t>(m)])];
        rw.local_tokens +=
            static_cast<double>(chunk_len(tokens, d, m) + chunk_len(tokens, d, 2 * d - 1 - m));
        rw.activation_bytes += cost_.llm_activation_bytes(tokens, d);
      }
      wr.holder[static_cast<size_t>(seq.sample)] = {seq.group, -1};
    }
  }
}

// Boundary: encoder outputs of this wave delivered to the LLM ranks that hold their samples.
// Transfers into one device share its link (NVLink inside the node, its NIC across), as do
// the transfers out of one encoder device; gradients go the same way back.
void SimulationRun::deliver_encoder_outputs(WaveRun& wr) const {
  const WavePlan& wave = plan_.waves[static_cast<size_t>(wr.w)];
  const int ranks = plan_.llm.ranks;
  const auto& llm_arch = cost_.model().llm;
  const double bytes_act = cost_.model().training.bytes_per_activation;
  const auto& cluster = cost_.cluster();
  const double eff = cost_.coefficients().comm_efficiency;
  wr.arrival.assign(static_cast<size_t>(ranks), 0.0);
  wr.in_ms.assign(static_cast<size_t>(ranks), 0.0);
  wr.out_ms.assign(static_cast<size_t>(std::max(plan_.encoder.ranks, 1)), 0.0);
  for (size_t t : tasks_by_wave_[static_cast<size_t>(wr.w)]) {
    const EncoderTask& task = plan_.encoder_tasks[t];
    const auto [g, member] = wr.holder[static_cast<size_t>(task.sample)];
    const GroupPlan& group = wave.groups[static_cast<size_t>(g)];
    const double bytes = static_cast<double>(task_tokens_[t]) * llm_arch.hidden * bytes_act;
    const int src = plan_.encoder.device_of(task.rank);
    auto add = [&](int r, double share) {
      const int dst = plan_.llm.device_of(r);
      const bool local = src == dst;
      const bool cross = cluster.node_of(src) != cluster.node_of(dst);
      wr.transfers.push_back({t, r, bytes * share, cross, local});
      if (local) return;
      const double ms =
          bytes * share /
          ((cross ? cluster.inter_node : cluster.intra_node).bandwidth_gbs * 1e6 * eff);
      wr.in_ms[static_cast<size_t>(r)] += ms;
      wr.out_ms[static_cast<size_t>(task.rank)] += ms;
    };
    if (member >= 0)
      add(group.ranks[static_cast<size_t>(member)], 1.0);
    else
      for (int r : group.ranks) add(r, 1.0 / group.degree());
  }
  for (const Transfer& tr : wr.transfers) {
    wr.arrival[static_cast<size_t>(tr.rank)] = std::max(wr.arrival[static_cast<size_t>(tr.rank)],
                                                        item_ready_[tr.task] + transfer_ms(wr, tr));
  }
}

double SimulationRun::transfer_ms(const WaveRun& wr, const Transfer& tr) const {
  if (tr.local) return 0.0;
  const auto& cluster = cost_.cluster();
  const LinkSpec& link = tr.cross ? cluster.inter_node : cluster.intra_node;
  return link.latency_us / 1e3 +
         std::max(wr.in_ms[static_cast<size_t>(tr.rank)],
                  wr.out_ms[static_cast<size_t>(plan_.encoder_tasks[tr.task].rank)]);
}

// Start of every rank: its devices free (colocated: after the encoder forward) and its inputs
// arrived.
void SimulationRun::start_ranks(WaveRun& wr) {
  const int ranks = plan_.llm.ranks;
  wr.clock.assign(static_cast<size_t>(ranks), 0.0);
  wr.busy.assign(static_cast<size_t>(ranks), 0.0);
  wr.wave_start.assign(static_cast<size_t>(ranks), 0.0);
  for (int r = 0; r < ranks; ++r) {
    const RankWork& rw = wr.work[static_cast<size_t>(r)];
    if (rw.local_tokens <= 0) continue;
    const double free = ready_at(plan_.llm, r);
    const double start = std::max(free, wr.arrival[static_cast<size_t>(r)]);
    const int device = plan_.llm.device_of(r);
    if (start > free) {
      event(device, wr.w, rw.group, EventKind::Boundary, free, start);
      wr.busy[static_cast<size_t>(r)] += std::min(start - free, wr.in_ms[static_cast<size_t>(r)]);
    }
    wr.clock[static_cast<size_t>(r)] = start + cost_.wave_overhead_ms();
    wr.busy[static_cast<size_t>(r)] += cost_.wave_overhead_ms();
    wr.wave_start[static_cast<size_t>(r)] = start;
  }
  wr.times.resize(static_cast<size_t>(ranks));
  for (int r = 0; r < ranks; ++r)
    wr.times[static_cast<size_t>(r)] = layer_times(wr.work[static_cast<size_t>(r)]);
}

// Commit: devices busy until the rank's end; activation peak of this wave; the gradients of
// the encoder outputs go back once the holder's backward is done.
void SimulationRun::commit_llm_wave(WaveRun& wr) {
  const int ranks = plan_.llm.ranks;
  for (int r = 0; r < ranks; ++r) {
    const RankWork& rw = wr.work[static_cast<size_t>(r)];
    if (rw.local_tokens <= 0) continue;
    const double end = wr.clock[static_cast<size_t>(r)];
    occupy(plan_.llm, r, end, wr.busy[static_cast<size_t>(r)]);
    event(plan_.llm.device_of(r), wr.w, rw.group, EventKind::Compute,
          wr.wave_start[static_cast<size_t>(r)], end);
    llm_end_[static_cast<size_t>(r)] = std::max(llm_end_[static_cast<size_t>(r)], end);
    last_backward_ms_[static_cast<size_t>(r)] = end - wr.backward_start[static_cast<size_t>(r)];
    for_devices(plan_.llm, r,
                [&](int d) { wave_activation_[static_cast<size_t>(d)] += rw.activation_bytes; });
  }
  for (const Transfer& tr : wr.transfers) {
    grad_ready_[tr.task] = std::max(grad_ready_[tr.task],
                                    wr.clock[static_cast<size_t>(tr.rank)] + transfer_ms(wr, tr));
    consumer_done_[tr.task] =
        std::max(consumer_done_[tr.task], wr.clock[static_cast<size_t>(tr.rank)]);
  }
}

}  // namespace dhp::detail
