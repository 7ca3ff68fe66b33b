// The module layouts a run may use, and what moving between two of them costs.
#include <algorithm>
#include <numeric>

#include "dhp/error.hpp"
#include "dhp/log.hpp"
#include "layout_search.hpp"

namespace dhp::detail {
namespace {

std::vector<int> tp_candidates(int fixed, const TransformerSpec& arch, int devices_per_node) {
  if (fixed > 0) return {fixed};  // resolve_layout validates it
  std::vector<int> tps;
  for (int tp = 1; tp <= devices_per_node; ++tp)
    if (tp_valid(tp, arch, devices_per_node)) tps.push_back(tp);
  return tps;
}

// Every combination of the open degrees and placements, in tie-break order.
std::vector<PlannerOptions> layout_options(const ClusterSpec& cluster, const ModelSpec& model,
                                           const PlannerOptions& base) {
  const int dpn = cluster.devices_per_node;
  const bool has_encoder = model.encoder.has_value();
  const std::vector<int> llm_tps = tp_candidates(base.llm_tp, model.llm, dpn);
  const std::vector<int> encoder_tps =
      has_encoder ? tp_candidates(base.encoder_tp, model.encoder->arch, dpn) : std::vector<int>{0};
  const bool disjoint_given = base.placement == EncoderPlacement::Disjoint;
  std::vector<bool> placements;  // disjoint?
  if (!disjoint_given) placements.push_back(false);
  if (has_encoder && (disjoint_given || base.search_placement)) placements.push_back(true);
  std::vector<PlannerOptions> out;
  for (bool disjoint : placements) {
    for (int llm_tp : llm_tps) {
      for (int encoder_tp : encoder_tps) {
        PlannerOptions candidate = base;
        candidate.llm_tp = llm_tp;
        candidate.encoder_tp = encoder_tp;
        if (!disjoint) {
          candidate.placement = EncoderPlacement::Colocated;
          candidate.encoder_devices = 0;
          out.push_back(candidate);
          continue;
        }
        candidate.placement = EncoderPlacement::Disjoint;
        const std::vector<int> counts =
            disjoint_given && base.encoder_devices > 0
                ? std::vector<int>{base.encoder_devices}
                : encoder_device_candidates(cluster, llm_tp, encoder_tp, base);
        for (int e : counts) {
          candidate.encoder_devices = e;
          out.push_back(candidate);
        }
      }
    }
  }
  return out;
}

double module_switch_ms(const CostModel& cost, double parameters, int from_tp, int to_tp,
                        int from_replicas, int to_replicas, bool moved) {
  if (!moved && from_tp == to_tp && from_replicas == to_replicas) return 0;
  const TrainingSetup& t = cost.model().training;
  const double shards = std::max(1, to_replicas);
  const double weights = parameters / to_tp * t.bytes_per_param;
  double state = parameters / to_tp * t.bytes_optimizer_state / (t.zero_stage >= 1 ? shards : 1);
  if (t.zero_stage >= 2) state += parameters / to_tp * t.bytes_per_grad / shards;
  const bool multi_node = cost.cluster().world_size() > cost.cluster().devices_per_node;
  return cost.p2p_ms(weights, false) + cost.p2p_ms(state, multi_node);
}

}  // namespace

std::vector<int> encoder_device_candidates(const ClusterSpec& cluster, int llm_tp, int encoder_tp,
                                           const PlannerOptions& base) {
  // About 1/8, 1/4, 3/8 and 1/2 of the devices, rounded down to what resolve_layout accepts.
  const int world = cluster.world_size();
  const int granule =
      world > cluster.devices_per_node ? cluster.devices_per_node : std::lcm(llm_tp, encoder_tp);
  std::vector<int> counts;
  for (int eighths : {1, 2, 3, 4}) {
    const int e = std::max(granule, world * eighths / 8 / granule * granule);
    if (e < world) counts.push_back(e);
  }
  if (base.placement == EncoderPlacement::Disjoint && base.encoder_devices > 0)
    counts.push_back(base.encoder_devices);
  std::sort(counts.begin(), counts.end());
  counts.erase(std::unique(counts.begin(), counts.end()), counts.end());
  return counts;
}

std::vector<LayoutCandidate> layout_candidates(const ClusterSpec& cluster, const ModelSpec& model,
                                               const PlannerOptions& options,
                                               std::vector<std::string>* unfit) {
  std::vector<LayoutCandidate> out;
  for (PlannerOptions candidate : layout_options(cluster, model, options)) {
    candidate.layout_search = LayoutSearch::Off;
    try {
      const Layout layout = resolve_layout(cluster, model, candidate);
      out.push_back(
          LayoutCandidate{candidate, layout, make_cost_model(cluster, model, layout, candidate)});
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::DoesNotFit && e.kind() != ErrorKind::InvalidArgument) throw;
      DHP_LOG_DEBUG("layout {} left out: {}", describe_layout(candidate), e.what());
      if (unfit) unfit->push_back(describe_layout(candidate) + ": " + e.what());
    }
  }
  return out;
}

bool same_layout(const PlannerOptions& a, const PlannerOptions& b) {
  return a.llm_tp == b.llm_tp && a.encoder_tp == b.encoder_tp && a.placement == b.placement &&
         a.encoder_devices == b.encoder_devices;
}

double layout_switch_ms(const LayoutCandidate& from, const LayoutCandidate& to) {
  if (same_layout(from.options, to.options)) return 0;
  const CostModel& cost = to.cost;
  const ModelSpec& model = cost.model();
  double ms = module_switch_ms(cost, model.llm.parameters(), from.layout.llm_tp, to.layout.llm_tp,
                               from.layout.llm.ranks, to.layout.llm.ranks,
                               from.layout.llm.first_device != to.layout.llm.first_device);
  if (model.encoder && to.layout.encoder.ranks > 0) {
    const double parameters =
        model.encoder->arch.parameters() + model.encoder->projector_parameters;
    ms += module_switch_ms(cost, parameters, from.layout.encoder_tp, to.layout.encoder_tp,
                           from.layout.encoder.ranks, to.layout.encoder.ranks,
                           from.layout.placement != to.layout.placement);
  }
  return ms;
}

}  // namespace dhp::detail
