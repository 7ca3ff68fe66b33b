// One execution of a plan on the modelled cluster (Simulator::run): the devices' clocks and
// memory, the encoder's passes (simulated_encoder.cpp), each LLM wave
// (simulated_llm_wave.cpp) with its groups layer by layer and ring step by ring step
// (simulated_ring_group.cpp), then the gradient sync and the step (simulator.cpp). Internal
// to the planner library.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "dhp/batch.hpp"
#include "dhp/cost_model.hpp"
#include "dhp/plan.hpp"
#include "dhp/simulator.hpp"

namespace dhp::detail {

// Zigzag: 2d chunks with floor boundaries (uneven when 2d does not divide L); member i holds
// chunks i and 2d-1-i.
inline std::int64_t chunk_begin(std::int64_t tokens, int d, int c) { return c * tokens / (2 * d); }
inline std::int64_t chunk_len(std::int64_t tokens, int d, int c) {
  return chunk_begin(tokens, d, c + 1) - chunk_begin(tokens, d, c);
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

class SimulationRun {
 public:
  SimulationRun(const CostModel& cost, const Plan& plan, const Batch& batch, bool record);
  SimulationResult run();

 private:
  class GroupRun;  // simulated_ring_group.cpp

  // An encoder output moved to an LLM rank that consumes it (a split sequence: a share to
  // every member), and its gradient back.
  struct Transfer {
    std::size_t task;
    int rank;
    double bytes;
    bool cross;
    bool local;
  };
  // One LLM wave while it runs (llm_wave's phases).
  struct WaveRun {
    int w = 0;
    std::vector<RankWork> work;                    // per LLM rank
    std::vector<std::vector<std::int64_t>> split;  // per group: its split sequences
    std::vector<std::pair<int, int>> holder;       // per sample: (group, member | -1)
    std::vector<Transfer> transfers;
    std::vector<double> in_ms, out_ms;  // per LLM rank / encoder rank: link time of transfers
    std::vector<double> arrival;        // per LLM rank: its last input delivered
    std::vector<double> clock, busy, wave_start, backward_start;  // per LLM rank
    std::vector<LayerTimes> times;                                // per LLM rank
  };

  // ---- devices ----
  template <typename F>
  void for_devices(const ModuleLayout& layout, int rank, F&& f) {
    for (int k = 0; k < layout.tp; ++k) f(layout.device_of(rank, k));
  }
  double ready_at(const ModuleLayout& layout, int rank) {
    double t = 0;
    for_devices(layout, rank,
                [&](int d) { t = std::max(t, device_free_[static_cast<std::size_t>(d)]); });
    return t;
  }
  void occupy(const ModuleLayout& layout, int rank, double until, double busy) {
    for_devices(layout, rank, [&](int d) {
      const std::size_t i = static_cast<std::size_t>(d);
      device_free_[i] = std::max(device_free_[i], until);
      busy_[i] += busy;
    });
  }
  void event(int device, int wave, int group, EventKind kind, double start, double end,
             int task = -1) {
    if (record_ && end > start) timeline_.push_back({device, wave, group, kind, start, end, task});
  }
  void wait_event(int device, int wave, int group, double start, double end) {
    if (end - start >= wait_threshold_ms_) event(device, wave, group, EventKind::Wait, start, end);
  }
  void place_static_memory();

  // ---- encoder (simulated_encoder.cpp) ----
  // The visual item a task encodes (all of it, or a part: task_tokens_ has the part's size).
  const VisualItem& item_of(const EncoderTask& task) const {
    return batch_.samples[static_cast<std::size_t>(task.sample)]
        .visuals[static_cast<std::size_t>(task.visual)];
  }
  void price_encoder_tasks();
  void encoder_pass(int w, bool backward);
  EncoderBytes items_held(int w, int e, bool and_next) const;
  void hold_two_waves(int w);
  void commit_wave_memory(int w);

  // ---- LLM (simulated_llm_wave.cpp, simulated_ring_group.cpp) ----
  LayerTimes layer_times(const RankWork& work) const;
  void llm_wave(int w);
  void gather_rank_work(WaveRun& wr) const;
  void deliver_encoder_outputs(WaveRun& wr) const;
  double transfer_ms(const WaveRun& wr, const Transfer& tr) const;
  void start_ranks(WaveRun& wr);
  void run_groups(WaveRun& wr);
  void commit_llm_wave(WaveRun& wr);

  // ---- the step (simulator.cpp) ----
  SimulationResult finish();
  static std::vector<TimelineEvent> merge_waits(std::vector<TimelineEvent> events, double step_ms);

  const CostModel& cost_;
  const Plan& plan_;
  const Batch& batch_;
  bool record_;
  double wait_threshold_ms_ = 0.01;
  std::vector<double> device_free_, busy_, act_peak_, static_;
  std::vector<double> wave_activation_;  // per device, bytes held in the current wave
  std::vector<bool> used_;
  std::vector<double> llm_end_, enc_end_, last_backward_ms_;
  std::vector<std::vector<std::size_t>> tasks_by_wave_;
  std::vector<double> item_ready_, grad_ready_;
  std::vector<double> consumer_done_;      // per encoder task: when its consumers' LLM ended
  std::vector<std::size_t> order_;         // a wave's tasks in the order a backward pass runs them
  std::vector<double> encoder_clock_;      // per encoder rank: encoder_pass's clock
  std::vector<double> task_ms_;            // per encoder task: fwd + bwd time
  std::vector<EncoderBytes> task_bytes_;   // per encoder task: its activations
  std::vector<std::int64_t> task_tokens_;  // per encoder task: its part's LLM tokens
  std::vector<int> ring_of_;               // per encoder task: index into rings_, -1: none
  std::vector<std::vector<std::size_t>> rings_;           // each ring's tasks, in task order
  std::vector<std::vector<EncoderBytes>> encoder_bytes_;  // [wave][encoder rank] items' bytes
  std::vector<TimelineEvent> timeline_;
};

}  // namespace dhp::detail
