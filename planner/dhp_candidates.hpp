// dhp's further candidates beside its own packings, and what prunes them: the baselines'
// cheap constructions (dhp_portfolio.cpp), local moves on the best drafts
// (dhp_local_moves.cpp), and a lower bound on a candidate's estimated step
// (dhp_step_bound.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "dhp_packer.hpp"
#include "internal.hpp"

namespace dhp::detail {

// The cheap constructions of the baselines as further candidates (docs/algorithm.md,
// "Portfolio"): static_balanced's LPT at the first CP degrees dividing the ranks from the
// smallest that holds the longest sequence, static_best's packing at that smallest CP,
// megatron_dcp's and paper_bfd_dp's drafts. All are kept or dropped by the same estimate; a
// construction that cannot hold the batch is simply not a candidate.
void add_portfolio(const Batch& batch, const CostModel& cost, const Layout& layout,
                   const PlannerOptions& options, const Tables& tables,
                   const std::function<void(std::vector<WaveDraft>)>& consider);

// Sample `sample` moved from group a of wave w to group b: split over b (member < 0) or
// whole on b's `member`; b == the wave's group count opens a one-rank group for it. A group
// left empty goes. Empty when the token limit breaks.
std::vector<WaveDraft> move_sample(const std::vector<WaveDraft>& waves, std::size_t w,
                                   std::size_t a, int sample, std::size_t b, int member,
                                   const SampleCosts& sc, std::int64_t token_limit);

// Ring a of wave w (degree d >= 2) cut into rings of degrees k and d - k, its sequences
// dealt longest first to the one with less work per rank (split over it; whole on a
// one-rank group). Empty when the token limit breaks.
std::vector<WaveDraft> split_ring(const std::vector<WaveDraft>& waves, std::size_t w, std::size_t a,
                                  int k, const std::vector<double>& sample_ms,
                                  const SampleCosts& sc, std::int64_t token_limit);

// Wave `w` of `waves` with groups a < b made one ring over both groups' ranks, every
// sequence of both split over it: the optimum of small instances often shares a medium
// ring between two long sequences where the packing gives each its own smallest degree
// (docs/algorithm.md, "Status"). Empty when a member's share would break the token limit.
std::vector<WaveDraft> merge_groups(const std::vector<WaveDraft>& waves, std::size_t w,
                                    std::size_t a, std::size_t b, const SampleCosts& sc,
                                    std::int64_t token_limit);

// A lower bound on estimate_step_ms of `waves`, at a fraction of its cost, that assumes
// little about how the estimate combines its parts: every rank runs its pieces one after
// the other (so the step is at least the busiest rank's LLM time plus a wave overhead per
// wave it works in); a disjoint encoder's waves take at least max(longest item, items spread
// evenly over its ranks) each; a colocated device runs its LLM and encoder work in turn (so
// the step is at least the devices' mean of both); boundary transfers cost >= 0, and
// gradient sync hides at most its overlap fraction. A candidate
// whose bound is not below the best estimate so far cannot win, so its full estimate is
// skipped. plan_dhp checks the bound against every estimate it does compute.
double step_lower_bound_ms(const Batch& batch, const CostModel& cost, const Layout& layout,
                           const std::vector<WaveDraft>& waves, const SampleCosts& sample_costs);

}  // namespace dhp::detail
