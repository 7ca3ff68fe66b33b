// Drafts -> Plan (build_plan, estimate_plan): the concrete ranks of every group, the encoder
// work of every wave, the estimate on the devices' clocks and the memory check. One
// PlanAssembler per candidate; its phases run wave by wave. Internal to the planner:
// plan_assembly.cpp holds the LLM side, the schedule and the step, encoder_assignment.cpp
// which encoder rank encodes what.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "internal.hpp"
#include "rank_heap.hpp"

namespace dhp::detail {

// One encoder task of a wave before it has a rank: a visual item, or a part of it.
struct EncoderItem {
  int sample, visual, group;
  int member;  // the group member that holds the sample whole; -1 when it is split
  double ms;
  EncoderBytes bytes;
  std::int64_t llm_tokens;
  int parts = 1;
  bool shards = false;  // parts of one span: a ring over `parts` encoder ranks, placed together
  int part = 0;         // which part (span ranges: one item per part; shards: one item for all)
};

class PlanAssembler {
 public:
  // `check_memory`: throw when over capacity (build_plan); otherwise the plan reports an
  // infinite step time.
  PlanAssembler(const std::string& strategy, const Batch& batch, const CostModel& cost,
                const Layout& layout, const std::vector<WaveDraft>& waves, bool check_memory,
                const SampleCosts& sample_costs);
  Plan assemble() &&;

 private:
  // The previous wave's encoder backward, run after this wave's forward (colocated): one
  // entry per item (a ring's shards together) in the order its consumers end.
  struct PendingBackward {
    std::size_t first, end;  // its tasks: one, or a ring's consecutive shards
    double ready;            // its gradients are back
    double ms;               // each task's backward
  };

  // --- phases, in the order assemble() runs them ---
  void index_samples();
  void collect_wave_items();
  void place_llm_wave(std::size_t w);
  void hold_llm_memory();
  // encoder_assignment.cpp
  void assign_encoder_items(std::size_t w);
  void cut_long_items(std::size_t w);
  void order_encoder_ranks(std::size_t w);
  void assign_ring(const EncoderItem& item, std::size_t i, std::size_t w);
  void assign_one(const EncoderItem& item, std::size_t i, std::size_t w);
  void assign(const EncoderItem& item, int e, double wait, double ms, EncoderBytes bytes,
              std::int64_t tokens, int part, std::size_t w);
  void record_boundary(std::size_t w);
  // plan_assembly.cpp, on the devices' clocks
  void run_encoder_forward(std::size_t w);
  void run_llm_groups(std::size_t w);
  void queue_encoder_backward(std::size_t w);
  void run_pending_backward();
  void check_wave_memory(std::size_t w);
  void finish_estimate();

  // --- small helpers ---
  double devices_free(const ModuleLayout& m, int rank) const {
    double t = 0;
    for (int i = 0; i < m.tp; ++i) t = std::max(t, device_free_[m.device_of(rank, i)]);
    return t;
  }
  void occupy(const ModuleLayout& m, int rank, double until) {
    for (int i = 0; i < m.tp; ++i) device_free_[m.device_of(rank, i)] = until;
  }
  // Bytes on encoder rank e's devices besides the wave's own items while its passes run:
  // the previous wave's items, still waiting for their backward (colocated, with the LLM's
  // static memory and no activations then; disjoint, the encoder runs a wave ahead).
  double held_beside_forward(int e) const {
    return enc_static_ + pending_held_[e] + (colocated_rank_[e] >= 0 ? llm_static_ : 0.0);
  }
  // Whether encoder rank e takes one more item: its held bytes beside the wave's LLM work, and
  // beside the previous wave's items with the largest working set of either wave while the
  // encoder passes run.
  bool fits(int e, const EncoderBytes& bytes) const {
    const double held = enc_held_[e] + bytes.held;
    return held <= room_llm_[e] &&
           held + std::max({enc_working_[e], pending_working_[e], bytes.working}) <= room_pass_[e];
  }
  bool on_group_devices(int e, int group) const {
    return colocated_rank_[e] >= 0 && rank_group_[colocated_rank_[e]] == group;
  }
  double key(int e) const { return enc_start_[e] + enc_load_[e]; }
  // A rank without room for the smallest item still to come can take nothing more in this
  // wave: it is noted to leave the order, so that later walks do not pass it again.
  bool no_room(int e, const EncoderBytes& bytes, std::size_t i) {
    if (fits(e, bytes)) return false;
    const double least = enc_held_[e] + min_held_from_[i];
    if (least > room_llm_[e] ||
        least + std::max(enc_working_[e], pending_working_[e]) > room_pass_[e])
      full_.push_back(e);
    return true;
  }
  void drop_full() {
    for (int e : full_) by_load_.remove(e);
    full_.clear();
  }
  // What encoder rank e can still take: its room beside the LLM work and while the encoder
  // passes run, whichever is less.
  double free_room(int e) const {
    return std::min(room_llm_[e] - enc_held_[e],
                    room_pass_[e] - enc_held_[e] - std::max(enc_working_[e], pending_working_[e]));
  }

  // --- inputs ---
  const std::string& strategy_;
  const Batch& batch_;
  const CostModel& cost_;
  const Layout& layout_;
  const std::vector<WaveDraft>& waves_;
  const bool check_memory_;
  const SampleCosts& sc_;

  // --- constants of the layout ---
  const int R_;    // LLM ranks
  const int rpn_;  // LLM ranks per node
  const int E_;    // encoder ranks
  const int world_;
  const double capacity_;
  const double llm_static_;
  const double enc_static_;
  const bool colocated_;
  // The devices' clocks (colocated encoder, or no encoder work at all): waves follow each
  // other on the devices without a barrier (run_llm_groups).
  const bool chained_;
  const double backward_share_;  // of a compute pass: what runs in backward

  Plan plan_;

  // --- per LLM rank ---
  std::vector<double> peak_bytes_;
  std::vector<double> rank_ms_;             // this wave's LLM time
  std::vector<double> rank_bytes_;          // this wave's activations
  std::vector<int> rank_group_;             // this wave's group, -1 when idle
  std::vector<double> rank_end_;            // when each LLM rank's last group ended
  std::vector<double> rank_last_backward_;  // that group's backward (hides the grad sync)
  std::vector<double> rank_inputs_;         // this wave: when its last input item is encoded
  std::vector<char> rank_remote_;           // this wave: some input comes from other devices

  // --- per encoder rank ---
  std::vector<int> colocated_rank_;  // the LLM rank on whose devices it starts (-1: none)
  std::vector<double> room_llm_;     // bytes its wave's items may hold beside the wave's LLM
  std::vector<double> room_pass_;    // bytes while its passes run (room_llm_'s, and working)
  std::vector<double> encoder_clock_;
  std::vector<double> pending_ms_;       // the previous wave's backward it owes
  std::vector<double> pending_held_;     // the held bytes of the previous wave's items
  std::vector<double> pending_working_;  // their largest working set
  std::vector<double> enc_load_;
  std::vector<double> enc_start_;    // when it can start, in its wave's LPT
  std::vector<double> enc_held_;     // this wave's items' held bytes
  std::vector<double> enc_working_;  // their largest working set
  std::vector<std::int64_t> enc_sent_;
  double encoder_end_ = 0;
  std::vector<PendingBackward> pending_;

  // --- per device ---
  std::vector<double> device_free_;  // on the devices' clocks (chained)
  std::vector<double> device_bytes_;

  // --- per wave ---
  std::vector<double> enc_wave_ms_;
  std::vector<double> boundary_wave_ms_;
  std::vector<std::size_t> wave_sequences_;
  std::vector<std::vector<EncoderItem>> wave_items_;  // longest first
  std::vector<double> wave_encoder_ms_;

  // --- per sample ---
  std::vector<int> sample_wave_;
  std::vector<int> sample_group_;
  std::vector<int> sample_member_;  // -1: split

  // --- the wave being assembled ---
  std::size_t first_task_ = 0;  // its first encoder task
  std::vector<std::int64_t> split_tokens_;
  std::vector<std::int64_t> whole_tokens_;
  std::vector<EncoderItem> cut_items_;     // its items cut into parts, longest first
  std::vector<EncoderItem> merged_items_;  // those merged back into its other items
  std::vector<double> task_ms_;            // encoder time of each of its tasks
  std::vector<int> task_ring_;             // per task: its ring's size at its first shard, else 1
  std::vector<std::pair<int, int>> task_consumer_;  // (group, member) of each task
  std::vector<double> group_inputs_;                // per group: its split sequences' items encoded
  std::vector<int> group_home_;
  std::vector<double> group_end_;
  std::vector<int> group_order_;         // its groups by when they end
  std::vector<int> group_rank_;          // per group: its end's place among the wave's ends
  std::vector<std::size_t> group_slot_;  // per place: where its items' backward entries go
  std::vector<std::vector<int>> group_encoder_ranks_;  // colocated, per group, in rank order
  std::vector<double> group_least_key_;  // per group: a bound on its encoder ranks' keys
  RankHeap by_load_;                     // encoder ranks by (start + load, rank)
  RankHeap by_room_;                     // encoder ranks by (-free_room, rank): most room first
  std::vector<double> room_keys_;
  std::vector<int> full_;              // ranks found with no room, to leave by_load_
  std::vector<double> min_held_from_;  // [i]: least held bytes of the wave's items i, i + 1, ...
  std::vector<int> ring_;              // a ring's encoder ranks

  // --- the worst rank over capacity ---
  bool over_capacity_ = false;
  double over_bytes_ = 0;
  int over_rank_ = -1;  // LLM rank, or -1 - encoder rank
  int over_wave_ = -1;
};

}  // namespace dhp::detail
