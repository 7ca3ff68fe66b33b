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

std::vector<WaveDraft> limit_encoder_per_wave(const Batch& batch, const CostModel& cost,
                                              const Layout& layout, std::vector<WaveDraft> waves) {
  if (layout.placement != EncoderPlacement::Colocated || layout.encoder.ranks == 0) return waves;
  std::vector<double> sample_bytes(batch.samples.size(), 0.0);
  double largest = 0;
  for (std::size_t s = 0; s < batch.samples.size(); ++s) {
    for (const VisualItem& v : batch.samples[s].visuals) {
      const double bytes = cost.encoder_activation_bytes(v);
      sample_bytes[s] += bytes;
      largest = std::max(largest, bytes);
    }
  }
  if (largest <= 0) return waves;
  // build_plan keeps every encoder rank within its device's room (at least the reserve,
  // 2 x largest) while it can, then uses the rank with the fewest bytes, which holds at most
  // the wave's mean: so an encoder rank never exceeds max(room, total / ranks + largest). That fits
  // the reserve plus the LLM's unused room on the fullest LLM rank when total <= ranks * (largest +
  // room).
  const double budget = llm_activation_budget(cost, layout, batch);
  const int encoder_ranks = layout.encoder.ranks;
  auto fits = [&](double encoder_total, double fullest_llm_rank) {
    return encoder_total <= encoder_ranks * (largest + budget - fullest_llm_rank);
  };
  auto llm_bytes = [&](int s, int degree) {
    return cost.llm_activation_bytes(batch.samples[s].llm_tokens(), degree);
  };

  std::vector<WaveDraft> limited;
  for (WaveDraft& wave : waves) {
    WaveDraft current;
    double current_encoder = 0;
    double current_fullest = 0;  // most LLM activation bytes of a rank in `current`
    auto flush = [&] {
      if (!current.groups.empty()) limited.push_back(std::move(current));
      current = WaveDraft{};
      current_encoder = 0;
      current_fullest = 0;
    };
    for (const GroupDraft& group : wave.groups) {
      // Cut the group's samples (split list, then each member's whole list) into pieces
      // that each fit what is left of the current wave.
      const int degree = group.degree;
      GroupDraft piece;
      double piece_split = 0;  // bytes of the piece's split samples per rank
      std::vector<double> piece_whole(degree, 0.0);
      double piece_whole_max = 0;  // max of piece_whole (its values only grow)
      auto reset_piece = [&] {
        piece = GroupDraft{};
        piece.degree = degree;
        piece.whole.resize(group.whole.size());
        piece_split = 0;
        std::fill(piece_whole.begin(), piece_whole.end(), 0.0);
        piece_whole_max = 0;
      };
      reset_piece();
      bool piece_empty = true;
      auto add = [&](int s, int member) {
        const double llm = llm_bytes(s, member < 0 ? degree : 1);
        const double rank_after = member < 0 ? piece_split + llm + piece_whole_max
                                             : piece_split + piece_whole[member] + llm;
        const bool ok =
            fits(current_encoder + sample_bytes[s], std::max(current_fullest, rank_after));
        if (!ok && !(piece_empty && current.groups.empty())) {
          if (!piece_empty) current.groups.push_back(std::move(piece));
          flush();
          reset_piece();
          piece_empty = true;
        }
        (member < 0 ? piece.split : piece.whole[member]).push_back(s);
        (member < 0 ? piece_split : piece_whole[member]) += llm;
        if (member >= 0) piece_whole_max = std::max(piece_whole_max, piece_whole[member]);
        current_encoder += sample_bytes[s];
        current_fullest = std::max(current_fullest, piece_split + piece_whole_max);
        piece_empty = false;
      };
      for (int s : group.split) add(s, -1);
      for (std::size_t m = 0; m < group.whole.size(); ++m) {
        for (int s : group.whole[m]) add(s, static_cast<int>(m));
      }
      if (!piece_empty) current.groups.push_back(std::move(piece));
    }
    flush();
  }
  return limited;
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
                     int tp, int encoder_tp) {
  if (tp == layout.llm_tp && (encoder_tp <= 0 || encoder_tp == layout.encoder_tp))
    return TpSetup{layout, cost};
  PlannerOptions with_tp = options;
  with_tp.llm_tp = tp;
  if (encoder_tp > 0) with_tp.encoder_tp = encoder_tp;
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

namespace {

// Max-tree over the bins' free tokens, so that first fit finds the first bin with room in
// O(log bins) instead of scanning every bin.
class FirstFitTree {
 public:
  explicit FirstFitTree(std::size_t bins) {
    while (leaves_ < bins) leaves_ *= 2;
    free_.assign(2 * leaves_, -1);
  }
  void set(std::size_t bin, std::int64_t free_tokens) {
    std::size_t node = bin + leaves_;
    free_[node] = free_tokens;
    for (node /= 2; node >= 1; node /= 2) {
      free_[node] = std::max(free_[2 * node], free_[2 * node + 1]);
    }
  }
  // The first bin with at least `need` free tokens, or -1.
  long first_with(std::int64_t need) const {
    if (free_[1] < need) return -1;
    std::size_t node = 1;
    while (node < leaves_) node = free_[2 * node] >= need ? 2 * node : 2 * node + 1;
    return static_cast<long>(node - leaves_);
  }

 private:
  std::size_t leaves_ = 1;
  std::vector<std::int64_t> free_;
};

}  // namespace

std::vector<WaveDraft> static_best_waves(const Batch& batch, const CostModel& cost,
                                         const Layout& layout, int cp, std::int64_t pack_tokens,
                                         double budget) {
  struct Bin {
    std::vector<int> samples;
    std::int64_t padded = 0;
    double bytes = 0;  // activation bytes per device (rank_activation_bytes sums its pieces)
  };
  // First-fit decreasing, as offline packing tools do; a bin is closed by its length
  // and, should this batch's encoder reserve leave less room, by memory as well.
  std::vector<Bin> bins;
  FirstFitTree tree(batch.samples.size());
  for (int s : by_decreasing_length(batch)) {
    const std::int64_t padded = padded_tokens(batch.samples[s].llm_tokens(), cp);
    if (padded > pack_tokens) throw_too_long_for_pack(batch, s, cp, pack_tokens);
    const double bytes = group_activation_bytes(cost, batch, {s}, cp);
    long chosen = tree.first_with(padded);
    if (chosen >= 0 && bins[chosen].bytes + bytes > budget) {
      // Memory binds before length (rare): first fit among the later bins by scanning.
      const long first = chosen;
      chosen = -1;
      for (long b = first + 1; b < static_cast<long>(bins.size()) && chosen < 0; ++b) {
        if (bins[b].padded + padded <= pack_tokens && bins[b].bytes + bytes <= budget) chosen = b;
      }
    }
    if (chosen < 0) {
      if (bytes > budget) throw_too_long_for_pack(batch, s, cp, pack_tokens);
      chosen = static_cast<long>(bins.size());
      bins.emplace_back();
    }
    Bin& bin = bins[chosen];
    bin.samples.push_back(s);
    bin.padded += padded;
    bin.bytes += bytes;
    tree.set(chosen, pack_tokens - bin.padded);
  }
  // A data loader deals bins to the replicas in turn: bin b is micro-batch b / dp of
  // replica b % dp, whatever work the bins hold.
  const int dp = layout.llm.ranks / cp;
  std::vector<WaveDraft> waves((bins.size() + dp - 1) / dp);
  for (std::size_t b = 0; b < bins.size(); ++b) {
    waves[b / dp].groups.push_back(split_group(cp, std::move(bins[b].samples)));
  }
  return limit_encoder_per_wave(batch, cost, layout, std::move(waves));
}

std::vector<std::int64_t> static_pack_candidates(const CostModel& cost, int cp, double budget,
                                                 std::int64_t longest,
                                                 std::int64_t max_tokens_per_rank,
                                                 std::int64_t enough) {
  const std::int64_t granule = 2 * std::int64_t{cp};
  std::int64_t pack = max_fitting_tokens(cost, cp, budget, granule);
  if (max_tokens_per_rank > 0) pack = std::min(pack, max_tokens_per_rank * cp / granule * granule);
  // Users tune the packed length too: the longest pack can put a whole batch into a few
  // bins and leave most replicas idle, so shorter packs are part of the search.
  std::vector<std::int64_t> packs;
  const std::int64_t shortest = padded_tokens(longest, cp);
  while (pack >= shortest && pack > 0) {
    packs.push_back(pack);
    if (pack <= enough) break;
    pack = pack / 2 / granule * granule;
  }
  return packs;
}

std::vector<WaveDraft> static_balanced_waves(const Batch& batch, const CostModel& cost,
                                             const Layout& layout, int cp, double budget,
                                             std::int64_t max_tokens_per_rank) {
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
    double bytes = 0;  // activation bytes per device (rank_activation_bytes sums its pieces)
    std::int64_t tokens_per_rank = 0;
  };
  const std::int64_t token_limit =
      max_tokens_per_rank > 0 ? max_tokens_per_rank : std::numeric_limits<std::int64_t>::max();
  std::vector<std::vector<MicroBatch>> micro_batches(dp);
  for (int r = 0; r < dp; ++r) {
    for (int s : replica_samples[r]) {
      const double alone = group_activation_bytes(cost, batch, {s}, cp);
      const std::int64_t tokens = local_share(batch.samples[s].llm_tokens(), cp);
      bool placed = false;
      for (MicroBatch& mb : micro_batches[r]) {
        if (mb.tokens_per_rank + tokens > token_limit || mb.bytes + alone > budget) continue;
        mb.samples.push_back(s);
        mb.bytes += alone;
        mb.tokens_per_rank += tokens;
        placed = true;
        break;
      }
      if (placed) continue;
      if (alone > budget || tokens > token_limit) {
        const Sample& sample = batch.samples[s];
        DHP_THROW(DoesNotFit,
                  "static_balanced with cp={}: sample {} (id {}) of {} tokens needs {:.3g} GiB "
                  "of activations and {} tokens per device; {:.3g} GiB and {} tokens available",
                  cp, s, sample.id, sample.llm_tokens(), alone / (1 << 30), tokens,
                  budget / (1 << 30), max_tokens_per_rank);
      }
      micro_batches[r].push_back(MicroBatch{{s}, alone, tokens});
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
  return limit_encoder_per_wave(batch, cost, layout, std::move(waves));
}

}  // namespace dhp::detail

namespace dhp {

namespace {

// TP degrees of one module to try: the explicit one, or every one that divides its heads, kv
// heads and a node's devices; {0} for a text-only model's encoder.
std::vector<int> static_tp_candidates(int fixed, const TransformerSpec* arch,
                                      int devices_per_node) {
  if (arch == nullptr || fixed > 0) return {fixed};
  std::vector<int> tps;
  for (int tp = 1; tp <= devices_per_node; ++tp)
    if (detail::tp_valid(tp, *arch, devices_per_node)) tps.push_back(tp);
  return tps;
}

// The run's batches, sampled: feasibility is judged on every batch (a run-wide layout must hold
// the longest sequence of the run); the time is summed over at most 16 evenly spaced batches.
struct StaticRun {
  std::span<const Batch> batches;
  std::vector<std::size_t> sample_index;
  std::int64_t longest = 0;
  std::int64_t fewest_tokens = std::numeric_limits<std::int64_t>::max();  // over the sample
  // The run's per-rank token limit (Megatron's max_seqlen_per_dp_cp_rank) binds the static
  // layouts too, as in Megatron's published comparison.
  std::int64_t max_tokens = 0;
};

StaticRun sample_static_run(std::span<const Batch> batches, const PlannerOptions& options) {
  constexpr std::size_t kSampled = 16;
  StaticRun run;
  run.batches = batches;
  const std::size_t sampled = std::min(kSampled, batches.size());
  run.sample_index.resize(sampled);
  for (std::size_t i = 0; i < sampled; ++i) run.sample_index[i] = i * batches.size() / sampled;
  run.longest = detail::longest_sequence(batches);
  for (std::size_t i : run.sample_index)
    run.fewest_tokens = std::min(run.fewest_tokens, batches[i].total_llm_tokens());
  run.max_tokens = options.max_tokens_per_rank;
  return run;
}

// Every CP x DP split (and pack length) of one module layout that holds the run's longest
// sequence, each scored by its summed estimate over the sample; the best below `best_ms` is
// kept in `best` (strict: ties keep the earlier, i.e. smaller cp, then the longer pack).
void score_static_splits(const StaticRun& run, Strategy strategy, const detail::Layout& layout,
                         const CostModel& cost, std::optional<StaticLayout>& best, double& best_ms,
                         int& evaluated) {
  using namespace detail;
  double budget = std::numeric_limits<double>::infinity();
  for (const Batch& batch : run.batches)
    budget = std::min(budget, llm_activation_budget(cost, layout, batch));
  if (!(budget > 0)) return;
  const int ranks = layout.llm.ranks;
  for (int cp = 1; cp <= ranks; ++cp) {
    if (ranks % cp != 0) continue;
    // Layouts that cannot hold the longest sequence are out (we never truncate).
    std::vector<std::int64_t> packs;
    if (strategy == Strategy::StaticBest) {
      // Once a pack gives every replica two bins' worth of tokens in every sampled batch,
      // shorter packs only add micro-batches: stop halving there.
      packs = static_pack_candidates(cost, cp, budget, run.longest, run.max_tokens,
                                     run.fewest_tokens / (2 * std::int64_t{ranks / cp}));
    } else if (rank_activation_bytes(cost, {run.longest}, cp, {}) <= budget &&
               (run.max_tokens == 0 || local_share(run.longest, cp) <= run.max_tokens)) {
      packs = {0};  // static_balanced packs by memory and the token limit, not a length
    }
    for (std::int64_t pack : packs) {
      double total_ms = 0;
      for (std::size_t i : run.sample_index) {
        const Batch& batch = run.batches[i];
        const auto waves =
            strategy == Strategy::StaticBest
                ? static_best_waves(batch, cost, layout, cp, pack, budget)
                : static_balanced_waves(batch, cost, layout, cp, budget, run.max_tokens);
        total_ms += estimate_step_ms(batch, cost, layout, waves);
      }
      ++evaluated;
      DHP_LOG_DEBUG("best_static_layout {}: tp={} etp={} cp={} dp={} pack={} -> {:.3f} ms",
                    to_string(strategy), layout.llm_tp, layout.encoder_tp, cp, ranks / cp, pack,
                    total_ms);
      if (total_ms < best_ms) {
        best_ms = total_ms;
        best = StaticLayout{layout.llm_tp, cp, ranks / cp, pack,
                            cost.model().encoder ? layout.encoder_tp : 0};
      }
    }
  }
}

}  // namespace

StaticLayout best_static_layout(const ClusterSpec& cluster, const ModelSpec& model,
                                std::span<const Batch> batches, Strategy strategy,
                                const PlannerOptions& options) {
  using namespace detail;
  DHP_CHECK(strategy == Strategy::StaticBest || strategy == Strategy::StaticBalanced,
            InvalidArgument, "best_static_layout: strategy {} is not a static one",
            to_string(strategy));
  DHP_CHECK(!batches.empty(), InvalidArgument, "best_static_layout: no batches given");
  for (const Batch& batch : batches) validate(batch);
  const StaticRun run = sample_static_run(batches, options);
  const int dpn = cluster.devices_per_node;
  const std::vector<int> tps = static_tp_candidates(options.llm_tp, &model.llm, dpn);
  const std::vector<int> encoder_tps =
      static_tp_candidates(options.encoder_tp, model.encoder ? &model.encoder->arch : nullptr, dpn);

  std::optional<StaticLayout> best;
  double best_ms = std::numeric_limits<double>::infinity();
  int evaluated = 0;
  for (int tp : tps) {
    for (int encoder_tp : encoder_tps) {
      PlannerOptions with_tp = options;
      with_tp.strategy = strategy;  // the layout (and how it encodes) is the static strategy's
      with_tp.llm_tp = tp;
      with_tp.encoder_tp = encoder_tp;
      std::optional<Layout> layout;
      try {
        layout = resolve_layout(cluster, model, with_tp);
      } catch (const Error& e) {
        // A TP degree whose static memory does not fit is simply not a candidate.
        if (e.kind() != ErrorKind::DoesNotFit && e.kind() != ErrorKind::InvalidArgument) throw;
        DHP_LOG_DEBUG("best_static_layout: tp={} etp={} skipped: {}", tp, encoder_tp, e.what());
        continue;
      }
      score_static_splits(run, strategy, *layout, make_cost_model(cluster, model, *layout, with_tp),
                          best, best_ms, evaluated);
    }
  }
  DHP_CHECK(best.has_value(), DoesNotFit,
            "no static TP x CP x DP layout of {} devices holds the longest sequence of the "
            "run ({} tokens); TP degrees tried: {}",
            cluster.world_size(), run.longest, fmt::join(tps, ","));
  DHP_LOG_INFO(
      "best_static_layout {}: tp={} etp={} cp={} dp={} pack_tokens={} ({} layouts, {} "
      "batches)",
      to_string(strategy), best->tp, best->encoder_tp, best->cp, best->dp, best->pack_tokens,
      evaluated, run.sample_index.size());
  return *best;
}

}  // namespace dhp

namespace dhp::detail {

Plan plan_static_best(const Batch& batch, const CostModel& cost, const Layout& layout,
                      const PlannerOptions& options) {
  check_batch_fits(batch, cost, layout);
  // The benchmark passes the run-wide layout; without one, the best layout for this batch.
  const StaticLayout fixed =
      options.static_layout
          ? *options.static_layout
          : best_static_layout(cost.cluster(), cost.model(), std::span<const Batch>(&batch, 1),
                               Strategy::StaticBest, options);
  const TpSetup setup = setup_for_tp(cost, layout, options, fixed.tp, fixed.encoder_tp);
  check_static_layout(fixed, setup.layout);
  const double budget = llm_activation_budget(setup.cost, setup.layout, batch);
  std::int64_t pack = fixed.pack_tokens;
  if (pack <= 0) {
    pack = max_fitting_tokens(setup.cost, fixed.cp, budget, 2 * std::int64_t{fixed.cp});
    if (options.max_tokens_per_rank > 0) {
      const std::int64_t granule = 2 * std::int64_t{fixed.cp};
      pack = std::min(pack, options.max_tokens_per_rank * fixed.cp / granule * granule);
    }
  }
  const auto waves = static_best_waves(batch, setup.cost, setup.layout, fixed.cp, pack, budget);
  DHP_LOG_DEBUG("static_best: tp={} cp={} dp={} pack={} -> {} waves", fixed.tp, fixed.cp, fixed.dp,
                pack, waves.size());
  return build_plan(to_string(Strategy::StaticBest), batch, setup.cost, setup.layout, waves);
}

Plan plan_static_balanced(const Batch& batch, const CostModel& cost, const Layout& layout,
                          const PlannerOptions& options) {
  check_batch_fits(batch, cost, layout);
  const TpSetup setup = options.static_layout
                            ? setup_for_tp(cost, layout, options, options.static_layout->tp,
                                           options.static_layout->encoder_tp)
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
    cp = smallest_cp_holding(setup.cost, longest, ranks, budget, options.max_tokens_per_rank);
    DHP_CHECK(cp > 0, DoesNotFit,
              "static_balanced: no CP degree dividing the {} LLM ranks holds the longest "
              "sequence ({} tokens) within {:.3g} GiB of activations per device and "
              "max_tokens_per_rank={} (0: no limit)",
              ranks, longest, budget / (1 << 30), options.max_tokens_per_rank);
  }
  const auto waves = static_balanced_waves(batch, setup.cost, setup.layout, cp, budget,
                                           options.max_tokens_per_rank);
  DHP_LOG_DEBUG("static_balanced: tp={} cp={} dp={} -> {} waves", setup.layout.llm_tp, cp,
                ranks / cp, waves.size());
  return build_plan(to_string(Strategy::StaticBalanced), batch, setup.cost, setup.layout, waves);
}

}  // namespace dhp::detail
