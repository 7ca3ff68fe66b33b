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

// Colocated encoders: build_plan spreads a wave's visual items over the encoder ranks
// within the room the wave's LLM leaves them, at least encoder_reserve_bytes (2 x the
// largest item) where the LLM was packed to its budget; that always holds when
// the wave's encoder activations total at most (encoder ranks) x (largest item). Waves over
// that are split, moving whole groups (or parts of a group's sample list) to a following
// wave, as the real system would defer them to another micro-batch. No-op otherwise.
std::vector<WaveDraft> limit_encoder_per_wave(const Batch& batch, const CostModel& cost,
                                              const Layout& layout, std::vector<WaveDraft> waves);

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

// --- megatron_dcp ---
// Megatron's per-sequence CP size: max(1, next power of two >= ceil(tokens / max_tokens)).
int megatron_cp_size(std::int64_t tokens, std::int64_t max_tokens_per_rank);

}  // namespace dhp::detail
