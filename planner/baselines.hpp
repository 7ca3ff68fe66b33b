// Pieces shared by the baseline strategies (static_best, static_balanced, megatron_dcp,
// paper_bfd_dp), exposed so that tests can check them against brute force. Not public API.
#pragma once

#include <cstdint>
#include <vector>

#include "internal.hpp"

namespace dhp::detail {

// Largest length (a multiple of `granule`) of one sequence zigzag-split over `degree`
// ranks whose activations fit in `budget` bytes per device; 0 when not even `granule` fits.
std::int64_t max_fitting_tokens(const CostModel& cost, int degree, double budget,
                                std::int64_t granule);

// Activation bytes per device of `samples` all split over a group of `degree` ranks
// (degree 1: all held whole on the single member).
double group_activation_bytes(const CostModel& cost, const Batch& batch,
                              const std::vector<int>& samples, int degree);
// LLM time of the same group, per rank.
double group_llm_ms(const CostModel& cost, const Layout& layout, const Batch& batch,
                    const std::vector<int>& samples, int degree);

// A group draft whose samples are all split over the group (kept whole when degree 1).
GroupDraft split_group(int degree, std::vector<int> samples);

// What a wave's colocated encoder may hold when every visual item is encoded whole on one
// rank (the baselines): build_plan spreads the wave's items over the encoder ranks within the
// room its LLM leaves them, at least encoder_reserve_bytes (2 x the largest item), so the
// wave fits while its encoder bytes total at most (encoder ranks) x (largest item + the room
// the wave's fullest LLM rank leaves). A wave being formed asks fits() before it takes a
// sample; a text-only model or a disjoint encoder always fits.
class WaveEncoderRoom {
 public:
  WaveEncoderRoom(const Batch& batch, const CostModel& cost, const Layout& layout);
  // False where the check never binds (no colocated encoder work).
  bool applies() const { return applies_; }
  // Encoder activation bytes of one sample's visual items, whole.
  double sample_bytes(int sample) const { return sample_bytes_[static_cast<std::size_t>(sample)]; }
  // Whether a wave whose items total `encoder_bytes` and whose fullest LLM rank holds
  // `fullest_llm_bytes` of activations fits.
  bool fits(double encoder_bytes, double fullest_llm_bytes) const {
    return !applies_ || encoder_bytes <= encoder_ranks_ * (largest_ + budget_ - fullest_llm_bytes);
  }

 private:
  bool applies_ = false;
  std::vector<double> sample_bytes_;
  double largest_ = 0;
  double budget_ = 0;
  int encoder_ranks_ = 0;
};

// Colocated encoders: build_plan spreads a wave's visual items over the encoder ranks
// within the room the wave's LLM leaves them, at least encoder_reserve_bytes (2 x the
// largest item) where the LLM was packed to its budget; that always holds when
// the wave's encoder activations total at most (encoder ranks) x (largest item). Waves over
// that are split, moving whole groups (or parts of a group's sample list) to a following
// wave, as the real system would defer them to another micro-batch. No-op otherwise.
std::vector<WaveDraft> limit_encoder_per_wave(const Batch& batch, const CostModel& cost,
                                              const Layout& layout, std::vector<WaveDraft> waves);

// `batch` with every sample's text padded so that its LLM tokens are a multiple of `granule`
// (a data pipeline's padding: Megatron's THD datasets).
Batch padded_batch(const Batch& batch, int granule);

// --- static baselines ---
// Length every sequence is padded to in a packed bin split over `cp` ranks (zigzag needs
// a multiple of 2*cp).
std::int64_t padded_tokens(std::int64_t tokens, int cp);
// static_best drafts: first-fit-decreasing packing into bins of `pack_tokens` per CP group
// (and within `budget`), bins dealt round-robin to the ranks/cp replicas.
std::vector<WaveDraft> static_best_waves(const Batch& batch, const CostModel& cost,
                                         const Layout& layout, int cp, std::int64_t pack_tokens,
                                         double budget);
// Pack lengths static_best tries for one CP degree, longest first: the longest that fits
// memory (and max_tokens_per_rank * cp when that is set), then halvings, all multiples of
// 2*cp and at least the padded `longest` sequence; halving stops after the first pack at
// or below `enough` (0: no such stop). Empty when none holds the longest sequence.
std::vector<std::int64_t> static_pack_candidates(const CostModel& cost, int cp, double budget,
                                                 std::int64_t longest,
                                                 std::int64_t max_tokens_per_rank,
                                                 std::int64_t enough = 0);
// static_balanced drafts: LPT over the replicas on estimated time, then each replica's
// sequences first-fit into micro-batches within `budget` and, when max_tokens_per_rank > 0,
// within that many tokens per rank.
std::vector<WaveDraft> static_balanced_waves(const Batch& batch, const CostModel& cost,
                                             const Layout& layout, int cp, double budget,
                                             std::int64_t max_tokens_per_rank = 0);

// --- entrain ---
// Entrain-like drafts at a fixed `cp` (baselines_entrain.cpp): the fewest micro-batches memory
// allows, samples balanced over them by encoder work, then over each one's DP replicas by LLM
// work, excess deferred to the next micro-batch.
std::vector<WaveDraft> entrain_waves(const Batch& batch, const CostModel& cost,
                                     const Layout& layout, int cp, double budget,
                                     std::int64_t max_tokens_per_rank);

// --- paper_bfd_dp ---
struct AtomicGroup {
  int min_degree = 1;        // smallest degree that holds the group's first sequence
  std::vector<int> samples;  // in insertion (decreasing length) order
};
// Memory-aware best-fit decreasing: each sequence joins the atomic group with the least
// memory left that still holds it, else opens a new one. When max_tokens_per_rank > 0 a
// group must also stay within that many tokens per rank at its minimal degree.
std::vector<AtomicGroup> bfd_atomic_groups(const Batch& batch, const CostModel& cost, double budget,
                                           int max_degree, std::int64_t max_tokens_per_rank = 0);

struct DeviceAllocation {
  std::vector<int> degrees;  // per group, >= its minimum
  double makespan = 0;       // max over groups of time[j][degrees[j]]
};
// The paper's 2-D dynamic program: dp[i][n] = least max-time giving at most n devices to
// the first i groups, group j taking m >= min_degree[j] devices at time[j][m]
// (time[j] has ranks + 1 entries; infinity marks a degree that does not fit). O(K N^2).
// Throws dhp::Error (Internal) when the minimal degrees exceed `ranks`.
DeviceAllocation allocate_devices_dp(const std::vector<std::vector<double>>& time,
                                     const std::vector<int>& min_degree, int ranks);

// The drafts plan_paper_bfd_dp and plan_megatron_dcp hand to build_plan (encoder-limited),
// also dhp's portfolio candidates. The caller has run check_batch_fits.
std::vector<WaveDraft> paper_bfd_dp_waves(const Batch& batch, const CostModel& cost,
                                          const Layout& layout, const PlannerOptions& options);
std::vector<WaveDraft> megatron_dcp_waves(const Batch& batch, const CostModel& cost,
                                          const Layout& layout, const PlannerOptions& options);
std::vector<WaveDraft> megatron_dcp_dev_waves(const Batch& batch, const CostModel& cost,
                                              const Layout& layout, const PlannerOptions& options);
// Megatron's dp_balanced packing at a fixed `cp` (baselines_megatron_packed.cpp).
std::vector<WaveDraft> megatron_dp_balanced_waves(const Batch& batch, const CostModel& cost,
                                                  const Layout& layout, int cp,
                                                  std::int64_t max_tokens_per_rank);

// --- megatron_dcp ---
// Megatron's per-sequence CP size: max(1, next power of two >= ceil(tokens / max_tokens)).
int megatron_cp_size(std::int64_t tokens, std::int64_t max_tokens_per_rank);

}  // namespace dhp::detail
