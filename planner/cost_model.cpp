// Analytic cost model. Every formula is written out, with its source, in docs/cost_model.md.
// Times are built as CostTerms (cost_terms.hpp) so that calibration fits exactly the model
// the planner uses.
#include "dhp/cost_model.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <mutex>
#include <set>
#include <span>
#include <string>

#include "cost_terms.hpp"
#include "dhp/error.hpp"
#include "dhp/log.hpp"
#include "units.hpp"

namespace dhp {
namespace {

bool contains_ignore_case(std::string text, std::string word) {
  auto lower = [](std::string& s) {
    std::transform(s.begin(), s.end(), s.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  };
  lower(text);
  lower(word);
  return text.find(word) != std::string::npos;
}

// Bytes of the K and V of `tokens` tokens on one of `tp` ranks: one ring block.
double kv_bytes(const TransformerSpec& a, double tokens, double bytes_per_activation, int tp) {
  const double kv_width = static_cast<double>(a.kv_heads) * a.head_dim();
  return tokens * 2.0 * kv_width * bytes_per_activation / tp;
}

// Linear flops of one transformer layer per token, forward (Narayanan et al. 2021, with
// grouped-query k/v and a gated MLP): 2 flops per multiply-add.
double qkv_flops_per_token(const TransformerSpec& a) {
  const double kv_width = static_cast<double>(a.kv_heads) * a.head_dim();
  return 2.0 * a.hidden * (a.hidden + 2.0 * kv_width);
}
double post_flops_per_token(const TransformerSpec& a) {
  return 2.0 * (static_cast<double>(a.hidden) * a.hidden +
                (a.gated_mlp ? 3.0 : 2.0) * a.hidden * a.ffn_hidden);
}

// Sequence-parallel TP collectives of one layer and one pass: 2 all-gathers + 2
// reduce-scatters of tokens * hidden activations, inside the node.
detail::CostTerms tp_comm_terms(const ClusterSpec& cluster, int tp, double tokens, int hidden,
                                double bytes_per_activation) {
  detail::CostTerms t;
  if (tp <= 1) return t;
  const double bytes = tokens * hidden * bytes_per_activation;
  const double share = (tp - 1.0) / tp;
  t.link_bytes_per_gbs = 4.0 * share * bytes / cluster.intra_node.bandwidth_gbs;
  t.fixed_ms = 4.0 * (tp - 1.0) * cluster.intra_node.latency_us / 1e3;
  return t;
}

// Forward+backward passes that launch every layer (and its TP collectives).
double layer_pass_count(const TrainingSetup& training) {
  return training.recompute == Recompute::Full ? 3.0 : 2.0;
}

// Activation bytes one token keeps per layer for backward, before the TP split (Korthikanti
// et al. 2022, table 2; their byte counts assume 2-byte activations). `seq` is the length of
// the sequence the token attends over (only the no-recompute s^2 term needs it).
double activation_bytes_per_token_layer(const TransformerSpec& a, const TrainingSetup& training,
                                        double seq, double override_bytes) {
  if (override_bytes > 0) return override_bytes;
  const double scale = training.bytes_per_activation / 2.0;
  const double h = a.hidden;
  switch (training.recompute) {
    case Recompute::None:
      return scale * (34.0 * h + 5.0 * a.heads * seq);
    case Recompute::Selective:
      return scale * 34.0 * h;
    case Recompute::Full:
      return scale * 2.0 * h;  // the layer input only
  }
  return scale * 34.0 * h;
}

double static_bytes(double parameters, int tp, int replicas, const TrainingSetup& training) {
  const double shards = std::max(1, replicas);
  const double grads = training.bytes_per_grad / (training.zero_stage >= 2 ? shards : 1.0);
  const double optimizer =
      training.bytes_optimizer_state / (training.zero_stage >= 1 ? shards : 1.0);
  return parameters / tp * (training.bytes_per_param + grads + optimizer);
}

// Hierarchical all-reduce of `bytes` per device over `ranks` replicas of `tp` devices each:
// reduce-scatter inside the node over NVLink, all-reduce of the node-local shard across
// nodes (every device drives its own NIC, so each carries 1/local of the bytes), all-gather
// inside the node. That is what NCCL's ring/tree over DGX nodes achieves; a flat ring at NIC
// speed would be `local` times too slow.
double hierarchical_allreduce_ms(const CostModel& cost, double bytes, int ranks, int tp) {
  if (ranks <= 1 || bytes <= 0) return 0;
  const int per_node = std::max(1, cost.cluster().devices_per_node / tp);
  const int local = std::min(ranks, per_node);
  const int nodes = (ranks + local - 1) / local;
  return cost.allreduce_ms(bytes, local, false) + cost.allreduce_ms(bytes / local, nodes, true);
}

// Gradient synchronisation of one module over `ranks` replicas: all-reduce of the
// gradients, or under ZeRO >= 1 a reduce-scatter of gradients plus an all-gather of the
// updated bf16 parameters (each half of an all-reduce's volume).
double grad_sync_full(const CostModel& cost, double parameters, int tp, int ranks) {
  if (ranks <= 1 || parameters <= 0) return 0;
  const auto& training = cost.model().training;
  const double shard = parameters / tp;
  if (training.zero_stage == 0) {
    return hierarchical_allreduce_ms(cost, shard * training.bytes_per_grad, ranks, tp);
  }
  return 0.5 * hierarchical_allreduce_ms(cost, shard * training.bytes_per_grad, ranks, tp) +
         0.5 * hierarchical_allreduce_ms(cost, shard * training.bytes_per_param, ranks, tp);
}

}  // namespace

namespace detail {

CostTerms& CostTerms::operator+=(const CostTerms& o) {
  gemm_work += o.gemm_work;
  attention_work += o.attention_work;
  layer_passes += o.layer_passes;
  ring_steps += o.ring_steps;
  link_bytes_per_gbs += o.link_bytes_per_gbs;
  fixed_ms += o.fixed_ms;
  return *this;
}

CostTerms CostTerms::scaled(double factor) const {
  CostTerms t = *this;
  t.gemm_work *= factor;
  t.attention_work *= factor;
  t.layer_passes *= factor;
  t.ring_steps *= factor;
  t.link_bytes_per_gbs *= factor;
  t.fixed_ms *= factor;
  return t;
}

double evaluate_ms(const CostTerms& t, const CostCoefficients& c, double peak_tflops) {
  const double flops_per_ms = peak_tflops * 1e9;
  return t.gemm_work / (flops_per_ms * c.gemm_efficiency) +
         t.attention_work / (flops_per_ms * c.attention_efficiency) +
         t.layer_passes * c.layer_overhead_us / 1e3 + t.ring_steps * c.ring_step_overhead_us / 1e3 +
         t.link_bytes_per_gbs / (1e6 * c.comm_efficiency) + t.fixed_ms;
}

CostTerms p2p_terms(const CostModel& cost, double bytes, bool cross_node) {
  const LinkSpec& link = cross_node ? cost.cluster().inter_node : cost.cluster().intra_node;
  CostTerms t;
  t.link_bytes_per_gbs = bytes / link.bandwidth_gbs;
  t.fixed_ms = link.latency_us / 1e3;
  return t;
}

// The ring's exposed cost on top of the attention: every layer and pass runs d steps over
// the KV blocks in flight. The block for step s + 1 leaves the predecessor as step s
// starts, so each of the d - 1 steps that wait for one takes max(compute + overhead +
// interference, transfer): the transfer slows the step it streams under by
// (1 - overlap_efficiency) of the overlapped time, and once it is longer than the step it
// sets the pace alone. Backward moves KV and dK/dV: twice the bytes, twice the compute.
// `step_attention_work`: one step's forward attention work of one layer (efficiency
// factor included); `full_recompute`: the forward runs again in backward.
CostTerms ring_exchange_terms(const CostModel& cost, double step_attention_work, double block_bytes,
                              RingSpan ring, int layers, bool full_recompute) {
  CostTerms t;
  if (ring.degree <= 1) return t;
  const auto& coef = cost.coefficients();
  const double d = ring.degree;
  const double step_attention_ms =
      step_attention_work / (cost.cluster().peak_tflops * 1e9 * coef.attention_efficiency);
  const double overhead_ms = coef.ring_step_overhead_us / 1e3;
  const double interference = 1.0 - coef.overlap_efficiency;
  struct Pass {
    double compute_scale, bytes_scale;
  };
  const Pass ring_passes[] = {{1, 1}, {2, 2}, {1, 1}};
  const int ring_pass_count = full_recompute ? 3 : 2;
  for (int p = 0; p < ring_pass_count; ++p) {
    const Pass pass = ring_passes[p];
    CostTerms step;
    step.ring_steps = d;
    const CostTerms comm = p2p_terms(cost, block_bytes * pass.bytes_scale, ring.crosses_nodes);
    const double comm_ms = evaluate_ms(comm, coef, cost.cluster().peak_tflops);
    const double compute_ms = pass.compute_scale * step_attention_ms;
    CostTerms exposed;  // per waiting step, beyond its compute and overhead
    if (comm_ms - compute_ms - overhead_ms > interference * std::min(comm_ms, compute_ms)) {
      exposed = comm;  // the transfer sets the pace
      exposed.attention_work = -pass.compute_scale * step_attention_work;
      exposed.ring_steps = -1;
    } else if (comm_ms <= compute_ms) {
      exposed = comm.scaled(interference);
    } else {
      exposed.attention_work = interference * pass.compute_scale * step_attention_work;
    }
    step += exposed.scaled(d - 1);
    t += step.scaled(layers);
  }
  return t;
}

CostTerms llm_rank_terms(const CostModel& cost, std::span<const std::int64_t> split_tokens,
                         RingSpan ring, std::span<const std::int64_t> whole_tokens) {
  DHP_CHECK(ring.degree >= 1, InvalidArgument, "llm_rank_ms: ring degree={} must be >= 1",
            ring.degree);
  const auto& a = cost.model().llm;
  const auto& coef = cost.coefficients();
  const double tp = cost.llm_tp();
  const double d = ring.degree;
  const double passes = cost.compute_passes();
  const double launches = layer_pass_count(cost.model().training);
  const double half = coef.half_efficiency_tokens;

  // Attention runs per sequence (packed sequences do not attend to each other), each at the
  // efficiency of its own local length; zigzag gives every member an equal share of a split one.
  double local = 0;
  double split_local = 0;
  double split_attention_fwd = 0;  // per member, efficiency factor included
  CostTerms t;
  for (std::int64_t tokens : whole_tokens) {
    DHP_CHECK(tokens >= 1, InvalidArgument, "llm_rank_ms: whole tokens={} must be >= 1", tokens);
    const double n = static_cast<double>(tokens);
    local += n;
    t.attention_work += passes * cost.llm_attention_flops(tokens) / tp * (1.0 + half / n);
  }
  for (std::int64_t tokens : split_tokens) {
    DHP_CHECK(tokens >= 1, InvalidArgument, "llm_rank_ms: split tokens={} must be >= 1", tokens);
    const double n = static_cast<double>(tokens) / d;
    local += n;
    split_local += n;
    split_attention_fwd += cost.llm_attention_flops(tokens) / d / tp * (1.0 + half / n);
  }
  t.attention_work += passes * split_attention_fwd;
  if (local <= 0) return t;  // an idle rank costs nothing

  // Linear layers run once over all the rank's local tokens packed together: one efficiency
  // for the whole pack, one launch of every layer, one set of TP collectives.
  const double linear_fwd = a.layers * (qkv_flops_per_token(a) + post_flops_per_token(a)) * local +
                            2.0 * a.hidden * static_cast<double>(a.vocab) * local;
  t.gemm_work = passes * linear_fwd / tp * (1.0 + half / local);
  t.layer_passes = a.layers * launches;
  t += tp_comm_terms(cost.cluster(), cost.llm_tp(), local, a.hidden,
                     cost.model().training.bytes_per_activation)
           .scaled(a.layers * launches);
  if (ring.degree == 1 || split_tokens.empty()) return t;

  // Zigzag gives every step an equal share of the split sequences' attention.
  t += ring_exchange_terms(cost, split_attention_fwd / a.layers / d,
                           cost.kv_block_bytes(split_local), ring, a.layers,
                           cost.model().training.recompute == Recompute::Full);
  return t;
}

CostTerms llm_sequence_terms(const CostModel& cost, std::int64_t tokens, RingSpan ring) {
  DHP_CHECK(tokens >= 1, InvalidArgument, "llm_sequence_ms: tokens={} must be >= 1", tokens);
  DHP_CHECK(ring.degree >= 1, InvalidArgument, "llm_sequence_ms: ring degree={} must be >= 1",
            ring.degree);
  // A rank that runs only this sequence's piece.
  const std::int64_t one[] = {tokens};
  if (ring.degree == 1) return llm_rank_terms(cost, {}, ring, one);
  return llm_rank_terms(cost, one, ring, {});
}

double encoder_attention_pairs(const EncoderSpec& enc, const VisualItem& item) {
  const double slices = temporal_slices(enc, item);
  const double per_slice = static_cast<double>(item.patches) / slices;
  const double tiles = enc.attention_tile_patches > 0
                           ? std::ceil(per_slice / static_cast<double>(enc.attention_tile_patches))
                           : 1.0;
  const double span = per_slice / tiles;
  return slices * tiles * span * span;
}

CostTerms encoder_shard_terms(const CostModel& cost, const VisualItem& item, RingSpan ring) {
  DHP_CHECK(cost.model().encoder.has_value(), InvalidArgument,
            "encoder_item_ms: model '{}' has no encoder", cost.model().name);
  DHP_CHECK(item.patches >= 1, InvalidArgument, "encoder_item_ms: patches={} must be >= 1",
            item.patches);
  DHP_CHECK(ring.degree >= 1 && ring.degree <= item.patches, InvalidArgument,
            "encoder_shard_ms: {} shards of an item of {} patches", ring.degree, item.patches);
  const EncoderSpec& enc = *cost.model().encoder;
  const auto& a = enc.arch;
  const auto& coef = cost.coefficients();
  const double tp = cost.encoder_tp();
  const double n = ring.degree;
  const double patches = static_cast<double>(item.patches) / n;  // this shard's
  // The encoder has its own recompute setting (TrainingSetup::encoder_recompute).
  TrainingSetup encoder_training = cost.model().training;
  encoder_training.recompute = encoder_training.encoder_recompute;
  const bool full = encoder_training.recompute == Recompute::Full;
  const double launches = layer_pass_count(encoder_training);
  const double passes = full ? 4.0 : 3.0;
  const double factor = 1.0 + coef.half_efficiency_tokens / patches;

  CostTerms t;
  const double linear_fwd =
      a.layers * (qkv_flops_per_token(a) + post_flops_per_token(a)) * patches +
      2.0 * enc.projector_parameters * static_cast<double>(item.llm_tokens) / n;
  t.gemm_work = passes * linear_fwd / tp * factor;
  // Full (non-causal) attention within each span the ViT attends over (a temporal slice of
  // a video, a tile of an image; EncoderSpec), every span an equal share of the patches; a
  // shard's queries meet every key of their span, so it does 1/n of the pairs.
  const double attention_fwd =
      a.layers * 2.0 * 2.0 * a.hidden * encoder_attention_pairs(enc, item) / n / tp * factor;
  t.attention_work = passes * attention_fwd;
  t.layer_passes = a.layers * launches;
  t += tp_comm_terms(cost.cluster(), cost.encoder_tp(), patches, a.hidden,
                     cost.model().training.bytes_per_activation)
           .scaled(a.layers * launches);
  const double block_bytes =
      kv_bytes(a, patches, cost.model().training.bytes_per_activation, cost.encoder_tp());
  t += ring_exchange_terms(cost, attention_fwd / a.layers / n, block_bytes, ring, a.layers, full);
  return t;
}

CostTerms encoder_item_terms(const CostModel& cost, const VisualItem& item) {
  return encoder_shard_terms(cost, item, RingSpan{1, false});
}

}  // namespace detail

CostCoefficients defaults_for(const ClusterSpec& cluster) {
  CostCoefficients c;  // the struct's defaults are the H100 ones
  if (contains_ignore_case(cluster.device, "h100") ||
      contains_ignore_case(cluster.device, "h200")) {
    return c;
  }
  if (contains_ignore_case(cluster.device, "910")) {
    // Ascend 910B: CANN's fused attention and GEMMs reach a smaller fraction of peak than
    // cuBLAS/FlashAttention-3 on Hopper, kernel launches through the task scheduler cost
    // more, and HCCL over HCCS/RoCE overlaps less with compute.
    c.gemm_efficiency = 0.5;
    c.attention_efficiency = 0.4;
    c.half_efficiency_tokens = 512;
    c.layer_overhead_us = 45;
    c.ring_step_overhead_us = 25;
    c.comm_efficiency = 0.7;
    c.overlap_efficiency = 0.8;
    return c;
  }
  // Once per device name and process: a trainer builds a cost model for every batch.
  static std::mutex warned_mutex;
  static std::set<std::string> warned;
  const std::lock_guard<std::mutex> lock(warned_mutex);
  if (warned.insert(cluster.device).second) {
    DHP_LOG_WARN("cost model: no analytic defaults for device '{}', using the H100 ones",
                 cluster.device);
  }
  return c;
}

CostModel::CostModel(ClusterSpec cluster, ModelSpec model, int llm_tp, int encoder_tp,
                     CostCoefficients coefficients)
    : cluster_(std::move(cluster)),
      model_(std::move(model)),
      llm_tp_(llm_tp),
      encoder_tp_(encoder_tp),
      coef_(coefficients) {
  DHP_CHECK(llm_tp_ >= 1, InvalidArgument, "CostModel: llm_tp={} must be >= 1", llm_tp_);
  DHP_CHECK(encoder_tp_ >= 1, InvalidArgument, "CostModel: encoder_tp={} must be >= 1",
            encoder_tp_);
  DHP_CHECK(cluster_.peak_tflops > 0, InvalidArgument, "CostModel: peak_tflops={} must be > 0",
            cluster_.peak_tflops);
  DHP_CHECK(coef_.gemm_efficiency > 0 && coef_.attention_efficiency > 0 &&
                coef_.comm_efficiency > 0 && coef_.half_efficiency_tokens >= 0,
            InvalidArgument,
            "CostModel: efficiencies must be > 0 (gemm={}, attention={}, comm={}) and "
            "half_efficiency_tokens={} >= 0",
            coef_.gemm_efficiency, coef_.attention_efficiency, coef_.comm_efficiency,
            coef_.half_efficiency_tokens);
  DHP_CHECK(coef_.grad_sync_overlap >= 0 && coef_.grad_sync_overlap <= 1, InvalidArgument,
            "CostModel: grad_sync_overlap={} must be in [0, 1] (the fraction of gradient sync "
            "hidden under backward)",
            coef_.grad_sync_overlap);
  DHP_CHECK(model_.llm.layers >= 1 && model_.llm.heads >= 1 && model_.llm.kv_heads >= 1,
            InvalidArgument, "CostModel: LLM layers={}, heads={}, kv_heads={} must be >= 1",
            model_.llm.layers, model_.llm.heads, model_.llm.kv_heads);
}

CostModel::CostModel(ClusterSpec cluster, ModelSpec model, int llm_tp, int encoder_tp)
    : CostModel(cluster, std::move(model), llm_tp, encoder_tp, defaults_for(cluster)) {}

double CostModel::llm_sequence_ms(std::int64_t tokens, RingSpan ring) const {
  return detail::evaluate_ms(detail::llm_sequence_terms(*this, tokens, ring), coef_,
                             cluster_.peak_tflops);
}

double CostModel::llm_rank_ms(std::span<const std::int64_t> split_tokens, RingSpan ring,
                              std::span<const std::int64_t> whole_tokens) const {
  return detail::evaluate_ms(detail::llm_rank_terms(*this, split_tokens, ring, whole_tokens), coef_,
                             cluster_.peak_tflops);
}

double CostModel::llm_rank_fixed_ms() const {
  // What a rank's first piece pays on top of its marginal cost: the half-efficiency floor of
  // the packed linear layers, every layer's launch, the TP collectives' latencies.
  const auto& a = model_.llm;
  const double half = coef_.half_efficiency_tokens;
  const double linear_per_token = a.layers * (qkv_flops_per_token(a) + post_flops_per_token(a)) +
                                  2.0 * a.hidden * static_cast<double>(a.vocab);
  const double launches = layer_pass_count(model_.training);
  detail::CostTerms t;
  t.gemm_work = compute_passes() * linear_per_token * half / llm_tp_;
  t.layer_passes = a.layers * launches;
  t.fixed_ms = tp_comm_terms(cluster_, llm_tp_, 0.0, a.hidden, model_.training.bytes_per_activation)
                   .scaled(a.layers * launches)
                   .fixed_ms;
  return detail::evaluate_ms(t, coef_, cluster_.peak_tflops);
}

double CostModel::encoder_item_ms(const VisualItem& item) const {
  return detail::evaluate_ms(detail::encoder_item_terms(*this, item), coef_, cluster_.peak_tflops);
}

double CostModel::encoder_shard_ms(const VisualItem& item, RingSpan ring) const {
  return detail::evaluate_ms(detail::encoder_shard_terms(*this, item, ring), coef_,
                             cluster_.peak_tflops);
}

double CostModel::wave_overhead_ms() const {
  // Embedding, loss and the launch of every layer once more per micro-batch, independent of
  // how many tokens it holds.
  return model_.llm.layers * layer_pass_count(model_.training) * layer_overhead_ms();
}

double CostModel::p2p_ms(double bytes, bool cross_node) const {
  return detail::evaluate_ms(detail::p2p_terms(*this, bytes, cross_node), coef_,
                             cluster_.peak_tflops);
}

double CostModel::allreduce_ms(double bytes, int ranks, bool cross_node) const {
  if (ranks <= 1) return 0;
  const LinkSpec& link = cross_node ? cluster_.inter_node : cluster_.intra_node;
  const double steps = 2.0 * (ranks - 1);  // ring: reduce-scatter then all-gather
  return steps / ranks * bytes / (link.bandwidth_gbs * 1e6 * coef_.comm_efficiency) +
         steps * link.latency_us / 1e3;
}

double CostModel::alltoall_ms(double bytes_per_rank, int ranks, bool cross_node) const {
  if (ranks <= 1) return 0;
  const LinkSpec& link = cross_node ? cluster_.inter_node : cluster_.intra_node;
  return (ranks - 1.0) / ranks * bytes_per_rank /
             (link.bandwidth_gbs * 1e6 * coef_.comm_efficiency) +
         (ranks - 1.0) * link.latency_us / 1e3;
}

double CostModel::boundary_ms(std::int64_t llm_tokens, bool cross_node) const {
  const double bytes =
      static_cast<double>(llm_tokens) * model_.llm.hidden * model_.training.bytes_per_activation;
  return 2.0 * p2p_ms(bytes, cross_node);  // embeddings forward, their gradients backward
}

double CostModel::llm_grad_sync_full_ms(int llm_ranks) const {
  return grad_sync_full(*this, model_.llm.parameters(), llm_tp_, llm_ranks);
}

double CostModel::encoder_grad_sync_full_ms(int encoder_ranks) const {
  if (!model_.encoder) return 0;
  const double params = model_.encoder->arch.parameters() + model_.encoder->projector_parameters;
  return grad_sync_full(*this, params, encoder_tp_, encoder_ranks);
}

double CostModel::grad_sync_ms(int llm_ranks, int encoder_ranks) const {
  return (llm_grad_sync_full_ms(llm_ranks) + encoder_grad_sync_full_ms(encoder_ranks)) *
         (1.0 - coef_.grad_sync_overlap);
}

double CostModel::llm_static_bytes(int replicas) const {
  return static_bytes(model_.llm.parameters(), llm_tp_, replicas, model_.training);
}

double CostModel::encoder_static_bytes(int replicas) const {
  if (!model_.encoder) return 0;
  const double params = model_.encoder->arch.parameters() + model_.encoder->projector_parameters;
  return static_bytes(params, encoder_tp_, replicas, model_.training);
}

double CostModel::llm_activation_bytes(std::int64_t tokens, int degree) const {
  DHP_CHECK(degree >= 1, InvalidArgument, "llm_activation_bytes: degree={} must be >= 1", degree);
  const auto& a = model_.llm;
  const auto& training = model_.training;
  const double local = static_cast<double>(tokens) / degree;
  const double per_token_layer = activation_bytes_per_token_layer(
      a, training, static_cast<double>(tokens), coef_.activation_bytes_per_token_layer);
  double bytes = local * per_token_layer * a.layers;
  if (training.recompute == Recompute::Full && coef_.activation_bytes_per_token_layer <= 0) {
    // The layer being recomputed holds its full set of activations during its backward.
    bytes += local * 34.0 * a.hidden * training.bytes_per_activation / 2.0;
  }
  bytes += local * a.vocab * 4.0;  // fp32 logits of the output layer (vocab-parallel over TP)
  bytes /= llm_tp_;                // sequence parallelism splits every activation over TP
  if (degree > 1) bytes += 2.0 * kv_block_bytes(local);  // block in use + block arriving
  return bytes;
}

std::int64_t CostModel::encoder_span_group_patches(const VisualItem& item) const {
  const std::int64_t group = model_.training.encoder_span_group_patches;
  if (!model_.encoder || group <= 0 || item.patches <= group) return item.patches;
  const int spans = encoder_spans(*model_.encoder, item);
  if (spans <= 1) return item.patches;
  const std::int64_t per_span = (item.patches + spans - 1) / spans;
  return std::min(item.patches, std::max<std::int64_t>(1, group / per_span) * per_span);
}

EncoderBytes CostModel::encoder_item_bytes(const VisualItem& item) const {
  if (!model_.encoder) return {};
  const auto& a = model_.encoder->arch;
  const double patches = static_cast<double>(item.patches);
  // Non-causal flash attention: no s^2 term even without recompute in the ViT.
  TrainingSetup training = model_.training;
  training.recompute = training.encoder_recompute;
  double per_token_layer = activation_bytes_per_token_layer(a, training, patches, 0);
  if (training.recompute == Recompute::None)
    per_token_layer -= 5.0 * a.heads * patches * training.bytes_per_activation / 2.0;
  const double outputs =
      static_cast<double>(item.llm_tokens) * model_.llm.hidden * training.bytes_per_activation;
  EncoderBytes bytes;
  bytes.held = patches * per_token_layer * a.layers / encoder_tp_ + outputs;
  // Full recompute: the layer being (re)computed holds its full activations while it runs.
  if (training.recompute == Recompute::Full) {
    const double group = static_cast<double>(encoder_span_group_patches(item));
    bytes.working = group * 34.0 * a.hidden * training.bytes_per_activation / 2.0 / encoder_tp_;
  }
  return bytes;
}

EncoderBytes CostModel::encoder_shard_bytes(const VisualItem& shard, int degree) const {
  EncoderBytes bytes = encoder_item_bytes(shard);
  if (degree > 1 && model_.encoder) {
    bytes.working += 2.0 * kv_bytes(model_.encoder->arch, static_cast<double>(shard.patches),
                                    model_.training.bytes_per_activation, encoder_tp_);
  }
  return bytes;
}

double CostModel::encoder_activation_bytes(const VisualItem& item) const {
  return encoder_item_bytes(item).peak();
}

double CostModel::encoder_shard_activation_bytes(const VisualItem& shard, int degree) const {
  return encoder_shard_bytes(shard, degree).peak();
}

double CostModel::capacity_bytes() const {
  return (cluster_.mem_capacity_gib - cluster_.mem_reserved_gib) * kGiB;
}

double CostModel::llm_linear_flops(std::int64_t tokens) const {
  const auto& a = model_.llm;
  const double n = static_cast<double>(tokens);
  return n * (a.layers * (qkv_flops_per_token(a) + post_flops_per_token(a)) +
              2.0 * a.hidden * static_cast<double>(a.vocab));
}

double CostModel::llm_attention_flops(std::int64_t tokens) const {
  // QK^T and PV, 2 flops per multiply-add each, over the causal half of the L x L scores.
  const double n = static_cast<double>(tokens);
  return model_.llm.layers * 2.0 * 2.0 * model_.llm.hidden * n * n / 2.0;
}

double CostModel::gemm_efficiency(double tokens) const {
  const double n = std::max(tokens, 1.0);
  return coef_.gemm_efficiency * n / (n + coef_.half_efficiency_tokens);
}

double CostModel::attention_efficiency(double tokens) const {
  const double n = std::max(tokens, 1.0);
  return coef_.attention_efficiency * n / (n + coef_.half_efficiency_tokens);
}

double CostModel::gemm_ms(double flops, double tokens) const {
  return flops / (cluster_.peak_tflops * 1e9 * gemm_efficiency(tokens));
}

double CostModel::attention_ms(double flops, double tokens) const {
  return flops / (cluster_.peak_tflops * 1e9 * attention_efficiency(tokens));
}

double CostModel::llm_layer_qkv_flops(double tokens) const {
  return qkv_flops_per_token(model_.llm) * tokens;
}

double CostModel::llm_layer_post_flops(double tokens) const {
  return post_flops_per_token(model_.llm) * tokens;
}

double CostModel::llm_output_layer_flops(double tokens) const {
  return 2.0 * model_.llm.hidden * static_cast<double>(model_.llm.vocab) * tokens;
}

double CostModel::llm_attention_pair_flops(double pairs) const {
  return 2.0 * 2.0 * model_.llm.hidden * pairs;
}

double CostModel::llm_tp_comm_ms(double tokens) const {
  return detail::evaluate_ms(tp_comm_terms(cluster_, llm_tp_, tokens, model_.llm.hidden,
                                           model_.training.bytes_per_activation),
                             coef_, cluster_.peak_tflops);
}

double CostModel::kv_block_bytes(double tokens) const {
  return kv_bytes(model_.llm, tokens, model_.training.bytes_per_activation, llm_tp_);
}

double CostModel::layer_overhead_ms() const { return coef_.layer_overhead_us / 1e3; }
double CostModel::ring_step_overhead_ms() const { return coef_.ring_step_overhead_us / 1e3; }

double CostModel::compute_passes() const {
  return model_.training.recompute == Recompute::Full ? 4.0 : 3.0;
}

}  // namespace dhp
