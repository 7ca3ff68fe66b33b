// Static baselines: one TP x CP x DP layout for the whole run (static_best), and fixed CP
// with sequences spread over the DP replicas by quadratic work (static_balanced).
// Also the small helpers every baseline shares (declared in baselines.hpp).
#include <algorithm>
#include <limits>
#include <numeric>
#include <optional>
#include <span>

#include <fmt/ranges.h>

#include "baselines.hpp"
#include "dhp/error.hpp"
#include "dhp/log.hpp"

namespace dhp::detail {

std::int64_t max_fitting_tokens(const CostModel& cost, int degree, double budget,
                                std::int64_t granule) {
  DHP_CHECK(granule > 0 && degree > 0, InvalidArgument,
            "max_fitting_tokens: granule={} degree={} must be positive", granule, degree);
  auto fits = [&](std::int64_t units) {
    return rank_activation_bytes(cost, {units * granule}, degree, {}) <= budget;
  };
  if (!fits(1)) return 0;
  // Activations grow with the length: double until it no longer fits, then bisect.
  std::int64_t good = 1;
  std::int64_t bad = 2;
  constexpr std::int64_t kMaxUnits = std::int64_t{1} << 40;
  while (fits(bad)) {
    good = bad;
    if (bad >= kMaxUnits) return good * granule;
    bad *= 2;
  }
  while (bad - good > 1) {
    const std::int64_t mid = good + (bad - good) / 2;
    (fits(mid) ? good : bad) = mid;
  }
  return good * granule;
}

namespace {

std::vector<std::int64_t> tokens_of(const Batch& batch, const std::vector<int>& samples) {
  std::vector<std::int64_t> tokens;
  tokens.reserve(samples.size());
  for (int s : samples) tokens.push_back(batch.samples[s].llm_tokens());
  return tokens;
}

}  // namespace

double group_activation_bytes(const CostModel& cost, const Batch& batch,
                              const std::vector<int>& samples, int degree) {
  const auto tokens = tokens_of(batch, samples);
  return degree == 1 ? rank_activation_bytes(cost, {}, 1, tokens)
                     : rank_activation_bytes(cost, tokens, degree, {});
}

double group_llm_ms(const CostModel& cost, const Layout& layout, const Batch& batch,
                    const std::vector<int>& samples, int degree) {
  const auto tokens = tokens_of(batch, samples);
  return degree == 1 ? rank_llm_ms(cost, {}, RingSpan{1, false}, tokens)
                     : rank_llm_ms(cost, tokens, expected_ring(degree, layout), {});
}

GroupDraft split_group(int degree, std::vector<int> samples) {
  GroupDraft group;
  group.degree = degree;
  if (degree == 1) {
    group.whole.push_back(std::move(samples));  // one member: "split over 1" is "whole"
  } else {
    group.split = std::move(samples);
  }
  return group;
}

std::int64_t padded_tokens(std::int64_t tokens, int cp) {
  if (cp <= 1) return tokens;
  const std::int64_t granule = 2 * static_cast<std::int64_t>(cp);
  return (tokens + granule - 1) / granule * granule;
}

namespace {

// Sample indices by decreasing LLM length; ties keep batch order (determinism).
std::vector<int> by_decreasing_length(const Batch& batch) {
  std::vector<int> order(batch.samples.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return batch.samples[a].llm_tokens() > batch.samples[b].llm_tokens();
  });
  return order;
}

std::int64_t longest_sequence(std::span<const Batch> batches) {
  std::int64_t longest = 0;
  for (const Batch& batch : batches)
    for (const Sample& sample : batch.samples) longest = std::max(longest, sample.llm_tokens());
  return longest;
}

[[noreturn]] void throw_too_long_for_pack(const Batch& batch, int sample, int cp,
                                          std::int64_t pack_tokens) {
  const Sample& s = batch.samples[sample];
  DHP_THROW(DoesNotFit,
            "static layout with cp={} packs {} tokens per CP group, but sample {} (id {}) has "
            "{} tokens ({} padded to a multiple of 2*cp): a static system would crash or "
            "truncate it",
            cp, pack_tokens, sample, s.id, s.llm_tokens(), padded_tokens(s.llm_tokens(), cp));
}

// The LLM layout and cost model for TP degree `tp`: the planner's own when it matches,
// else resolved again exactly as the planner would for an explicit llm_tp.
struct TpSetup {
  Layout layout;
  CostModel cost;
};

TpSetup setup_for_tp(const CostModel& cost, const Layout& layout, const PlannerOptions& options,
                     int tp) {
  if (tp == layout.llm_tp) return TpSetup{layout, cost};
  PlannerOptions with_tp = options;
  with_tp.llm_tp = tp;
  Layout tp_layout = resolve_layout(cost.cluster(), cost.model(), with_tp);
  CostModel tp_cost = make_cost_model(cost.cluster(), cost.model(), tp_layout, with_tp);
  return TpSetup{std::move(tp_layout), std::move(tp_cost)};
}

void check_static_layout(const StaticLayout& fixed, const Layout& layout) {
  const int ranks = layout.llm.ranks;
  DHP_CHECK(fixed.cp >= 1 && ranks % fixed.cp == 0, InvalidArgument,
            "static layout cp={} must divide the {} LLM ranks (tp={})", fixed.cp, ranks,
            layout.llm_tp);
  DHP_CHECK(fixed.dp == ranks / fixed.cp, InvalidArgument,
            "static layout tp={} cp={} dp={} does not cover the {} LLM ranks (dp must be {})",
            fixed.tp, fixed.cp, fixed.dp, ranks, ranks / fixed.cp);
}

}  // namespace

std::vector<WaveDraft> static_best_waves(const Batch& batch, const CostModel& cost,
                                         const Layout& layout, int cp,
                                         std::int64_t pack_tokens, double budget) {
  struct Bin {
    std::vector<int> samples;
    std::int64_t padded = 0;
    double bytes = 0;  // activation bytes per device, exact for `samples`
  };
  // First-fit decreasing, as offline packing tools do; a bin is closed by its length
  // and, should this batch's encoder reserve leave less room, by memory as well.
  std::vector<Bin> bins;
  for (int s : by_decreasing_length(batch)) {
    const std::int64_t padded = padded_tokens(batch.samples[s].llm_tokens(), cp);
    if (padded > pack_tokens) throw_too_long_for_pack(batch, s, cp, pack_tokens);
    const double alone = group_activation_bytes(cost, batch, {s}, cp);
    bool placed = false;
    for (Bin& bin : bins) {
      // Cheap screen with the summed bytes, then the exact figure for the bin as a whole.
      if (bin.padded + padded > pack_tokens || bin.bytes + alone > budget) continue;
      bin.samples.push_back(s);
      const double bytes = group_activation_bytes(cost, batch, bin.samples, cp);
      if (bytes <= budget) {
        bin.padded += padded;
        bin.bytes = bytes;
        placed = true;
        break;
      }
      bin.samples.pop_back();
    }
    if (placed) continue;
    if (alone > budget) throw_too_long_for_pack(batch, s, cp, pack_tokens);
    bins.push_back(Bin{{s}, padded, alone});
  }
  // A data loader deals bins to the replicas in turn: bin b is micro-batch b / dp of
  // replica b % dp, whatever work the bins hold.
  const int dp = layout.llm.ranks / cp;
  std::vector<WaveDraft> waves((bins.size() + dp - 1) / dp);
  for (std::size_t b = 0; b < bins.size(); ++b) {
    waves[b / dp].groups.push_back(split_group(cp, std::move(bins[b].samples)));
  }
  return waves;
}

std::vector<WaveDraft> static_balanced_waves(const Batch& batch, const CostModel& cost,
                                             const Layout& layout, int cp, double budget) {
  const int dp = layout.llm.ranks / cp;
  const RingSpan ring = expected_ring(cp, layout);
  // Longest-processing-time first on the estimated (attention-aware, quadratic) time.
  std::vector<double> work(batch.samples.size());
  for (std::size_t s = 0; s < work.size(); ++s) {
    work[s] = cost.llm_sequence_ms(batch.samples[s].llm_tokens(), ring);
  }
  std::vector<int> order(batch.samples.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return work[a] > work[b]; });

  std::vector<double> replica_load(dp, 0.0);
  std::vector<std::vector<int>> replica_samples(dp);
  for (int s : order) {
    const auto least = std::min_element(replica_load.begin(), replica_load.end());
    const auto r = static_cast<std::size_t>(least - replica_load.begin());
    replica_load[r] += work[s];
    replica_samples[r].push_back(s);
  }
  // Each replica packs its sequences (heaviest first) into as few micro-batches as its
  // memory allows.
  struct MicroBatch {
    std::vector<int> samples;
    double bytes = 0;  // activation bytes per device, exact for `samples`
  };
  std::vector<std::vector<MicroBatch>> micro_batches(dp);
  for (int r = 0; r < dp; ++r) {
    for (int s : replica_samples[r]) {
      const double alone = group_activation_bytes(cost, batch, {s}, cp);
      bool placed = false;
      for (MicroBatch& mb : micro_batches[r]) {
        if (mb.bytes + alone > budget) continue;  // cheap screen, exact check below
        mb.samples.push_back(s);
        const double bytes = group_activation_bytes(cost, batch, mb.samples, cp);
        if (bytes <= budget) {
          mb.bytes = bytes;
          placed = true;
          break;
        }
        mb.samples.pop_back();
      }
      if (placed) continue;
      if (alone > budget) {
        const Sample& sample = batch.samples[s];
        DHP_THROW(DoesNotFit,
                  "static_balanced with cp={}: sample {} (id {}) of {} tokens needs {:.3g} GiB "
                  "of activations per device, {:.3g} GiB available",
                  cp, s, sample.id, sample.llm_tokens(), alone / (1 << 30), budget / (1 << 30));
      }
      micro_batches[r].push_back(MicroBatch{{s}, alone});
    }
  }
  std::size_t num_waves = 0;
  for (const auto& mbs : micro_batches) num_waves = std::max(num_waves, mbs.size());
  std::vector<WaveDraft> waves(num_waves);
  for (int r = 0; r < dp; ++r) {
    for (std::size_t i = 0; i < micro_batches[r].size(); ++i) {
      waves[i].groups.push_back(split_group(cp, std::move(micro_batches[r][i].samples)));
    }
  }
  return waves;
}

}  // namespace dhp::detail

namespace dhp {

StaticLayout best_static_layout(const ClusterSpec& cluster, const ModelSpec& model,
                                std::span<const Batch> batches, Strategy strategy,
                                const PlannerOptions& options) {
  using namespace detail;
  DHP_CHECK(strategy == Strategy::StaticBest || strategy == Strategy::StaticBalanced,
            InvalidArgument, "best_static_layout: strategy {} is not a static one",
            to_string(strategy));
  DHP_CHECK(!batches.empty(), InvalidArgument, "best_static_layout: no batches given");
  for (const Batch& batch : batches) validate(batch);

  // Feasibility is judged on every batch (a run-wide layout must hold the longest sequence
  // of the run); the time is summed over at most kSampled evenly spaced batches.
  constexpr std::size_t kSampled = 16;
  const std::size_t sampled = std::min(kSampled, batches.size());
  std::vector<std::size_t> sample_index(sampled);
  for (std::size_t i = 0; i < sampled; ++i) sample_index[i] = i * batches.size() / sampled;
  const std::int64_t longest = longest_sequence(batches);

  std::vector<int> tps;
  for (int tp = 1; tp <= cluster.devices_per_node; ++tp) {
    if (options.llm_tp > 0 && tp != options.llm_tp) continue;
    // Megatron needs tp to divide the attention heads and the kv (query-group) heads.
    const bool divides_heads =
        model.llm.heads % tp == 0 && (model.llm.kv_heads <= 0 || model.llm.kv_heads % tp == 0);
    if (cluster.devices_per_node % tp == 0 && divides_heads) tps.push_back(tp);
  }

  std::optional<StaticLayout> best;
  double best_ms = std::numeric_limits<double>::infinity();
  int evaluated = 0;
  for (int tp : tps) {
    PlannerOptions with_tp = options;
    with_tp.llm_tp = tp;
    std::optional<Layout> layout;
    try {
      layout = resolve_layout(cluster, model, with_tp);
    } catch (const Error& e) {
      // A TP degree whose static memory does not fit is simply not a candidate.
      if (e.kind() != ErrorKind::DoesNotFit && e.kind() != ErrorKind::InvalidArgument) throw;
      DHP_LOG_DEBUG("best_static_layout: tp={} skipped: {}", tp, e.what());
      continue;
    }
    const CostModel cost = make_cost_model(cluster, model, *layout, with_tp);
    double budget = std::numeric_limits<double>::infinity();
    for (const Batch& batch : batches) {
      budget = std::min(budget, llm_activation_budget(cost, *layout, batch));
    }
    if (!(budget > 0)) continue;

    const int ranks = layout->llm.ranks;
    for (int cp = 1; cp <= ranks; ++cp) {
      if (ranks % cp != 0) continue;
      const std::int64_t pack = max_fitting_tokens(cost, cp, budget, 2 * std::int64_t{cp});
      // Layouts that cannot hold the longest sequence are out (we never truncate).
      const bool holds_longest =
          strategy == Strategy::StaticBest
              ? padded_tokens(longest, cp) <= pack
              : rank_activation_bytes(cost, {longest}, cp, {}) <= budget;
      if (!holds_longest) continue;
      double total_ms = 0;
      for (std::size_t i : sample_index) {
        const Batch& batch = batches[i];
        const auto waves = strategy == Strategy::StaticBest
                               ? static_best_waves(batch, cost, *layout, cp, pack, budget)
                               : static_balanced_waves(batch, cost, *layout, cp, budget);
        total_ms += estimate_step_ms(batch, cost, *layout, waves);
      }
      ++evaluated;
      DHP_LOG_DEBUG("best_static_layout {}: tp={} cp={} dp={} pack={} -> {:.3f} ms",
                    to_string(strategy), tp, cp, ranks / cp, pack, total_ms);
      if (total_ms < best_ms) {  // strict: ties keep the smaller tp, then the smaller cp
        best_ms = total_ms;
        best = StaticLayout{tp, cp, ranks / cp, pack};
      }
    }
  }
  DHP_CHECK(best.has_value(), DoesNotFit,
            "no static TP x CP x DP layout of {} devices holds the longest sequence of the "
            "run ({} tokens); TP degrees tried: {}",
            cluster.world_size(), longest, fmt::join(tps, ","));
  DHP_LOG_INFO("best_static_layout {}: tp={} cp={} dp={} pack_tokens={} ({} layouts, {} batches)",
               to_string(strategy), best->tp, best->cp, best->dp, best->pack_tokens, evaluated,
               sampled);
  return *best;
}

}  // namespace dhp

namespace dhp::detail {

Plan plan_static_best(const Batch& batch, const CostModel& cost, const Layout& layout,
                      const PlannerOptions& options) {
  check_batch_fits(batch, cost, layout);
  // The benchmark passes the run-wide layout; without one, the best layout for this batch.
  const StaticLayout fixed =
      options.static_layout ? *options.static_layout
                            : best_static_layout(cost.cluster(), cost.model(),
                                                 std::span<const Batch>(&batch, 1),
                                                 Strategy::StaticBest, options);
  const TpSetup setup = setup_for_tp(cost, layout, options, fixed.tp);
  check_static_layout(fixed, setup.layout);
  const double budget = llm_activation_budget(setup.cost, setup.layout, batch);
  const std::int64_t pack =
      fixed.pack_tokens > 0
          ? fixed.pack_tokens
          : max_fitting_tokens(setup.cost, fixed.cp, budget, 2 * std::int64_t{fixed.cp});
  const auto waves = static_best_waves(batch, setup.cost, setup.layout, fixed.cp, pack, budget);
  DHP_LOG_DEBUG("static_best: tp={} cp={} dp={} pack={} -> {} waves", fixed.tp, fixed.cp,
                fixed.dp, pack, waves.size());
  return build_plan(to_string(Strategy::StaticBest), batch, setup.cost, setup.layout, waves);
}

Plan plan_static_balanced(const Batch& batch, const CostModel& cost, const Layout& layout,
                          const PlannerOptions& options) {
  check_batch_fits(batch, cost, layout);
  const TpSetup setup = options.static_layout
                            ? setup_for_tp(cost, layout, options, options.static_layout->tp)
                            : TpSetup{layout, cost};
  const double budget = llm_activation_budget(setup.cost, setup.layout, batch);
  const int ranks = setup.layout.llm.ranks;
  int cp = 0;
  if (options.static_layout) {
    check_static_layout(*options.static_layout, setup.layout);
    cp = options.static_layout->cp;
  } else {
    // The smallest CP (dividing the ranks) whose groups hold the longest sequence.
    const std::int64_t longest = longest_sequence(std::span<const Batch>(&batch, 1));
    for (int c = 1; c <= ranks && cp == 0; ++c) {
      if (ranks % c == 0 && rank_activation_bytes(setup.cost, {longest}, c, {}) <= budget) cp = c;
    }
    DHP_CHECK(cp > 0, DoesNotFit,
              "static_balanced: no CP degree dividing the {} LLM ranks holds the longest "
              "sequence ({} tokens) within {:.3g} GiB of activations per device",
              ranks, longest, budget / (1 << 30));
  }
  const auto waves = static_balanced_waves(batch, setup.cost, setup.layout, cp, budget);
  DHP_LOG_DEBUG("static_balanced: tp={} cp={} dp={} -> {} waves", setup.layout.llm_tp, cp,
                ranks / cp, waves.size());
  return build_plan(to_string(Strategy::StaticBalanced), batch, setup.cost, setup.layout, waves);
}

}  // namespace dhp::detail
