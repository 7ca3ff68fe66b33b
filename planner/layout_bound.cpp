// A lower bound on any plan's estimated step under one module layout, before packing: what
// lets the per-batch layout search skip layouts that cannot win.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <unordered_map>

#include "layout_search.hpp"

namespace dhp::detail {
namespace {

struct ItemKey {
  std::int64_t patches, tokens;
  int frames;
  bool operator==(const ItemKey&) const = default;
};
struct ItemKeyHash {
  std::size_t operator()(const ItemKey& k) const {
    return std::hash<std::int64_t>()(k.patches * 1000003 + k.tokens) ^ std::hash<int>()(k.frames)
                                                                           << 1;
  }
};

}  // namespace

LayoutBounds::LayoutBounds(const Batch& batch) : batch_(batch) {
  // Real batches repeat lengths and items (fixed image sizes): each distinct one is priced
  // once per TP degree.
  std::vector<std::int64_t> tokens;
  tokens.reserve(batch.samples.size());
  std::unordered_map<ItemKey, std::size_t, ItemKeyHash> item_index;
  for (const Sample& s : batch.samples) {
    tokens.push_back(s.llm_tokens());
    for (const VisualItem& v : s.visuals) {
      const auto [it, added] =
          item_index.emplace(ItemKey{v.patches, v.llm_tokens, v.frames}, items_.size());
      if (added) items_.push_back({v, 0});
      ++items_[it->second].second;
    }
  }
  std::sort(tokens.begin(), tokens.end(), std::greater<>());
  for (std::int64_t t : tokens) {
    if (lengths_.empty() || lengths_.back().first != t) lengths_.push_back({t, 0});
    ++lengths_.back().second;
  }
}

// Every visual item whole on one encoder rank at this encoder TP: the parts of a cut item
// add up to at least the whole's time.
double LayoutBounds::encoder_work_ms(const CostModel& cost) {
  for (const auto& [tp, ms] : encoder_work_)
    if (tp == cost.encoder_tp()) return ms;
  double work = 0;
  for (const auto& [item, count] : items_) work += count * cost.encoder_item_ms(item);
  encoder_work_.emplace_back(cost.encoder_tp(), work);
  return work;
}

// The least rank-time of every sequence under this LLM TP, each whole on one rank (marginal,
// without a rank's fixed part): split over d ranks a sequence takes d x its per-member time,
// and that grows with d (a smaller share runs less efficiently, the ring adds its exchange),
// so no plan spends less.
const LayoutBounds::LlmFigures& LayoutBounds::llm_figures(const CostModel& cost) {
  for (const LlmFigures& f : llm_)
    if (f.llm_tp == cost.llm_tp()) return f;
  LlmFigures f;
  f.llm_tp = cost.llm_tp();
  f.fixed_ms = cost.llm_rank_fixed_ms();
  for (const auto& [tokens, count] : lengths_) {
    f.whole_work_ms += count * (cost.llm_sequence_ms(tokens, RingSpan{1, false}) - f.fixed_ms);
    f.whole_bytes += count * cost.llm_activation_bytes(tokens, 1);
  }
  llm_.push_back(std::move(f));
  return llm_.back();
}

// The LLM's least rank-time under this layout: as llm_figures, except that a sequence whose
// activations do not fit one rank whole (its encoder items' charge left out: the bound stays
// below) runs at its memory-minimal degree d, d x its per-member time (only the longest
// sequences are looked at: they come first); and every rank pays its fixed part and a wave's
// overhead in each wave it works in, which is at least as often as the activations need a
// rank's budget (d members of a ring hold at least the whole sequence's bytes together).
double LayoutBounds::llm_work_ms(const CostModel& cost, const Layout& layout) {
  const LlmFigures& f = llm_figures(cost);
  const double budget = llm_activation_budget(cost, layout, batch_);
  const int R = layout.llm.ranks;
  const double rank_waves = std::ceil(f.whole_bytes / budget - 1e-9);
  double work = f.whole_work_ms + rank_waves * (f.fixed_ms + cost.wave_overhead_ms());
  // Lengths come longest first, so each one's memory-minimal degree is at most the last's.
  int lo = R;
  for (const auto& [tokens, count] : lengths_) {
    if (cost.llm_activation_bytes(tokens, 1) <= budget) break;
    while (lo > 2 && cost.llm_activation_bytes(tokens, lo - 1) <= budget) --lo;
    // Candidates of one LLM TP often share the degree: priced once.
    const RingSpan ring = expected_ring(lo, layout);
    const SplitKey key{cost.llm_tp(), tokens, lo, ring.crosses_nodes};
    auto it = split_extra_.find(key);
    if (it == split_extra_.end()) {
      const double whole = cost.llm_sequence_ms(tokens, RingSpan{1, false}) - f.fixed_ms;
      const double split = lo * (cost.llm_sequence_ms(tokens, ring) - f.fixed_ms);
      it = split_extra_.emplace(key, std::max(0.0, split - whole)).first;
    }
    work += count * it->second;
  }
  return work;
}

double LayoutBounds::step_ms(const LayoutCandidate& candidate) {
  const CostModel& cost = candidate.cost;
  const Layout& layout = candidate.layout;
  const int R = layout.llm.ranks;
  const int E = layout.encoder.ranks;
  const double encoder_work = E > 0 ? encoder_work_ms(cost) : 0.0;
  const double llm_work = llm_work_ms(cost, layout);  // rank-ms
  // At most the overlap fraction of each module's gradient sync hides under its backward
  // (as step_lower_bound_ms has it for drafts).
  const double hidden = cost.coefficients().grad_sync_overlap;
  const double llm_sync = (1 - hidden) * cost.llm_grad_sync_full_ms(R);
  const double encoder_sync = E > 0 ? (1 - hidden) * cost.encoder_grad_sync_full_ms(E) : 0.0;
  const double llm_ms = llm_work / R;  // the busiest rank runs at least the mean
  if (encoder_work <= 0) return std::max(llm_ms + llm_sync, encoder_sync);
  if (layout.placement != EncoderPlacement::Colocated)
    return std::max(llm_ms, encoder_work / E) + llm_sync + encoder_sync;
  const double device_mean =
      (llm_work * layout.llm.tp + encoder_work * layout.encoder.tp) / cost.cluster().world_size();
  return std::max(llm_ms + llm_sync, device_mean) + encoder_sync;
}

}  // namespace dhp::detail
