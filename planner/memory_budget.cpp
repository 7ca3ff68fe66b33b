// What one rank's pieces cost (time and activation bytes), the device memory left to LLM
// activations once parameters and the encoder's share are held, and the check that every
// sample of a batch can fit at all.
#include <algorithm>

#include "dhp/error.hpp"
#include "internal.hpp"

namespace dhp::detail {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

}  // namespace

double rank_llm_ms(const CostModel& cost, const std::vector<std::int64_t>& split, RingSpan ring,
                   const std::vector<std::int64_t>& whole) {
  return cost.llm_rank_ms(split, ring, whole);
}

double rank_activation_bytes(const CostModel& cost, const std::vector<std::int64_t>& split,
                             int degree, const std::vector<std::int64_t>& whole) {
  double bytes = 0;
  for (std::int64_t t : split) bytes += cost.llm_activation_bytes(t, degree);
  for (std::int64_t t : whole) bytes += cost.llm_activation_bytes(t, 1);
  return bytes;
}

int smallest_cp_holding(const CostModel& cost, std::int64_t longest, int ranks, double budget,
                        std::int64_t max_tokens) {
  for (int c = 1; c <= ranks; ++c) {
    if (ranks % c != 0 || (max_tokens > 0 && local_share(longest, c) > max_tokens)) continue;
    if (rank_activation_bytes(cost, {longest}, c, {}) <= budget) return c;
  }
  return 0;
}

double encoder_reserve_bytes(const CostModel& cost, const Layout& layout, const Batch& batch) {
  if (layout.encoder.ranks == 0) return 0;
  // Room for the two largest visual items per device. The whole batch's encoder activations
  // spread over the encoder ranks would be a guarantee, but it charges every wave for every
  // other wave's items and leaves no room for the LLM on real batches. The LLM is packed to
  // leave this much; build_plan then assigns items within the room each device really has
  // (at least this) and its device-level check stays authoritative.
  double largest = 0;
  for (const Sample& s : batch.samples)
    for (const VisualItem& v : s.visuals)
      largest = std::max(largest, cost.encoder_activation_bytes(v));
  return 2.0 * largest;
}

double llm_activation_budget(const CostModel& cost, const Layout& layout, const Batch& batch) {
  double budget = cost.capacity_bytes() - cost.llm_static_bytes(layout.llm.ranks);
  if (layout.placement == EncoderPlacement::Colocated && layout.encoder.ranks > 0) {
    budget -= cost.encoder_static_bytes(layout.encoder.ranks);
    budget -= encoder_reserve_bytes(cost, layout, batch);
  }
  return budget;
}

void check_batch_fits(const Batch& batch, const CostModel& cost, const Layout& layout) {
  const bool has_encoder = cost.model().encoder.has_value();
  for (const Sample& s : batch.samples) {
    DHP_CHECK(has_encoder || s.visuals.empty(), InvalidInput,
              "sample id={} has {} visual items but model '{}' has no encoder", s.id,
              s.visuals.size(), cost.model().name);
  }
  const double budget = llm_activation_budget(cost, layout, batch);
  const int max_degree = layout.llm.ranks;
  for (const Sample& s : batch.samples) {
    const std::int64_t tokens = s.llm_tokens();
    if (cost.llm_activation_bytes(tokens, 1) <= budget) continue;
    const double need = cost.llm_activation_bytes(tokens, max_degree);
    DHP_CHECK(need <= budget, DoesNotFit,
              "sample id={} with {} LLM tokens needs {:.3f} GiB of activations per rank even "
              "split over all {} LLM ranks; {:.3f} GiB are available (capacity {:.2f} GiB minus "
              "parameters, gradients, optimizer state and encoder reserve)",
              s.id, tokens, need / kGiB, max_degree, budget / kGiB, cost.capacity_bytes() / kGiB);
  }
  if (layout.placement == EncoderPlacement::Disjoint && layout.encoder.ranks > 0) {
    const double enc_budget =
        cost.capacity_bytes() - cost.encoder_static_bytes(layout.encoder.ranks);
    for (const Sample& s : batch.samples) {
      for (const VisualItem& v : s.visuals) {
        const double need = cost.encoder_activation_bytes(v);
        DHP_CHECK(need <= enc_budget, DoesNotFit,
                  "sample id={}: a visual item of {} patches needs {:.3f} GiB of encoder "
                  "activations; an encoder rank has {:.3f} GiB",
                  s.id, v.patches, need / kGiB, enc_budget / kGiB);
      }
    }
  }
}

}  // namespace dhp::detail
