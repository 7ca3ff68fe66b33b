// Shared machinery of all planning strategies (not installed; not public API).
// Strategies decide *what* runs together (waves, group degrees, which sequence where);
// build_plan() turns that into a concrete Plan: node-aware ranks, encoder work, estimate,
// and the hard memory check. Defined in module_layout.cpp (layouts), group_placement.cpp
// (ranks of groups and rings), memory_budget.cpp (a rank's pieces, budgets, the fit check),
// sample_costs.cpp, gradient_sync_timing.cpp, plan_assembly.cpp and encoder_assignment.cpp
// (drafts -> plans).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "dhp/batch.hpp"
#include "dhp/cost_model.hpp"
#include "dhp/plan.hpp"
#include "dhp/planner.hpp"

namespace dhp::detail {

// The module layout every strategy plans within (TP fixed for the per-batch search).
struct Layout {
  int llm_tp = 1;
  int encoder_tp = 1;
  EncoderPlacement placement = EncoderPlacement::Colocated;
  ModuleLayout llm;      // ranks = LLM ranks (TP groups)
  ModuleLayout encoder;  // ranks = encoder ranks; 0 for text-only models
  int llm_ranks_per_node = 1;
  bool split_visual_items = false;  // PlannerOptions::split_visual_items, for dhp and exact
};

// TP must split the attention heads and the kv heads evenly (no kv-head replication) and
// stay inside a node.
bool tp_valid(int tp, const TransformerSpec& arch, int devices_per_node);

// TP per module: the smallest degree that divides the heads (and kv heads), divides the
// devices of a node, and leaves room for activations; explicit options win.
Layout resolve_layout(const ClusterSpec& cluster, const ModelSpec& model,
                      const PlannerOptions& options);
CostModel make_cost_model(const ClusterSpec& cluster, const ModelSpec& model, const Layout& layout,
                          const PlannerOptions& options);

// A group before its concrete ranks are chosen.
struct GroupDraft {
  int degree = 1;
  std::vector<int> split;               // samples zigzag-split over the whole group
  std::vector<std::vector<int>> whole;  // [member] -> samples kept whole on that member
};
struct WaveDraft {
  std::vector<GroupDraft> groups;  // sum of degrees <= layout.llm.ranks
};

// A group's samples: the split ones, then each member's whole ones.
inline std::vector<int> samples_of(const GroupDraft& group) {
  std::vector<int> samples = group.split;
  for (const std::vector<int>& member : group.whole)
    samples.insert(samples.end(), member.begin(), member.end());
  return samples;
}
inline bool holds_no_sample(const GroupDraft& group) {
  if (!group.split.empty()) return false;
  for (const std::vector<int>& member : group.whole)
    if (!member.empty()) return false;
  return true;
}

// A member's share of a sequence split over `degree` ranks: the largest, rounded up.
inline std::int64_t local_share(std::int64_t tokens, int degree) {
  return (tokens + degree - 1) / degree;
}

// Node-aware placement of one wave's groups onto LLM ranks: groups that fit inside a node
// stay inside one node (largest first, best-fit over nodes' free ranks); larger groups
// take whole nodes first so their rings cross node boundaries as few times as possible;
// each ring is ordered node by node. Returns rank lists in ring order, one per degree.
std::vector<std::vector<int>> place_groups(const std::vector<int>& degrees, int total_ranks,
                                           int ranks_per_node);

// The ring a group of `degree` ranks gets from place_groups when nothing is fragmented:
// inside one node when degree <= llm_ranks_per_node. Strategies use it before placement.
RingSpan expected_ring(int degree, const Layout& layout);
// True when the ranks (in ring order) span more than one node.
bool crosses_nodes(const std::vector<int>& ranks, int ranks_per_node);

// True when the encoder ranks of a ring (EncoderTask shards) sit on more than one node.
bool encoder_ring_crosses_nodes(const ClusterSpec& cluster, const ModuleLayout& encoder,
                                const std::vector<int>& ranks);

// Per-rank LLM time of one rank's pieces, as the planner's cost model sees it.
// `split` are token counts of sequences zigzag-split over a ring of `ring`;
// `whole` are token counts of sequences held whole.
double rank_llm_ms(const CostModel& cost, const std::vector<std::int64_t>& split, RingSpan ring,
                   const std::vector<std::int64_t>& whole);
// rank_llm_ms for the members of one group: the group's split shares plus each member's
// whole sequences. Members without a whole sequence run the same pieces: priced once.
class GroupMemberMs {
 public:
  GroupMemberMs(const CostModel& cost, const std::vector<std::int64_t>& split, RingSpan ring)
      : cost_(cost), split_(split), ring_(ring) {}
  double operator()(const std::vector<std::int64_t>& whole) {
    if (!whole.empty()) return rank_llm_ms(cost_, split_, ring_, whole);
    if (split_only_ms_ < 0) split_only_ms_ = rank_llm_ms(cost_, split_, ring_, whole);
    return split_only_ms_;
  }

 private:
  const CostModel& cost_;
  const std::vector<std::int64_t>& split_;
  RingSpan ring_;
  double split_only_ms_ = -1;
};
// Activation bytes per device of the same pieces.
double rank_activation_bytes(const CostModel& cost, const std::vector<std::int64_t>& split,
                             int degree, const std::vector<std::int64_t>& whole);
// The smallest CP degree dividing `ranks` whose members hold a `longest`-token sequence split
// over them, within `budget` activation bytes and `max_tokens` local tokens (<= 0: no limit);
// 0 when none does.
int smallest_cp_holding(const CostModel& cost, std::int64_t longest, int ranks, double budget,
                        std::int64_t max_tokens);
// The most parts the planner cuts `item` into (split_visual_items): one per span up to the
// encoder ranks, or, for an item of a single span, ring shards of at least
// half_efficiency_tokens patches over at most 4 nodes' worth of encoder ranks.
int most_encoder_parts(const CostModel& cost, const VisualItem& item, int encoder_ranks);

// Encoder memory, colocated, where the plan follows it (layouts that cut visual items: dhp,
// exact): a sample's items are held beside its own LLM work, so the held bytes of its items
// are charged to the LLM ranks that run it, per device (`held`: the sample's items' held
// bytes on one encoder device; split over a ring of d, each member takes 1/d). The parts go
// to encoder ranks with room when the wave is assembled, whose device check is the
// authority. 0 for other layouts.
double encoder_charge_per_device(const CostModel& cost, const Layout& layout, double held);
// Encoder activations kept free per device for a wave by layouts that encode every item
// whole on one rank (the baselines): twice the largest visual item's peak bytes. 0 where the
// encoder's memory is charged per sample (encoder_charge_per_device).
double encoder_reserve_bytes(const CostModel& cost, const Layout& layout, const Batch& batch);
// Device bytes available to LLM activations (and charged encoder bytes) in a wave: capacity
// - the LLM's and a colocated encoder's parameters, gradients and optimizer state - the
// encoder reserve.
double llm_activation_budget(const CostModel& cost, const Layout& layout, const Batch& batch);

// Throws dhp::Error (DoesNotFit) naming the binding constraint when the batch cannot fit this
// layout at all: a visual item whose smallest piece does not fit an encoder device (its bytes,
// its parts, the device's room), or a sample that does not fit even split over every LLM rank
// (its tokens, the bytes it needs with its encoder share, the bytes available and what they
// are after).
void check_batch_fits(const Batch& batch, const CostModel& cost, const Layout& layout);

// When the LLM's gradient sync ends (estimate and simulator alike; 0 when no rank ran): its
// buckets are reduced while the last backward still runs, and a bucket leaves once every rank
// has produced it, so each rank lets the sync end no earlier than its own end plus what its
// last backward (`last_backward_ms`) could not hide (at most `overlap` of `sync_ms`).
double llm_sync_end(std::span<const double> rank_end, std::span<const double> last_backward_ms,
                    double sync_ms, double overlap);

// The encoder's exposed gradient sync, [start, end): its buckets (`encoder_sync_ms` in all)
// hide under its last backward (ending at `encoder_end`) by `overlap` at most. On links shared
// with the LLM (colocated) they follow the LLM's sync, which ends at `llm_sync_end` and itself
// runs under that backward; on its own devices the encoder's sync starts when it is done.
// Estimate and simulator alike.
struct SyncSpan {
  double start = 0, end = 0;
};
SyncSpan encoder_sync_span(double llm_sync_end, double encoder_end, double encoder_sync_ms,
                           double overlap, bool shared_links);

// Drafts -> concrete Plan: places groups, assigns encoder items to encoder ranks
// (longest-processing-time first, per wave), fills plan.estimate from the cost model,
// and validates. Throws dhp::Error (Internal) if a rank's memory would exceed capacity
// or an invariant is broken: strategies must only hand over drafts that fit.
Plan build_plan(const std::string& strategy, const Batch& batch, const CostModel& cost,
                const Layout& layout, const std::vector<WaveDraft>& waves);

// Per-sample figures every estimate of one batch needs, computed once per batch.
struct SampleCosts {
  std::vector<std::int64_t> tokens;  // [sample] llm_tokens()
  std::vector<double> whole_bytes;   // [sample] llm_activation_bytes(tokens, 1)
  std::vector<int> visual_offset;    // [sample] first index of its visuals below; size n + 1
  std::vector<double> encoder_ms;    // [visual] encoder_item_ms
  std::vector<int> encoder_spans;    // [visual] encoder_spans
  std::vector<double> encoder_held;  // [sample] its visual items' held encoder bytes (whole)
  // Every visual item by encoder_ms, longest first (ties by sample, then visual): what the
  // encoder LPT reads, laid out contiguously because it walks all of them per estimate.
  struct Visual {
    int sample;
    int visual;  // index within its sample
    double ms;
    EncoderBytes bytes;  // whole
    std::int64_t llm_tokens;
  };
  std::vector<Visual> visuals_longest_first;
};
SampleCosts make_sample_costs(const Batch& batch, const CostModel& cost, const Layout& layout);

// Estimated step time of drafts without validating (for searches): the same figures as
// build_plan's plan.estimate.step_ms, or +infinity when a rank would exceed capacity.
double estimate_step_ms(const Batch& batch, const CostModel& cost, const Layout& layout,
                        const std::vector<WaveDraft>& waves);
// The same with the batch's SampleCosts computed once by the caller (searches).
double estimate_step_ms(const Batch& batch, const CostModel& cost, const Layout& layout,
                        const std::vector<WaveDraft>& waves, const SampleCosts& sample_costs);
// The whole plan behind that estimate (not validated; step +infinity when over memory), so
// that a search can keep its winner instead of assembling it again: validate() it, and it
// is what build_plan(strategy, ...) returns for the same drafts.
Plan estimate_plan(const std::string& strategy, const Batch& batch, const CostModel& cost,
                   const Layout& layout, const std::vector<WaveDraft>& waves,
                   const SampleCosts& sample_costs);

// The exact solver's core (exact.cpp): the smallest single-wave LLM makespan (max rank time,
// without the wave overhead) over every partition of the ranks into groups and every
// split/whole assignment. prune=false: plain enumeration over all partitions of <= R ranks
// (a brute force for tests). incumbent_ms: only plans strictly below it are recorded.
inline constexpr int kExactMaxRanks = 8;
inline constexpr int kExactMaxSequences = 12;
struct ExactResult {
  double makespan_ms = 0;
  WaveDraft wave;       // valid when found
  bool found = false;   // a plan below the incumbent exists
  long long nodes = 0;  // search nodes visited
};
ExactResult solve_exact_wave(const Batch& batch, const CostModel& cost, const Layout& layout,
                             bool prune, double incumbent_ms);

// Per-strategy entry points (one source file each).
Plan plan_dhp(const Batch& batch, const CostModel& cost, const Layout& layout,
              const PlannerOptions& options);
// plan_dhp keeping only plans estimated below `to_beat` (finite): nullopt when none is (a
// layout search prices a layout against the best of the others).
std::optional<Plan> plan_dhp_below(const Batch& batch, const CostModel& cost, const Layout& layout,
                                   const PlannerOptions& options, double to_beat);
Plan plan_exact(const Batch& batch, const CostModel& cost, const Layout& layout,
                const PlannerOptions& options);
Plan plan_static_best(const Batch& batch, const CostModel& cost, const Layout& layout,
                      const PlannerOptions& options);
Plan plan_static_balanced(const Batch& batch, const CostModel& cost, const Layout& layout,
                          const PlannerOptions& options);
Plan plan_megatron_dcp(const Batch& batch, const CostModel& cost, const Layout& layout,
                       const PlannerOptions& options);
Plan plan_paper_bfd_dp(const Batch& batch, const CostModel& cost, const Layout& layout,
                       const PlannerOptions& options);

}  // namespace dhp::detail
