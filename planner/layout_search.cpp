// The module layout chosen with the plan. Per batch (BatchLayoutSearch, dhp's default): every
// open layout that can hold the batch is bounded from below first, then planned in the order
// of the bounds (the previous batch's layout first) until no bound is below the best plan so
// far; a layout switch is charged its resharding time, or the layout of the first batches is
// kept (PlannerOptions::layout_search). Per run (best_run_layout): a sample of the run's
// batches is planned under every layout, as a user tuning a fixed layout would.
#include <algorithm>
#include <cmath>
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
#include "layout_search.hpp"

namespace dhp {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Batches planned per candidate: enough to see the run's mix, few enough that the search
// over tens of layouts stays a small fraction of a run's planning time.
constexpr std::size_t kSampledBatches = 8;

// Summed estimated step of the strategy's plans of the sampled batches under `options`;
// nullopt when the layout does not fit some batch of the run, or cannot beat `to_beat`.
std::optional<double> score(const ClusterSpec& cluster, const ModelSpec& model,
                            std::span<const Batch> batches,
                            const std::vector<std::size_t>& sample_index,
                            const PlannerOptions& options, double to_beat) {
  try {
    const Planner planner(cluster, model, options);
    const detail::Layout layout = detail::resolve_layout(cluster, model, options);
    // A run-wide layout must hold every batch of the run, not only the sampled ones.
    for (const Batch& batch : batches)
      detail::check_batch_fits(batch, planner.cost_model(), layout);
    double total_ms = 0;
    for (std::size_t k = 0; k < sample_index.size(); ++k) {
      total_ms += planner.plan(batches[sample_index[k]]).estimate.step_ms;
      if (total_ms >= to_beat) {  // the sum only grows: this layout cannot win
        DHP_LOG_DEBUG("best_run_layout: {} pruned: {:.3f} ms after {} of {} batches",
                      describe_layout(options), total_ms, k + 1, sample_index.size());
        return std::nullopt;
      }
    }
    return total_ms;
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::DoesNotFit && e.kind() != ErrorKind::InvalidArgument) throw;
    DHP_LOG_DEBUG("best_run_layout: {} skipped: {}", describe_layout(options), e.what());
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

PlannerOptions best_run_layout(const ClusterSpec& cluster, const ModelSpec& model,
                               std::span<const Batch> batches, PlannerOptions base) {
  DHP_CHECK(!batches.empty(), InvalidArgument, "best_run_layout: no batches given");
  validate(cluster);
  validate(model);
  for (const Batch& batch : batches) validate(batch);

  const std::size_t sampled = std::min(kSampledBatches, batches.size());
  std::vector<std::size_t> sample_index(sampled);
  for (std::size_t i = 0; i < sampled; ++i) sample_index[i] = i * batches.size() / sampled;

  base.search_placement = true;
  std::vector<std::string> unfit;
  const std::vector<detail::LayoutCandidate> candidates =
      detail::layout_candidates(cluster, model, base, &unfit);
  std::optional<PlannerOptions> best;
  double best_ms = kInf;
  int feasible = 0;
  for (const detail::LayoutCandidate& candidate : candidates) {
    const std::optional<double> total_ms =
        score(cluster, model, batches, sample_index, candidate.options, best_ms);
    if (!total_ms) continue;
    ++feasible;
    DHP_LOG_DEBUG("best_run_layout: {} -> {:.3f} ms", describe_layout(candidate.options),
                  *total_ms);
    best_ms = *total_ms;  // score() only returns totals below best_ms
    best = candidate.options;
  }
  DHP_CHECK(
      best.has_value(), DoesNotFit,
      "best_run_layout: none of the {} module layouts of model '{}' on cluster '{}' "
      "holds every batch of the run with {}{}",
      candidates.size() + unfit.size(), model.name, cluster.name, to_string(base.strategy),
      unfit.empty() ? std::string() : "; left out: " + fmt::format("{}", fmt::join(unfit, "; ")));
  DHP_LOG_INFO("best_run_layout: {} {} ({:.3f} ms over {} batches; {} layouts tried, {} improved)",
               to_string(base.strategy), describe_layout(*best), best_ms, sampled,
               candidates.size(), feasible);
  return *best;
}

PlannerOptions best_dhp_options(const ClusterSpec& cluster, const ModelSpec& model,
                                std::span<const Batch> batches, PlannerOptions base) {
  base.strategy = Strategy::Dhp;
  return best_run_layout(cluster, model, batches, base);
}

namespace detail {

BatchLayoutSearch::BatchLayoutSearch(const ClusterSpec& cluster, const ModelSpec& model,
                                     const PlannerOptions& options)
    : options_(options),
      unfit_(),
      candidates_(layout_candidates(cluster, model, options, &unfit_)) {
  DHP_CHECK(!candidates_.empty(), DoesNotFit,
            "no module layout of model '{}' fits cluster '{}': {}", model.name, cluster.name,
            fmt::format("{}", fmt::join(unfit_, "; ")));
  wins_.assign(candidates_.size(), 0);
  gap_.assign(candidates_.size(), 1.0);
}

void BatchLayoutSearch::refuse(const Batch& batch, const std::string& why_not) const {
  DHP_THROW(DoesNotFit, "dhp: no module layout holds batch {} ({} samples); {} layouts tried:{}{}",
            batch.step, batch.samples.size(), candidates_.size() + unfit_.size(), why_not,
            unfit_.empty()
                ? std::string()
                : fmt::format("\n  left out (parameters alone): {}", fmt::join(unfit_, "; ")));
}

// The candidates in the order of their lower bounds (the previous layout first: it pays no
// switch), each planned below the best score so far while its bound, scaled by the gap its
// plans showed on earlier batches, can beat it. A candidate that cannot hold the batch
// (check_batch_fits, or no packing within max_waves) says why in `why_not`.
BatchLayoutSearch::Choice BatchLayoutSearch::search(const Batch& batch,
                                                    std::optional<std::size_t> previous,
                                                    std::string& why_not) {
  LayoutBounds bounds(batch);
  struct Ranked {
    std::size_t candidate;
    double bound_ms;  // without the switch
    double switch_ms;
  };
  std::vector<Ranked> ranked;
  ranked.reserve(candidates_.size());
  for (std::size_t c = 0; c < candidates_.size(); ++c) {
    const double switch_ms =
        previous ? layout_switch_ms(candidates_[*previous], candidates_[c]) : 0.0;
    ranked.push_back({c, bounds.step_ms(candidates_[c]), switch_ms});
  }
  std::stable_sort(ranked.begin(), ranked.end(), [&](const Ranked& a, const Ranked& b) {
    const bool a_first = previous && a.candidate == *previous;
    const bool b_first = previous && b.candidate == *previous;
    if (a_first != b_first) return a_first;
    return a.bound_ms * gap_[a.candidate] + a.switch_ms <
           b.bound_ms * gap_[b.candidate] + b.switch_ms;
  });
  Choice best;
  best.score_ms = kInf;
  int planned = 0;
  for (const Ranked& r : ranked) {
    const double hope = r.bound_ms * gap_[r.candidate] + r.switch_ms;
    if (!(hope < best.score_ms * (1 - 1e-9))) continue;
    const LayoutCandidate& c = candidates_[r.candidate];
    std::optional<Plan> plan;
    try {
      check_batch_fits(batch, c.cost, c.layout);
      plan = std::isfinite(best.score_ms)
                 ? plan_dhp_below(batch, c.cost, c.layout, c.options, best.score_ms - r.switch_ms)
                 : std::optional<Plan>(plan_dhp(batch, c.cost, c.layout, c.options));
      ++planned;
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::DoesNotFit) throw;
      why_not += fmt::format("\n  {}: {}", describe_layout(c.options), e.what());
      continue;
    }
    if (!plan) {  // its plans are at least the best so far: a lower bound on its gap
      gap_[r.candidate] = std::max(gap_[r.candidate], (best.score_ms - r.switch_ms) / r.bound_ms);
      continue;
    }
    const double step = plan->estimate.step_ms;
    // A bound above an estimate would skip layouts that win.
    DHP_CHECK(!(r.bound_ms > step * (1 + 1e-9)), Internal,
              "dhp: layout {}: step lower bound {:.6f} ms above the estimate {:.6f} ms",
              describe_layout(c.options), r.bound_ms, step);
    gap_[r.candidate] = step / r.bound_ms;
    DHP_LOG_DEBUG("dhp layout {}: bound {:.3f} ms, step {:.3f} ms + switch {:.3f} ms",
                  describe_layout(c.options), r.bound_ms, step, r.switch_ms);
    if (step + r.switch_ms < best.score_ms) {
      plan->estimate.layout_switch_ms = r.switch_ms;
      best = Choice{std::move(plan), r.candidate, step + r.switch_ms};
    }
  }
  DHP_LOG_DEBUG("dhp layout search, batch {}: {} layouts, {} planned, {} chosen", batch.step,
                candidates_.size(), planned,
                best.plan ? describe_layout(candidates_[best.candidate].options) : "none");
  return best;
}

void BatchLayoutSearch::remember(std::int64_t step, std::size_t chosen) {
  if (!last_step_ || *last_step_ != step) {
    before_last_ = last_;
    ++batches_seen_;
    if (options_.layout_search == LayoutSearch::FixedAfterFirstBatches && !fixed_) {
      ++wins_[chosen];
      if (batches_seen_ >= options_.layout_warmup_batches) {
        // The layout that won most of the first batches (the latest among equals).
        std::size_t most = chosen;
        for (std::size_t c = 0; c < wins_.size(); ++c)
          if (wins_[c] > wins_[most]) most = c;
        fixed_ = most;
      }
    }
  }
  last_step_ = step;
  last_ = chosen;
}

Plan BatchLayoutSearch::plan(const Batch& batch) {
  // A batch planned again (the same step as the last one) sees the layout before it.
  const std::optional<std::size_t> previous =
      last_step_ && *last_step_ == batch.step ? before_last_ : last_;
  std::string why_not;
  if (fixed_) {
    const LayoutCandidate& c = candidates_[*fixed_];
    try {
      check_batch_fits(batch, c.cost, c.layout);
      Plan plan = plan_dhp(batch, c.cost, c.layout, c.options);
      if (previous) plan.estimate.layout_switch_ms = layout_switch_ms(candidates_[*previous], c);
      remember(batch.step, *fixed_);
      return plan;
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::DoesNotFit) throw;
      DHP_LOG_WARN("dhp: batch {} does not fit the run's layout {}, searching again: {}",
                   batch.step, describe_layout(c.options), e.what());
    }
  }
  Choice choice = search(batch, previous, why_not);
  if (!choice.plan) refuse(batch, why_not);
  if (fixed_) fixed_ = choice.candidate;  // the kept layout could not hold it: this one now
  remember(batch.step, choice.candidate);
  return std::move(*choice.plan);
}

}  // namespace detail
}  // namespace dhp
