// A lower bound on dhp's estimated step of a candidate, at a fraction of the estimate's cost.
#include <algorithm>
#include <numeric>

#include "dhp_candidates.hpp"

namespace dhp::detail {

double step_lower_bound_ms(const Batch& batch, const CostModel& cost, const Layout& layout,
                           const std::vector<WaveDraft>& waves, const SampleCosts& sample_costs) {
  const int R = layout.llm.ranks;
  const int rpn = std::max(1, layout.llm_ranks_per_node);
  const int E = layout.encoder.ranks;
  std::vector<int> degrees;
  std::vector<std::int64_t> split_tokens;
  std::vector<std::int64_t> whole_tokens;
  std::vector<double> rank_busy_ms(R, 0.0);
  double encoder_ms = 0;       // per wave: its longest item or its items spread evenly
  double encoder_work_ms = 0;  // every item's encoder time
  for (const WaveDraft& wave : waves) {
    degrees.clear();
    for (const GroupDraft& g : wave.groups) degrees.push_back(g.degree);
    const std::vector<std::vector<int>> placed = place_groups(degrees, R, rpn);
    double encoder_total = 0;
    double encoder_longest = 0;
    auto add_encoder = [&](int sample) {
      for (int v = sample_costs.visual_offset[sample]; v < sample_costs.visual_offset[sample + 1];
           ++v) {
        encoder_total += sample_costs.encoder_ms[v];
        // A cut item's longest part is at least its even share over its parts: at most one
        // per span (a video), or one per encoder rank (ring shards of a single-span image).
        const int spans = sample_costs.encoder_spans[v];
        const int parts = !layout.split_visual_items ? 1 : spans == 1 ? E : std::min(spans, E);
        encoder_longest = std::max(encoder_longest, sample_costs.encoder_ms[v] / parts);
      }
    };
    for (std::size_t g = 0; g < wave.groups.size(); ++g) {
      const GroupDraft& group = wave.groups[g];
      const RingSpan ring{group.degree, crosses_nodes(placed[g], rpn)};
      split_tokens.clear();
      for (int s : group.split) {
        split_tokens.push_back(sample_costs.tokens[s]);
        add_encoder(s);
      }
      GroupMemberMs member_ms(cost, split_tokens, ring);
      for (int m = 0; m < group.degree; ++m) {
        whole_tokens.clear();
        if (m < static_cast<int>(group.whole.size())) {
          for (int s : group.whole[m]) {
            whole_tokens.push_back(sample_costs.tokens[s]);
            add_encoder(s);
          }
        }
        const double ms = member_ms(whole_tokens);
        if (ms > 0) rank_busy_ms[placed[g][m]] += ms + cost.wave_overhead_ms();
      }
    }
    if (E > 0) encoder_ms += std::max(encoder_longest, encoder_total / E);
    encoder_work_ms += encoder_total;
  }
  // At most the overlap fraction of each module's gradient sync hides under its backward
  // (encoder_sync_span): the LLM's ends after its slowest rank, the encoder's after both.
  const double hidden = cost.coefficients().grad_sync_overlap;  // in [0, 1] (CostModel)
  const double llm_sync_ms = (1 - hidden) * cost.llm_grad_sync_full_ms(R);
  const double encoder_sync_ms = E > 0 ? (1 - hidden) * cost.encoder_grad_sync_full_ms(E) : 0.0;
  const double llm_ms = *std::max_element(rank_busy_ms.begin(), rank_busy_ms.end());
  if (encoder_work_ms <= 0)  // no encoder work: the two syncs need not follow each other
    return std::max(llm_ms + llm_sync_ms, encoder_sync_ms);
  if (layout.placement != EncoderPlacement::Colocated)
    return std::max(llm_ms, encoder_ms) + llm_sync_ms + encoder_sync_ms;
  // Colocated: a device runs its rank's LLM work and its encoder rank's items one after the
  // other, so the step is at least the devices' average of both.
  const double busy_sum = std::accumulate(rank_busy_ms.begin(), rank_busy_ms.end(), 0.0);
  const double device_mean = (busy_sum * layout.llm.tp + encoder_work_ms * layout.encoder.tp) /
                             cost.cluster().world_size();
  return std::max(llm_ms + llm_sync_ms, device_mean) + encoder_sync_ms;
}

}  // namespace dhp::detail
