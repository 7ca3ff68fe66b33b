// One micro-batch of Megatron Core's dynamic-CP schedulers (baselines_megatron_dcp.cpp: the
// version of the published benchmark; baselines_megatron_dcp_dev.cpp: the dev branch's
// packing-aware one) while it is being formed: groups of DP x CP ranks in the order they
// opened, each on the next free ranks, with the per-rank token count and the L^2/cp load
// Megatron balances. Memory is our addition (Megatron has only the token limit): a group's
// activations stay within the budget and the wave's colocated encoder within its room
// (WaveEncoderRoom), so that the micro-batch never has to be split afterwards. Internal.
#pragma once

#include <cstdint>
#include <vector>

#include "baselines.hpp"

namespace dhp::detail {

// Per-sample figures both schedulers read for every placement, computed once per batch:
// activation bytes per device when split over a power-of-two group (or over every rank).
class MegatronSamples {
 public:
  MegatronSamples(const Batch& batch, const CostModel& cost, int ranks);
  const Batch& batch() const { return batch_; }
  std::int64_t tokens(int s) const { return tokens_[static_cast<std::size_t>(s)]; }
  double bytes(int s, int size) const;
  // Activation bytes per device of `samples` all split over `size` ranks.
  double group_bytes(const std::vector<int>& samples, int size) const {
    return group_activation_bytes(cost_, batch_, samples, size);
  }

 private:
  const Batch& batch_;
  const CostModel& cost_;
  int ranks_;
  std::vector<std::int64_t> tokens_;
  // [sample][k]: bytes split over 2^k ranks (k up to log2 of the largest power of two in the
  // ranks), then over all ranks; filled on first use.
  mutable std::vector<std::vector<double>> bytes_;
};

class MegatronMicroBatch {
 public:
  struct Group {
    int size = 1;
    std::vector<int> samples;
    double tokens_per_rank = 0;  // Megatron's packing_sequence_len: sum of L / size
    double load = 0;             // Megatron's exec_times of each member: sum of L^2 / size
    double bytes = 0;            // activations per device
  };

  MegatronMicroBatch(const MegatronSamples& samples, const WaveEncoderRoom& room, int ranks,
                     double budget, double max_tokens_per_rank);

  int ranks() const { return ranks_; }
  int free_ranks() const { return ranks_ - used_; }
  bool empty() const { return groups_.empty(); }
  const std::vector<Group>& groups() const { return groups_; }
  // The groups of one size, in the order they opened.
  const std::vector<int>& groups_of_size(int size) const;
  // The most loaded rank (free ranks have load 0).
  double max_load() const { return max_load_; }
  double min_load() const;  // 0 while a rank is free

  static double workload(std::int64_t tokens, int size) {
    return static_cast<double>(tokens) * static_cast<double>(tokens) / size;
  }
  // Whether group `g` may take sample `s` (split over its `size` ranks): its tokens per rank
  // stay within the limit (Megatron's test), its memory and the wave's encoder room hold.
  bool can_add(int g, int s) const;
  // Whether a new group of `size` ranks holding `s` fits: enough free ranks, memory, room. A
  // micro-batch's first sequence is always allowed its room (a wave of it alone is what any
  // split would give it).
  bool can_open(int size, int s) const;
  void add(int g, int s);
  void open(int size, int s);

  // Megatron's fill_empty_gpus: while ranks are free, the first group of the smallest size
  // doubles (capped at the ranks; its sequences are split over the new size; the groups after
  // it move up). `near_end_stays` (the dev branch's fill_empty_gpus_once): a group whose last
  // rank plus the ranks it would gain reaches the last rank is passed over for the next one of
  // that size. Returns false when a free rank remains that no doubling can fill.
  bool fill_by_doubling(bool near_end_stays = false);

  WaveDraft draft() const;

 private:
  const MegatronSamples& samples_;
  const WaveEncoderRoom& room_;
  int ranks_;
  double budget_;
  double max_tokens_;
  int used_ = 0;
  double encoder_bytes_ = 0;
  double fullest_bytes_ = 0;  // the most activation bytes of a group's device
  double max_load_ = 0;
  std::vector<Group> groups_;
  std::vector<std::pair<int, std::vector<int>>> by_size_;  // (size, groups of that size)
};

// What both schedulers read for a batch: the ranks, the activation budget, the per-rank token
// limit, every sequence's CP size, the encoder's room and the samples' table.
struct MegatronInputs {
  MegatronInputs(const Batch& batch, const CostModel& cost, const Layout& layout,
                 const PlannerOptions& options, const char* strategy);
  int ranks;
  double budget;
  std::int64_t max_tokens;
  std::vector<int> cp_of;
  WaveEncoderRoom room;
  MegatronSamples samples;
};

// Megatron's per-sequence CP size as both schedulers use it: megatron_cp_size of its tokens,
// raised to the next power of two while its activations do not fit at that size (a user's
// answer to an OOM). Throws DoesNotFit naming the sample when it needs more than the largest
// power of two of the ranks.
std::vector<int> megatron_cp_sizes(const Batch& batch, const CostModel& cost, int ranks,
                                   double budget, std::int64_t max_tokens_per_rank,
                                   const char* strategy);

// The per-rank token limit of a run: PlannerOptions::max_tokens_per_rank, or the longest
// sequence one rank's activations hold. Throws DoesNotFit when not even one token fits.
std::int64_t megatron_max_tokens(const CostModel& cost, double budget,
                                 const PlannerOptions& options, const char* strategy);

}  // namespace dhp::detail
