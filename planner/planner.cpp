// Planner: resolves the module layout and cost model once, then plans each batch with the
// chosen strategy.
#include "dhp/planner.hpp"

#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "dhp/error.hpp"
#include "dhp/log.hpp"
#include "internal.hpp"
#include "layout_search.hpp"

namespace dhp {

const char* to_string(Strategy s) noexcept {
  switch (s) {
    case Strategy::Dhp:
      return "dhp";
    case Strategy::StaticBest:
      return "static_best";
    case Strategy::StaticBalanced:
      return "static_balanced";
    case Strategy::MegatronDcp:
      return "megatron_dcp";
    case Strategy::PaperBfdDp:
      return "paper_bfd_dp";
    case Strategy::Exact:
      return "exact";
  }
  return "unknown";
}

std::vector<Strategy> all_strategies() {
  return {Strategy::Dhp,         Strategy::StaticBest, Strategy::StaticBalanced,
          Strategy::MegatronDcp, Strategy::PaperBfdDp, Strategy::Exact};
}

Strategy strategy_from_string(std::string_view name) {
  std::string known;
  for (Strategy s : all_strategies()) {
    if (name == to_string(s)) return s;
    known += known.empty() ? "" : ", ";
    known += to_string(s);
  }
  DHP_THROW(InvalidArgument, "unknown strategy '{}'; known: {}", name, known);
}

namespace {
detail::Layout validated_layout(const ClusterSpec& cluster, const ModelSpec& model,
                                const PlannerOptions& options) {
  validate(cluster);
  validate(model);
  DHP_CHECK(options.max_waves >= 1, InvalidArgument, "max_waves={} < 1", options.max_waves);
  // A static strategy given its run's layout plans at that layout's TP degrees: batches are
  // checked against it, not against the default.
  PlannerOptions at = options;
  const bool fixed_static = options.static_layout && (options.strategy == Strategy::StaticBest ||
                                                      options.strategy == Strategy::StaticBalanced);
  if (fixed_static) {
    at.llm_tp = options.static_layout->tp;
    if (options.static_layout->encoder_tp > 0) at.encoder_tp = options.static_layout->encoder_tp;
  }
  detail::Layout layout = detail::resolve_layout(cluster, model, at);
  DHP_LOG_DEBUG("planner: {} on {}: llm tp={} ranks={}, encoder tp={} ranks={}, {}", model.name,
                cluster.name, layout.llm_tp, layout.llm.ranks, layout.encoder_tp,
                layout.encoder.ranks, to_string(layout.placement));
  return layout;
}

// Whether dhp searches the module layout per batch: the search is on and the options leave
// a TP degree or the encoder's placement open.
bool searches_layout(const ModelSpec& model, const PlannerOptions& options) {
  if (options.strategy != Strategy::Dhp || options.layout_search == LayoutSearch::Off) return false;
  const bool encoder = model.encoder.has_value();
  return options.llm_tp == 0 || (encoder && options.encoder_tp == 0) ||
         (encoder && options.search_placement && options.placement == EncoderPlacement::Colocated);
}
}  // namespace

struct Planner::Impl {
  ClusterSpec cluster;
  ModelSpec model;
  PlannerOptions options;
  detail::Layout layout;  // after the three above: computed from them
  CostModel cost;
  // The per-batch layout search and its run's state (searches_layout); plan() is const and
  // may be called from several threads: the state is guarded.
  std::unique_ptr<detail::BatchLayoutSearch> search;
  std::mutex search_mutex;

  Impl(ClusterSpec c, ModelSpec m, PlannerOptions o)
      : cluster(std::move(c)),
        model(std::move(m)),
        options(std::move(o)),
        layout(validated_layout(cluster, model, options)),
        cost(detail::make_cost_model(cluster, model, layout, options)) {
    DHP_CHECK(options.layout_warmup_batches >= 1, InvalidArgument, "layout_warmup_batches={} < 1",
              options.layout_warmup_batches);
    if (searches_layout(model, options))
      search = std::make_unique<detail::BatchLayoutSearch>(cluster, model, options);
  }
};

Planner::Planner(ClusterSpec cluster, ModelSpec model, PlannerOptions options)
    : impl_(std::make_unique<Impl>(std::move(cluster), std::move(model), std::move(options))) {}
Planner::~Planner() = default;
Planner::Planner(Planner&&) noexcept = default;
Planner& Planner::operator=(Planner&&) noexcept = default;

const CostModel& Planner::cost_model() const { return impl_->cost; }
const PlannerOptions& Planner::options() const { return impl_->options; }
const ClusterSpec& Planner::cluster() const { return impl_->cluster; }
const ModelSpec& Planner::model() const { return impl_->model; }

Plan Planner::plan(const Batch& batch) const {
  validate(batch);
  if (impl_->search) {
    const std::lock_guard<std::mutex> lock(impl_->search_mutex);
    Plan plan = impl_->search->plan(batch);
    plan.strategy = to_string(impl_->options.strategy);
    plan.step = batch.step;
    return plan;
  }
  const Impl& m = *impl_;
  detail::check_batch_fits(batch, m.cost, m.layout);
  Plan plan;
  switch (m.options.strategy) {
    case Strategy::Dhp:
      plan = detail::plan_dhp(batch, m.cost, m.layout, m.options);
      break;
    case Strategy::StaticBest:
      plan = detail::plan_static_best(batch, m.cost, m.layout, m.options);
      break;
    case Strategy::StaticBalanced:
      plan = detail::plan_static_balanced(batch, m.cost, m.layout, m.options);
      break;
    case Strategy::MegatronDcp:
      plan = detail::plan_megatron_dcp(batch, m.cost, m.layout, m.options);
      break;
    case Strategy::PaperBfdDp:
      plan = detail::plan_paper_bfd_dp(batch, m.cost, m.layout, m.options);
      break;
    case Strategy::Exact:
      plan = detail::plan_exact(batch, m.cost, m.layout, m.options);
      break;
  }
  plan.strategy = to_string(m.options.strategy);
  plan.step = batch.step;
  return plan;
}

}  // namespace dhp
