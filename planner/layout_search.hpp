// dhp's module layout chosen with the plan: the layouts a run may use (layout_candidates.cpp),
// what switching between two costs, a lower bound on any plan's step under one of them
// (layout_bound.cpp), and the search over them for each batch (layout_search.cpp). Internal
// to the planner.
#pragma once

#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "dhp/planner.hpp"
#include "internal.hpp"

namespace dhp::detail {

// One module layout a run may use, with its cost model, built once per Planner.
struct LayoutCandidate {
  PlannerOptions options;  // llm_tp, encoder_tp, placement and encoder_devices set
  Layout layout;
  CostModel cost;
};

// Every layout `options` leaves open: each LLM and encoder TP that divides the heads, kv
// heads and a node's devices (an explicit llm_tp / encoder_tp is kept), colocated, and, with
// PlannerOptions::search_placement, disjoint with about 1/8, 1/4, 3/8 and 1/2 of the devices
// for the encoder (an explicit disjoint placement is kept as given). Layouts whose parameters
// alone do not fit are left out, each with why in `unfit` (when given). The order fixes the
// tie-break: colocated before disjoint, then smaller TP, then fewer encoder devices.
std::vector<LayoutCandidate> layout_candidates(const ClusterSpec& cluster, const ModelSpec& model,
                                               const PlannerOptions& options,
                                               std::vector<std::string>* unfit = nullptr);

// The encoder device counts tried for a disjoint encoder (whole nodes on a multi-node
// cluster, else a multiple of both TP degrees), plus `base.encoder_devices` when it is set.
std::vector<int> encoder_device_candidates(const ClusterSpec& cluster, int llm_tp, int encoder_tp,
                                           const PlannerOptions& base);

// Whether the two layouts are the same (TP degrees, placement, encoder devices).
bool same_layout(const PlannerOptions& a, const PlannerOptions& b);

// Time to move from layout `from` to `to` between two steps: every device receives its new
// shard of the weights of each module whose TP degree or devices change (inside a node, where
// TP groups live) and its new shard of that module's optimizer state, and of its gradients
// under ZeRO 2 (across nodes on a multi-node cluster, the data-parallel shards move); 0 when
// the layouts are the same. CostModel::p2p_ms prices the bytes.
double layout_switch_ms(const LayoutCandidate& from, const LayoutCandidate& to);

// Per batch, what the lower bound of every candidate reads, computed once per LLM TP (the
// sequences' least rank-time) and per encoder TP (the items' encoder time).
class LayoutBounds {
 public:
  explicit LayoutBounds(const Batch& batch);
  // A lower bound on the estimated step (plan.estimate.step_ms) of any plan of the batch
  // under `candidate`: the devices' mean work (the LLM's least rank-time, the encoder's items
  // whole) and the unhidden gradient syncs, as step_lower_bound_ms combines them for drafts.
  double step_ms(const LayoutCandidate& candidate);

 private:
  struct LlmFigures {
    int llm_tp = 0;
    double fixed_ms = 0;       // llm_rank_fixed_ms
    double whole_work_ms = 0;  // every sequence whole, marginal rank-ms
    double whole_bytes = 0;    // every sequence's activations whole
  };
  const LlmFigures& llm_figures(const CostModel& cost);
  double llm_work_ms(const CostModel& cost, const Layout& layout);
  double encoder_work_ms(const CostModel& cost);

  const Batch& batch_;
  std::vector<std::pair<std::int64_t, int>> lengths_;  // (LLM tokens, samples), longest first
  std::vector<std::pair<VisualItem, int>> items_;      // (visual item, how many)
  std::vector<LlmFigures> llm_;                        // one per LLM TP seen
  std::vector<std::pair<int, double>> encoder_work_;   // (encoder tp, rank-ms)
  // What a sequence split over d ranks costs beyond its time whole, by (LLM TP, tokens, d,
  // whether the ring crosses nodes).
  struct SplitKey {
    int llm_tp;
    std::int64_t tokens;
    int degree;
    bool crosses_nodes;
    bool operator<(const SplitKey& o) const {
      return std::tie(llm_tp, tokens, degree, crosses_nodes) <
             std::tie(o.llm_tp, o.tokens, o.degree, o.crosses_nodes);
    }
  };
  std::map<SplitKey, double> split_extra_;
};

// The per-batch search of a run (one per Planner): for each batch every open layout's lower
// bound first, then dhp's plan under the most promising ones until no other can win; the
// least estimated step wins, a switch from the previous batch's layout charged its
// layout_switch_ms (LayoutSearch::PerBatch), or the layout chosen on the first batches kept
// (LayoutSearch::FixedAfterFirstBatches). "Can win" is the bound scaled by the gap between
// bound and plan that layout showed on earlier batches: a screen learned over the run, not a
// proof (without it, every batch would plan the several layouts whose bounds are close).
class BatchLayoutSearch {
 public:
  BatchLayoutSearch(const ClusterSpec& cluster, const ModelSpec& model,
                    const PlannerOptions& options);
  // Throws DoesNotFit naming, for each layout tried, what keeps it from holding the batch.
  Plan plan(const Batch& batch);
  std::size_t candidates() const { return candidates_.size(); }

 private:
  struct Choice {
    std::optional<Plan> plan;
    std::size_t candidate = 0;
    double score_ms = 0;  // estimate + switch
  };
  Choice search(const Batch& batch, std::optional<std::size_t> previous, std::string& why_not);
  [[noreturn]] void refuse(const Batch& batch, const std::string& why_not) const;
  void remember(std::int64_t step, std::size_t chosen);

  PlannerOptions options_;
  std::vector<std::string> unfit_;  // layouts left out: parameters alone do not fit
  std::vector<LayoutCandidate> candidates_;
  // The run so far: the layout of the last batch planned (a batch planned again, the same
  // step, sees the layout before it, so that repeats give the same plan), and, for
  // FixedAfterFirstBatches, how often each layout won the first batches and the one kept.
  std::optional<std::int64_t> last_step_;
  std::optional<std::size_t> before_last_;
  std::optional<std::size_t> last_;
  std::vector<int> wins_;
  // Per candidate: its plans' estimated step over its lower bound, last seen (1 until then;
  // a plan that could not beat the best raises it to what it would have needed).
  std::vector<double> gap_;
  int batches_seen_ = 0;
  std::optional<std::size_t> fixed_;
};

}  // namespace dhp::detail
