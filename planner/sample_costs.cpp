// Per-sample figures every estimate of one batch needs (LLM tokens and bytes, each visual
// item's encoder time and spans), computed once per batch.
#include <algorithm>

#include "internal.hpp"

namespace dhp::detail {

SampleCosts make_sample_costs(const Batch& batch, const CostModel& cost, const Layout& layout) {
  SampleCosts sc;
  const bool has_encoder = layout.encoder.ranks > 0;
  sc.whole_bytes.reserve(batch.samples.size());
  sc.encoder_held.reserve(batch.samples.size());
  sc.visual_offset.reserve(batch.samples.size() + 1);
  sc.tokens.reserve(batch.samples.size());
  for (int s = 0; s < static_cast<int>(batch.samples.size()); ++s) {
    const Sample& sample = batch.samples[s];
    sc.tokens.push_back(sample.llm_tokens());
    sc.whole_bytes.push_back(cost.llm_activation_bytes(sc.tokens.back(), 1));
    sc.visual_offset.push_back(static_cast<int>(sc.encoder_ms.size()));
    sc.encoder_held.push_back(0.0);
    if (!has_encoder) continue;
    for (int v = 0; v < static_cast<int>(sample.visuals.size()); ++v) {
      const VisualItem& item = sample.visuals[v];
      sc.encoder_ms.push_back(cost.encoder_item_ms(item));
      sc.encoder_spans.push_back(encoder_spans(*cost.model().encoder, item));
      const EncoderBytes bytes = cost.encoder_item_bytes(item);
      sc.encoder_held.back() += bytes.held;
      sc.visuals_longest_first.push_back(
          SampleCosts::Visual{s, v, sc.encoder_ms.back(), bytes, item.llm_tokens});
    }
  }
  sc.visual_offset.push_back(static_cast<int>(sc.encoder_ms.size()));
  // Longest first; ties by (sample, visual): the order they were pushed in.
  std::stable_sort(
      sc.visuals_longest_first.begin(), sc.visuals_longest_first.end(),
      [](const SampleCosts::Visual& a, const SampleCosts::Visual& b) { return a.ms > b.ms; });
  return sc;
}

}  // namespace dhp::detail
