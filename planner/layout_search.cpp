// Run-level choice of dhp's module layout (TP per module, encoder placement). The per-batch
// search holds TP fixed, so the layout is chosen once per run here, by planning a sample of
// the run's batches under every candidate layout and keeping the one whose plans the cost
// model estimates fastest.
#include <algorithm>
#include <cstddef>
#include <limits>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "dhp/error.hpp"
#include "dhp/log.hpp"
#include "dhp/planner.hpp"
#include "internal.hpp"

namespace dhp {
namespace {

// Batches planned per candidate: enough to see the run's mix, few enough that the search
// over tens of layouts stays a small fraction of a run's planning time.
constexpr std::size_t kSampledBatches = 8;

std::vector<int> tp_candidates(int fixed, const TransformerSpec& arch, int devices_per_node) {
  if (fixed > 0) return {fixed};  // resolve_layout validates it
  std::vector<int> tps;
  for (int tp = 1; tp <= devices_per_node; ++tp)
    if (detail::tp_valid(tp, arch, devices_per_node)) tps.push_back(tp);
  return tps;
}

// Encoder device counts for the disjoint placement: about 1/8, 1/4, 3/8 and 1/2 of the
// devices, rounded down to what resolve_layout accepts (whole nodes on a multi-node
// cluster, else a multiple of both TP degrees).
std::vector<int> encoder_device_candidates(const ClusterSpec& cluster, int llm_tp, int encoder_tp,
                                           const PlannerOptions& base) {
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

// Summed estimated step of dhp's plans of the sampled batches under `options`; nullopt when
// the layout is invalid, does not fit some batch of the run, or cannot beat `to_beat`.
std::optional<double> score(const ClusterSpec& cluster, const ModelSpec& model,
                            std::span<const Batch> batches,
                            const std::vector<std::size_t>& sample_index,
                            const PlannerOptions& options, double to_beat) {
  try {
    const detail::Layout layout = detail::resolve_layout(cluster, model, options);
    const CostModel cost = detail::make_cost_model(cluster, model, layout, options);
    // A run-wide layout must hold every batch of the run, not only the sampled ones.
    for (const Batch& batch : batches) detail::check_batch_fits(batch, cost, layout);
    double total_ms = 0;
    for (std::size_t k = 0; k < sample_index.size(); ++k) {
      const Batch& batch = batches[sample_index[k]];
      total_ms += detail::plan_dhp(batch, cost, layout, options).estimate.step_ms;
      if (total_ms >= to_beat) {  // the sum only grows: this layout cannot win
        DHP_LOG_DEBUG("best_dhp_options: {} pruned: {:.3f} ms after {} of {} batches",
                      describe_layout(options), total_ms, k + 1, sample_index.size());
        return std::nullopt;
      }
    }
    return total_ms;
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::DoesNotFit && e.kind() != ErrorKind::InvalidArgument) throw;
    DHP_LOG_DEBUG("best_dhp_options: {} skipped: {}", describe_layout(options), e.what());
    return std::nullopt;
  }
}

}  // namespace

std::string describe_layout(const PlannerOptions& options) {
  std::string text = fmt::format("tp={} etp={} {}", options.llm_tp, options.encoder_tp,
                                 to_string(options.placement));
  if (options.placement == EncoderPlacement::Disjoint)
    text += fmt::format("(enc={})", options.encoder_devices);
  return text;
}

PlannerOptions best_dhp_options(const ClusterSpec& cluster, const ModelSpec& model,
                                std::span<const Batch> batches, PlannerOptions base) {
  DHP_CHECK(!batches.empty(), InvalidArgument, "best_dhp_options: no batches given");
  validate(cluster);
  validate(model);
  for (const Batch& batch : batches) validate(batch);
  base.strategy = Strategy::Dhp;

  const std::size_t sampled = std::min(kSampledBatches, batches.size());
  std::vector<std::size_t> sample_index(sampled);
  for (std::size_t i = 0; i < sampled; ++i) sample_index[i] = i * batches.size() / sampled;

  const int dpn = cluster.devices_per_node;
  const bool has_encoder = model.encoder.has_value();
  const std::vector<int> llm_tps = tp_candidates(base.llm_tp, model.llm, dpn);
  const std::vector<int> encoder_tps =
      has_encoder ? tp_candidates(base.encoder_tp, model.encoder->arch, dpn) : std::vector<int>{0};

  // Candidate order fixes the tie-break: colocated before disjoint, then smaller TP (less
  // TP communication), then fewer encoder devices.
  std::vector<PlannerOptions> candidates;
  for (bool disjoint : {false, true}) {
    if (disjoint && !has_encoder) continue;
    for (int llm_tp : llm_tps) {
      for (int encoder_tp : encoder_tps) {
        PlannerOptions candidate = base;
        candidate.llm_tp = llm_tp;
        candidate.encoder_tp = encoder_tp;
        if (!disjoint) {
          candidate.placement = EncoderPlacement::Colocated;
          candidate.encoder_devices = 0;
          candidates.push_back(candidate);
          continue;
        }
        candidate.placement = EncoderPlacement::Disjoint;
        for (int e : encoder_device_candidates(cluster, llm_tp, encoder_tp, base)) {
          candidate.encoder_devices = e;
          candidates.push_back(candidate);
        }
      }
    }
  }

  std::optional<PlannerOptions> best;
  double best_ms = std::numeric_limits<double>::infinity();
  int feasible = 0;
  for (const PlannerOptions& candidate : candidates) {
    const std::optional<double> total_ms =
        score(cluster, model, batches, sample_index, candidate, best_ms);
    if (!total_ms) continue;
    ++feasible;
    DHP_LOG_DEBUG("best_dhp_options: {} -> {:.3f} ms", describe_layout(candidate), *total_ms);
    best_ms = *total_ms;  // score() only returns totals below best_ms
    best = candidate;
  }
  DHP_CHECK(best.has_value(), DoesNotFit,
            "best_dhp_options: none of the {} module layouts of model '{}' on cluster '{}' "
            "holds every batch of the run",
            candidates.size(), model.name, cluster.name);
  DHP_LOG_INFO("best_dhp_options: {} ({:.3f} ms over {} batches; {} layouts tried, {} improved)",
               describe_layout(*best), best_ms, sampled, candidates.size(), feasible);
  return *best;
}

}  // namespace dhp
