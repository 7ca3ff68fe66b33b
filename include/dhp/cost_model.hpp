// Analytic cost model: compute, communication and memory of one rank's share of the work.
// The planner optimises against it; the simulator (simulator.hpp) re-derives times at a
// finer grain from the same coefficients, so the planner does not grade itself.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "dhp/batch.hpp"
#include "dhp/cluster.hpp"
#include "dhp/encoder_geometry.hpp"
#include "dhp/model.hpp"

namespace dhp {

// Calibratable coefficients. Analytic defaults per device kind (defaults_for()).
struct CostCoefficients {
  double gemm_efficiency = 0.62;        // fraction of peak reached by large linear layers
  double attention_efficiency = 0.55;   // fraction of peak reached by long attention tiles
  double half_efficiency_tokens = 384;  // a piece of this many tokens runs at half efficiency
  double layer_overhead_us = 25;        // launches, norms, rotary, per layer and pass
  double ring_step_overhead_us = 12;    // per ring step: stream sync, buffer swap
  double comm_efficiency = 0.8;         // achieved fraction of link bandwidth
  double overlap_efficiency = 0.9;      // fraction of a ring transfer hidden under compute
  double activation_bytes_per_token_layer = 0;  // 0: derived from the architecture
  double grad_sync_overlap = 0.5;               // fraction of gradient sync hidden under backward
};

CostCoefficients defaults_for(const ClusterSpec& cluster);

// Encoder activations of one visual item (or a part of it, encoder_part) on one device of its
// encoder rank. `held` lives from the item's forward to its backward: each layer's input
// under full recompute (every layer's activations without), and the outputs handed to the
// LLM. `working` is what the layer being computed needs on top while it runs: with full
// recompute its full activations, one span group at a time where the item's spans are
// independent (TrainingSetup::encoder_span_group_patches); a ring shard's KV blocks in
// flight. A rank runs one item at a time: it holds the held bytes of all its items and the
// working bytes of one.
struct EncoderBytes {
  double held = 0;
  double working = 0;
  double peak() const { return held + working; }
};

// How a group's ring is laid out on the cluster.
struct RingSpan {
  int degree = 1;
  bool crosses_nodes = false;  // at least one ring hop goes over the inter-node link
};

class CostModel {
 public:
  CostModel(ClusterSpec cluster, ModelSpec model, int llm_tp, int encoder_tp,
            CostCoefficients coefficients);
  CostModel(ClusterSpec cluster, ModelSpec model, int llm_tp, int encoder_tp);

  const ClusterSpec& cluster() const { return cluster_; }
  const ModelSpec& model() const { return model_; }
  const CostCoefficients& coefficients() const { return coef_; }
  int llm_tp() const { return llm_tp_; }
  int encoder_tp() const { return encoder_tp_; }

  // --- compute, forward + backward (+ recompute), all layers, one rank's share ---
  // A sequence of `tokens` zigzag-split over ring.degree ranks (degree 1 = whole on one
  // rank): per-rank time including ring steps overlapped with attention. Non-increasing
  // in the degree until communication dominates.
  // The single-piece case of llm_rank_ms.
  double llm_sequence_ms(std::int64_t tokens, RingSpan ring) const;
  // One rank's LLM time for all its pieces packed together, as real ranks run them: the
  // linear layers once over the rank's total local tokens (one efficiency, one launch per
  // layer and pass, one set of TP collectives); attention per sequence at the efficiency of
  // its own local length; the ring steps of all `split_tokens` (zigzag over ring.degree)
  // together. `whole_tokens` are held whole. An empty rank costs 0.
  double llm_rank_ms(std::span<const std::int64_t> split_tokens, RingSpan ring,
                     std::span<const std::int64_t> whole_tokens) const;
  // The part of llm_rank_ms that a rank pays once however many tokens it holds (linear
  // efficiency floor, layer launches, TP latencies): llm_rank_ms minus it is additive over
  // whole sequences, which is what the packer uses as marginal cost.
  double llm_rank_fixed_ms() const;
  // Encoder forward + backward for one visual item on one encoder rank.
  double encoder_item_ms(const VisualItem& item) const;
  // One of ring.degree equal shards of `item` (the whole item, not a shard of it), encoded
  // together as a ring over ring.degree encoder ranks: each shard's linear layers, 1/degree
  // of the attention pairs, and the KV exchange overlapped with it. Degree 1: encoder_item_ms.
  double encoder_shard_ms(const VisualItem& item, RingSpan ring) const;
  // Fixed cost of one wave (micro-batch): launches, pipeline flush, optimizer-free.
  double wave_overhead_ms() const;

  // --- communication ---
  double p2p_ms(double bytes, bool cross_node) const;
  double allreduce_ms(double bytes, int ranks, bool cross_node) const;
  double alltoall_ms(double bytes_per_rank, int ranks, bool cross_node) const;
  // Encoder outputs of `llm_tokens` tokens moved to the LLM ranks (and gradients back).
  double boundary_ms(std::int64_t llm_tokens, bool cross_node) const;
  // Gradient synchronisation of the LLM (and encoder) over their replica ranks, exposed part.
  double grad_sync_ms(int llm_ranks, int encoder_ranks) const;

  // --- memory, bytes per device ---
  // Parameters + gradients + optimizer state of the LLM on one device, sharded over
  // `replicas` data-parallel (DP x CP) ranks according to the ZeRO stage.
  double llm_static_bytes(int replicas) const;
  double encoder_static_bytes(int replicas) const;
  // Activations kept for backward of one sequence's share on one device, plus the ring's
  // KV send/receive buffers when degree > 1.
  double llm_activation_bytes(std::int64_t tokens, int degree) const;
  EncoderBytes encoder_item_bytes(const VisualItem& item) const;
  // A ring shard (encoder_part) of an item cut into `degree` shards: its own activations
  // plus the KV blocks in flight (the one in use and the one arriving).
  EncoderBytes encoder_shard_bytes(const VisualItem& shard, int degree) const;
  // Their peak while the item (or shard) runs alone: held + working.
  double encoder_activation_bytes(const VisualItem& item) const;
  double encoder_shard_activation_bytes(const VisualItem& shard, int degree) const;
  // The patches one encoder layer runs at once for `item`: a span group of whole spans
  // (TrainingSetup::encoder_span_group_patches), or all of them.
  std::int64_t encoder_span_group_patches(const VisualItem& item) const;
  double capacity_bytes() const;  // device memory minus the reserve

  // Flop counts (forward, whole model) used by compute times and by calibration.
  double llm_linear_flops(std::int64_t tokens) const;
  double llm_attention_flops(std::int64_t tokens) const;  // causal: counted once

  // --- building blocks shared with the simulator (one TP rank, milliseconds) ---
  // Fraction of peak a piece of `tokens` tokens reaches: eff_max * n / (n + half).
  double gemm_efficiency(double tokens) const;
  double attention_efficiency(double tokens) const;
  // Time of `flops` (already this rank's share) run as a piece of `tokens` tokens.
  double gemm_ms(double flops, double tokens) const;
  double attention_ms(double flops, double tokens) const;
  // Forward flops of one LLM layer's linear parts for `tokens` tokens, whole TP group:
  // the q/k/v projection, and the rest (output projection + MLP).
  double llm_layer_qkv_flops(double tokens) const;
  double llm_layer_post_flops(double tokens) const;
  double llm_output_layer_flops(double tokens) const;  // forward, the vocabulary projection
  // Forward attention flops of `pairs` causal (query, key) pairs in one layer, whole TP group.
  double llm_attention_pair_flops(double pairs) const;
  // Sequence-parallel TP collectives of one layer and one pass over `tokens` tokens.
  double llm_tp_comm_ms(double tokens) const;
  // Bytes of one ring KV block of `tokens` tokens sent by one TP shard.
  double kv_block_bytes(double tokens) const;
  double layer_overhead_ms() const;
  double ring_step_overhead_ms() const;
  // Compute multiplier of a forward: 3 (forward + 2x backward), 4 with full recompute.
  double compute_passes() const;
  // Unhidden gradient synchronisation of each module alone (before grad_sync_overlap).
  double llm_grad_sync_full_ms(int llm_ranks) const;
  double encoder_grad_sync_full_ms(int encoder_ranks) const;

 private:
  ClusterSpec cluster_;
  ModelSpec model_;
  int llm_tp_;
  int encoder_tp_;
  CostCoefficients coef_;
};

// --- calibration: fit coefficients to measured profiles with least squares ---
// One measured time and what it covered. The kinds a runtime measures for a whole rank:
// "llm_rank" (one rank's LLM forward and backward in a wave: the shares of the group's
// zigzag sequences, split_tokens, and its whole ones, whole_tokens, on a ring of `degree`),
// "encoder_rank" (one encoder rank's forward and backward in a wave: its parts, each whole
// or one shard of a ring of `ring` parts). Profiles of single pieces: "llm_sequence",
// "encoder_item", "p2p".
struct EncoderPartMeasurement {
  VisualItem item;  // the part encoded (ring == 1), or the whole item a shard belongs to
  int ring = 1;     // shards of the item's ring (1: encoded on its own)
};

struct Measurement {
  std::string kind;  // "llm_sequence" | "encoder_item" | "p2p" | "llm_rank" | "encoder_rank"
  std::int64_t tokens = 0;
  int degree = 1;
  bool crosses_nodes = false;
  std::int64_t patches = 0;  // encoder_item
  int frames = 1;            // encoder_item: video frames of the item (1 for an image)
  double bytes = 0;          // p2p
  std::vector<std::int64_t> split_tokens{}, whole_tokens{};  // llm_rank
  std::vector<EncoderPartMeasurement> encoder_parts{};       // encoder_rank
  double measured_ms = 0;
};

struct CalibrationReport {
  CostCoefficients coefficients;
  double mean_abs_rel_error_before = 0;  // of the defaults on the measurements
  double mean_abs_rel_error_after = 0;   // of the fitted coefficients
  double max_abs_rel_error_after = 0;
  int measurements = 0;
};

std::vector<Measurement> measurements_from_json(const std::string& text);
CalibrationReport calibrate(const ClusterSpec& cluster, const ModelSpec& model, int llm_tp,
                            int encoder_tp, const std::vector<Measurement>& measurements);

}  // namespace dhp
