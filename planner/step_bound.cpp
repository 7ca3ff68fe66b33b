// step_lower_bound (include/dhp/step_bound.hpp): the least, over the module layouts a run may
// use, of the larger of two bounds on any plan's estimated step at that layout.
#include "dhp/step_bound.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "dhp/error.hpp"
#include "internal.hpp"
#include "layout_search.hpp"

namespace dhp {
namespace {

// The longest sample (by LLM tokens) at its fastest degree under `candidate`: a ring of d ranks
// runs it in at least llm_sequence_ms(L, ring) per member, whatever else they hold (more pieces
// only add: the packed linear layers' cost grows with their tokens, attention is per sequence,
// the ring's exchange is summed), at a degree whose share fits a rank's activation budget, on
// a ring laid out at best (inside a node while it fits one). Its wave costs the micro-batch's
// overhead and the LLM's gradient sync cannot hide more than its overlap under the backward.
double longest_sample_ms(const detail::LayoutCandidate& candidate, const Batch& batch) {
  const CostModel& cost = candidate.cost;
  const detail::Layout& layout = candidate.layout;
  std::int64_t longest = 0;
  for (const Sample& s : batch.samples) longest = std::max(longest, s.llm_tokens());
  if (longest == 0) return 0;
  const double budget = detail::llm_activation_budget(cost, layout, batch);
  double fastest = std::numeric_limits<double>::infinity();
  for (int d = 1; d <= layout.llm.ranks; ++d) {
    if (cost.llm_activation_bytes(longest, d) > budget) continue;
    fastest = std::min(fastest, cost.llm_sequence_ms(longest, detail::expected_ring(d, layout)));
  }
  if (!std::isfinite(fastest)) return 0;  // it fits nowhere: check_batch_fits refuses the batch
  const double hidden = cost.coefficients().grad_sync_overlap;
  return fastest + cost.wave_overhead_ms() +
         (1 - hidden) * cost.llm_grad_sync_full_ms(layout.llm.ranks);
}

}  // namespace

StepBound step_lower_bound(const ClusterSpec& cluster, const ModelSpec& model, const Batch& batch,
                           const PlannerOptions& options) {
  validate(batch);
  std::vector<std::string> unfit;
  const std::vector<detail::LayoutCandidate> candidates =
      detail::layout_candidates(cluster, model, options, &unfit);
  DHP_CHECK(!candidates.empty(), DoesNotFit,
            "step_lower_bound: no module layout of {} on {} fits its parameters ({} tried)",
            model.name, cluster.name, unfit.size());
  detail::LayoutBounds bounds(batch);
  StepBound best;
  best.ms = std::numeric_limits<double>::infinity();
  for (const detail::LayoutCandidate& candidate : candidates) {
    const double work = bounds.step_ms(candidate);
    const double longest = longest_sample_ms(candidate, batch);
    const double ms = std::max(work, longest);
    if (ms < best.ms) {
      best.ms = ms;
      best.work_ms = work;
      best.longest_sample_ms = longest;
      best.binding = longest > work ? "longest sample" : "work";
      best.layout = candidate.options;
    }
  }
  best.layouts_tried = static_cast<int>(candidates.size());
  return best;
}

}  // namespace dhp
