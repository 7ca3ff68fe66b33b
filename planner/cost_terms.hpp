// The cost model's times written as a linear combination of its calibratable coefficients
// (not installed; shared by cost_model.cpp and calibration.cpp). For fixed coefficients the
// terms reproduce CostModel's times exactly; calibration fits the linear unknowns with least
// squares while the terms themselves (piece efficiency, which ring steps are exposed) are
// re-derived from the current coefficients until they stop changing.
#pragma once

#include <cstdint>
#include <span>

#include "dhp/batch.hpp"
#include "dhp/cost_model.hpp"

namespace dhp::detail {

struct CostTerms {
  double gemm_work = 0;           // flops * (1 + half/n): times 1 / (peak * gemm_efficiency)
  double attention_work = 0;      // same for attention kernels: times 1 / (peak * attention_eff)
  double layer_passes = 0;        // times layer_overhead
  double ring_steps = 0;          // times ring_step_overhead
  double link_bytes_per_gbs = 0;  // bytes / link GB/s: times 1 / comm_efficiency
  double fixed_ms = 0;            // link latencies: not calibrated (they come with the cluster)

  CostTerms& operator+=(const CostTerms& o);
  CostTerms scaled(double factor) const;
};

double evaluate_ms(const CostTerms& terms, const CostCoefficients& coef, double peak_tflops);

// One rank's LLM pieces packed together (CostModel::llm_rank_ms).
CostTerms llm_rank_terms(const CostModel& cost, std::span<const std::int64_t> split_tokens,
                         RingSpan ring, std::span<const std::int64_t> whole_tokens);
CostTerms llm_sequence_terms(const CostModel& cost, std::int64_t tokens, RingSpan ring);
CostTerms encoder_item_terms(const CostModel& cost, const VisualItem& item);
CostTerms encoder_shard_terms(const CostModel& cost, const VisualItem& item, RingSpan ring);
// (query, key) pairs of the ViT's full attention over one item: the sum over its attention
// spans (temporal slices of a video, tiles of an image) of span^2.
double encoder_attention_pairs(const EncoderSpec& enc, const VisualItem& item);
CostTerms p2p_terms(const CostModel& cost, double bytes, bool cross_node);

}  // namespace dhp::detail
