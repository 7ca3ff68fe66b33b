// step_lower_bound (include/dhp/step_bound.hpp): the least, over the module layouts a run may
// use, of the larger of two bounds on any plan's estimated step at that layout.
#include "dhp/step_bound.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

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

// The fastest an item can be encoded (forward and backward) under `candidate`: for an item of
// several independent spans, one span (every part of any cut holds at least one, and a range
// takes at least as long as any span in it); for an item of one span, its ring shards at the
// best count up to most_encoder_parts, on a ring inside a node.
double fastest_item_ms(const detail::LayoutCandidate& candidate, const VisualItem& item) {
  const CostModel& cost = candidate.cost;
  const EncoderSpec& encoder = *cost.model().encoder;
  const int spans = encoder_spans(encoder, item);
  if (spans > 1) {
    return std::min(cost.encoder_item_ms(encoder_part(encoder, item, 0, spans)),
                    cost.encoder_item_ms(encoder_part(encoder, item, spans - 1, spans)));
  }
  double fastest = cost.encoder_item_ms(item);
  if (!candidate.layout.split_visual_items) return fastest;
  const int most = detail::most_encoder_parts(cost, item, candidate.layout.encoder.ranks);
  for (int n = 2; n <= most; ++n)
    fastest = std::min(fastest, cost.encoder_shard_ms(item, RingSpan{n, false}));
  return fastest;
}

// The sample's fastest LLM time on one group of the layout (as longest_sample_ms).
double fastest_llm_ms(const detail::LayoutCandidate& candidate, const Batch& batch,
                      std::int64_t tokens) {
  const CostModel& cost = candidate.cost;
  const double budget = detail::llm_activation_budget(cost, candidate.layout, batch);
  double fastest = std::numeric_limits<double>::infinity();
  for (int d = 1; d <= candidate.layout.llm.ranks; ++d) {
    if (cost.llm_activation_bytes(tokens, d) > budget) continue;
    fastest =
        std::min(fastest, cost.llm_sequence_ms(tokens, detail::expected_ring(d, candidate.layout)));
  }
  return std::isfinite(fastest) ? fastest : 0.0;
}

// The samples of the batch whose visual items take longest to encode whole, a few per encoder
// TP (any sample's chain is a valid bound; the longest items give the best).
class LongestItems {
 public:
  explicit LongestItems(const Batch& batch) : batch_(batch) {}
  // (sample, visual) of the longest items whole at this candidate's encoder TP.
  const std::vector<std::pair<int, int>>& of(const CostModel& cost) {
    for (const auto& [tp, items] : by_tp_)
      if (tp == cost.encoder_tp()) return items;
    std::vector<std::tuple<double, int, int>> all;
    for (std::size_t s = 0; s < batch_.samples.size(); ++s)
      for (std::size_t v = 0; v < batch_.samples[s].visuals.size(); ++v)
        all.emplace_back(cost.encoder_item_ms(batch_.samples[s].visuals[v]), static_cast<int>(s),
                         static_cast<int>(v));
    const std::size_t keep = std::min<std::size_t>(kKept, all.size());
    std::partial_sort(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(keep), all.end(),
                      std::greater<>());
    std::vector<std::pair<int, int>> items;
    for (std::size_t i = 0; i < keep; ++i)
      items.emplace_back(std::get<1>(all[i]), std::get<2>(all[i]));
    by_tp_.emplace_back(cost.encoder_tp(), std::move(items));
    return by_tp_.back().second;
  }

 private:
  static constexpr std::size_t kKept = 4;
  const Batch& batch_;
  std::vector<std::pair<int, std::vector<std::pair<int, int>>>> by_tp_;
};

// A sample's chain no plan shortens: its item's forward before the sample's LLM work (which
// consumes it), the item's backward after it (which needs the LLM's gradient), each at its
// fastest, plus a micro-batch's overhead; the longest over the longest items.
double longest_item_ms(const detail::LayoutCandidate& candidate, const Batch& batch,
                       LongestItems& longest) {
  if (candidate.layout.encoder.ranks == 0) return 0;
  double most = 0;
  for (const auto& [s, v] : longest.of(candidate.cost)) {
    const Sample& sample = batch.samples[static_cast<std::size_t>(s)];
    most = std::max(most, fastest_item_ms(candidate, sample.visuals[static_cast<std::size_t>(v)]) +
                              fastest_llm_ms(candidate, batch, sample.llm_tokens()));
  }
  return most > 0 ? most + candidate.cost.wave_overhead_ms() : 0.0;
}

}  // namespace

StepBound step_lower_bound(const ClusterSpec& cluster, const ModelSpec& model, const Batch& batch,
                           const PlannerOptions& options) {
  validate(batch);
  // Every strategy's plans: the layouts of the most permissive one (items may be cut).
  PlannerOptions open = options;
  open.strategy = Strategy::Dhp;
  open.split_visual_items = true;
  std::vector<std::string> unfit;
  const std::vector<detail::LayoutCandidate> candidates =
      detail::layout_candidates(cluster, model, open, &unfit);
  DHP_CHECK(!candidates.empty(), DoesNotFit,
            "step_lower_bound: no module layout of {} on {} fits its parameters ({} tried)",
            model.name, cluster.name, unfit.size());
  detail::LayoutBounds bounds(batch);
  LongestItems longest_items(batch);
  StepBound best;
  best.ms = std::numeric_limits<double>::infinity();
  for (const detail::LayoutCandidate& candidate : candidates) {
    const double work = bounds.step_ms(candidate);
    const double longest = longest_sample_ms(candidate, batch);
    const double item = longest_item_ms(candidate, batch, longest_items);
    const double ms = std::max({work, longest, item});
    if (ms < best.ms) {
      best.ms = ms;
      best.work_ms = work;
      best.longest_sample_ms = longest;
      best.longest_item_ms = item;
      best.binding = ms == work ? "work" : ms == longest ? "longest sample" : "longest item";
      best.layout = candidate.options;
    }
  }
  best.layouts_tried = static_cast<int>(candidates.size());
  return best;
}

}  // namespace dhp
