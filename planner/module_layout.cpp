// Module layouts: which TP degrees divide a model's heads and a node, how many LLM and encoder
// ranks a cluster then holds (colocated or disjoint), and the default layout that leaves room
// for activations.
#include <algorithm>
#include <cmath>
#include <limits>

#include "dhp/error.hpp"
#include "internal.hpp"
#include "units.hpp"

namespace dhp::detail {
namespace {

CostCoefficients coefficients_of(const ClusterSpec& cluster, const PlannerOptions& options) {
  return options.coefficients_set ? options.coefficients : defaults_for(cluster);
}

// Activation room a layout must leave at least, so that ordinary sequences can run.
constexpr std::int64_t kMinActivationTokens = 16384;

void fill_module_layouts(Layout& layout, const ClusterSpec& cluster, const ModelSpec& model,
                         const PlannerOptions& options) {
  const int world = cluster.world_size();
  const int dpn = cluster.devices_per_node;
  const bool has_encoder = model.encoder.has_value();
  layout.placement = options.placement;
  layout.split_visual_items =
      has_encoder && options.split_visual_items &&
      (options.strategy == Strategy::Dhp || options.strategy == Strategy::Exact);
  if (options.placement == EncoderPlacement::Colocated) {
    layout.llm = ModuleLayout{layout.llm_tp, 0, world / layout.llm_tp};
    layout.encoder =
        ModuleLayout{layout.encoder_tp, 0, has_encoder ? world / layout.encoder_tp : 0};
    layout.llm_ranks_per_node = std::min(dpn / layout.llm_tp, layout.llm.ranks);
    return;
  }
  const int enc_devices = options.encoder_devices;
  layout.encoder = ModuleLayout{layout.encoder_tp, 0, enc_devices / layout.encoder_tp};
  layout.llm = ModuleLayout{layout.llm_tp, enc_devices, (world - enc_devices) / layout.llm_tp};
  layout.llm_ranks_per_node = std::min(dpn / layout.llm_tp, layout.llm.ranks);
}

void validate_disjoint(const ClusterSpec& cluster, const ModelSpec& model,
                       const PlannerOptions& options, int llm_tp, int encoder_tp) {
  const int world = cluster.world_size();
  const int dpn = cluster.devices_per_node;
  const int e = options.encoder_devices;
  DHP_CHECK(model.encoder.has_value(), InvalidArgument,
            "placement=disjoint needs a model with an encoder; model '{}' is text-only",
            model.name);
  DHP_CHECK(e > 0 && e < world, InvalidArgument,
            "placement=disjoint needs 0 < encoder_devices < {} devices, got {}", world, e);
  DHP_CHECK(e % encoder_tp == 0 && e % llm_tp == 0, InvalidArgument,
            "encoder_devices={} must be a multiple of encoder tp={} and llm tp={}", e, encoder_tp,
            llm_tp);
  // Rank -> node arithmetic in place_groups assumes the LLM starts on a node boundary.
  DHP_CHECK(world <= dpn || e % dpn == 0, InvalidArgument,
            "encoder_devices={} must be a multiple of devices_per_node={} on a multi-node cluster",
            e, dpn);
}

}  // namespace

bool tp_valid(int tp, const TransformerSpec& arch, int devices_per_node) {
  const int kv = arch.kv_heads > 0 ? arch.kv_heads : arch.heads;
  auto divides = [tp](int n) { return tp > 0 && n % tp == 0; };
  return divides(arch.heads) && divides(kv) && divides(devices_per_node);
}

Layout resolve_layout(const ClusterSpec& cluster, const ModelSpec& model,
                      const PlannerOptions& options) {
  const int world = cluster.world_size();
  const int dpn = cluster.devices_per_node;
  DHP_CHECK(world >= 1 && dpn >= 1, InvalidArgument,
            "cluster '{}' has no devices: num_nodes={}, devices_per_node={}", cluster.name,
            cluster.num_nodes, cluster.devices_per_node);
  DHP_CHECK(model.llm.heads > 0, InvalidArgument, "model '{}' has llm heads={}", model.name,
            model.llm.heads);
  const bool has_encoder = model.encoder.has_value();
  const TransformerSpec* enc_arch = has_encoder ? &model.encoder->arch : nullptr;

  if (options.llm_tp > 0) {
    DHP_CHECK(tp_valid(options.llm_tp, model.llm, dpn), InvalidArgument,
              "llm_tp={} must divide heads={}, kv_heads={} and devices_per_node={}", options.llm_tp,
              model.llm.heads, model.llm.kv_heads, dpn);
  }
  if (options.encoder_tp > 0 && has_encoder) {
    DHP_CHECK(tp_valid(options.encoder_tp, *enc_arch, dpn), InvalidArgument,
              "encoder_tp={} must divide encoder heads={}, kv_heads={} and devices_per_node={}",
              options.encoder_tp, enc_arch->heads, enc_arch->kv_heads, dpn);
  }

  const CostCoefficients coef = coefficients_of(cluster, options);
  std::vector<int> llm_candidates;
  std::vector<int> encoder_candidates;
  for (int t = 1; t <= dpn; ++t) {
    if (options.llm_tp > 0 ? t == options.llm_tp : tp_valid(t, model.llm, dpn))
      llm_candidates.push_back(t);
    if (!has_encoder) continue;
    if (options.encoder_tp > 0 ? t == options.encoder_tp : tp_valid(t, *enc_arch, dpn))
      encoder_candidates.push_back(t);
  }
  if (!has_encoder) encoder_candidates = {1};
  DHP_CHECK(!llm_candidates.empty(), InvalidArgument,
            "no llm tp divides heads={}, kv_heads={} and devices_per_node={}", model.llm.heads,
            model.llm.kv_heads, dpn);
  DHP_CHECK(!encoder_candidates.empty(), InvalidArgument,
            "no encoder tp divides the encoder heads and devices_per_node={}", dpn);

  // Smallest (llm tp, encoder tp) pair, LLM first, whose static memory leaves room for
  // kMinActivationTokens of activations: small TP means less TP communication.
  double best_room = -std::numeric_limits<double>::infinity();
  Layout best_layout;
  for (int lt : llm_candidates) {
    for (int et : encoder_candidates) {
      Layout layout;
      layout.llm_tp = lt;
      layout.encoder_tp = et;
      if (options.placement == EncoderPlacement::Disjoint)
        validate_disjoint(cluster, model, options, lt, et);
      fill_module_layouts(layout, cluster, model, options);
      DHP_CHECK(layout.llm.ranks >= 1, InvalidArgument,
                "no LLM ranks: {} devices, llm tp={}, encoder_devices={}", world, lt,
                options.encoder_devices);
      const CostModel cost(cluster, model, lt, et, coef);
      const double need = cost.llm_activation_bytes(kMinActivationTokens, 1);
      Batch empty;
      const double room = llm_activation_budget(cost, layout, empty) - need;
      bool encoder_fits = true;
      if (options.placement == EncoderPlacement::Disjoint)
        encoder_fits = cost.capacity_bytes() - cost.encoder_static_bytes(layout.encoder.ranks) > 0;
      if (room >= 0 && encoder_fits) return layout;
      if (encoder_fits && room > best_room) {
        best_room = room;
        best_layout = layout;
      }
    }
  }
  // No tp leaves the comfortable room: take the one with the most activation room, if any.
  if (std::isfinite(best_room)) {
    const CostModel cost(cluster, model, best_layout.llm_tp, best_layout.encoder_tp, coef);
    Batch empty;
    if (llm_activation_budget(cost, best_layout, empty) > 0) return best_layout;
  }
  DHP_THROW(DoesNotFit,
            "model '{}' does not fit on cluster '{}' with any tp: best llm tp={} leaves {:.2f} GiB "
            "short of the {:.2f} GiB needed for {} tokens of activations",
            model.name, cluster.name, best_layout.llm_tp, -best_room / kGiB,
            CostModel(cluster, model, best_layout.llm_tp, best_layout.encoder_tp, coef)
                    .llm_activation_bytes(kMinActivationTokens, 1) /
                kGiB,
            kMinActivationTokens);
}

CostModel make_cost_model(const ClusterSpec& cluster, const ModelSpec& model, const Layout& layout,
                          const PlannerOptions& options) {
  return CostModel(cluster, model, layout.llm_tp, layout.encoder_tp,
                   coefficients_of(cluster, options));
}

}  // namespace dhp::detail
