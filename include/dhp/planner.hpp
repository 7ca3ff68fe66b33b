// Per-batch planning: a batch in, a Plan out. Deterministic (same input, same plan on
// every rank), polynomial time, and memory is a hard constraint: a plan the cost model
// says does not fit is never returned; a sample that cannot fit at all raises
// dhp::Error (DoesNotFit) naming the sample and the numbers.
#pragma once

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dhp/batch.hpp"
#include "dhp/cluster.hpp"
#include "dhp/cost_model.hpp"
#include "dhp/model.hpp"
#include "dhp/plan.hpp"

namespace dhp {

enum class Strategy {
  Dhp,             // ours
  StaticBest,      // best fixed TP x CP x DP layout, sequences packed to a fixed length
  StaticBalanced,  // fixed CP, sequences spread over DP ranks by quadratic work
  MegatronDcp,     // Megatron Core dynamic CP: power-of-two CP per sequence, greedy
  PaperBfdDp,      // DHP paper: best-fit-decreasing atomic groups + 2-D dynamic program
  Exact,           // optimal over the plan space; small instances only
};

const char* to_string(Strategy s) noexcept;
Strategy strategy_from_string(std::string_view name);  // throws naming the known ones
std::vector<Strategy> all_strategies();

// A fixed layout for the static baselines, chosen once for the whole run.
struct StaticLayout {
  int tp = 1;
  int cp = 1;
  int dp = 1;
  std::int64_t pack_tokens = 0;  // StaticBest: fixed packed length per CP group
  int encoder_tp = 0;            // 0: PlannerOptions::encoder_tp (or the smallest that fits)
};

// Dhp: how the module layout (LLM TP, encoder TP, the encoder's placement and devices) is
// chosen where PlannerOptions leaves it open.
enum class LayoutSearch {
  // The smallest TP degrees that divide the heads and fit memory, the placement as given.
  Off,
  // Every batch gets the layout whose plan has the least estimated step; a layout other than
  // the previous batch's is charged the time to move weights and optimizer state into it
  // (PlanEstimate::layout_switch_ms), so the layout changes only where that pays.
  PerBatch,
  // Searched per batch (as PerBatch) over the run's first layout_warmup_batches batches; the
  // layout that won most of them is then kept, and searched again only for a batch it
  // cannot hold (that layout is kept from then on).
  FixedAfterFirstBatches,
};

struct PlannerOptions {
  Strategy strategy = Strategy::Dhp;
  int llm_tp = 0;      // 0: open (Dhp: layout_search; others: the smallest that fits)
  int encoder_tp = 0;  // 0: likewise for the encoder
  EncoderPlacement placement = EncoderPlacement::Colocated;
  int encoder_devices = 0;  // Disjoint only: devices given to the encoder (multiple of its tp)
  // Fixed after the first batches by default: a run that changes TP degrees reshards its
  // weights and optimizer state, and switching batch by batch on the estimate with that
  // charge can stay in a layout that later batches would leave (docs/algorithm.md).
  LayoutSearch layout_search = LayoutSearch::FixedAfterFirstBatches;
  // FixedAfterFirstBatches: the batches searched before the layout is kept. Each costs the
  // search (several layouts planned where their bounds are close); later batches cost one.
  int layout_warmup_batches = 1;
  // Dhp with a layout search: also try a disjoint encoder (a few encoder device counts). An
  // explicit Disjoint placement is kept as given.
  bool search_placement = true;
  std::optional<StaticLayout> static_layout;  // StaticBest/StaticBalanced; else chosen per batch
  std::int64_t max_tokens_per_rank = 0;       // MegatronDcp; 0: derived from memory
  int max_waves = 256;
  // Dhp, Exact: an item longer than a wave's even share of encoder work is encoded in parts
  // (ranges of its temporal slices or tiles, encoder_spans) on several encoder ranks. The
  // baselines encode every item whole on one rank, as their systems do.
  bool split_visual_items = true;
  CostCoefficients coefficients;  // defaults_for(cluster) unless set with calibrated ones
  bool coefficients_set = false;
};

class Planner {
 public:
  Planner(ClusterSpec cluster, ModelSpec model, PlannerOptions options = {});
  ~Planner();
  Planner(Planner&&) noexcept;
  Planner& operator=(Planner&&) noexcept;

  Plan plan(const Batch& batch) const;

  const CostModel& cost_model() const;
  const PlannerOptions& options() const;
  const ClusterSpec& cluster() const;
  const ModelSpec& model() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The static layout that minimises the summed estimated step time over `batches`,
// by exhaustive search over TP (divisors of the heads within a node), encoder TP (likewise,
// unless options.encoder_tp is set), CP and DP.
StaticLayout best_static_layout(const ClusterSpec& cluster, const ModelSpec& model,
                                std::span<const Batch> batches, Strategy strategy,
                                const PlannerOptions& options = {});

// One module layout for a whole run of `base.strategy`, as a user tuning it would pick: every
// llm/encoder TP pair that divides the heads and a node's devices and fits memory, colocated
// and disjoint (a few encoder device counts), each scored by the summed plan.estimate.step_ms
// of the strategy's plans of at most 8 evenly spaced batches. Returns `base` with the winning
// llm_tp, encoder_tp, placement and encoder_devices set explicitly (and, for Dhp, the layout
// search off). Deterministic; ties keep the earlier candidate (colocated, then smaller TP).
// An explicit llm_tp/encoder_tp in `base` is kept. Throws DoesNotFit when no layout holds
// every batch.
PlannerOptions best_run_layout(const ClusterSpec& cluster, const ModelSpec& model,
                               std::span<const Batch> batches, PlannerOptions base);
// best_run_layout for Strategy::Dhp.
PlannerOptions best_dhp_options(const ClusterSpec& cluster, const ModelSpec& model,
                                std::span<const Batch> batches, PlannerOptions base = {});

// "tp=2 etp=4 colocated", "tp=2 etp=4 disjoint(enc=16)": a layout's short description.
std::string describe_layout(const PlannerOptions& options);

// Plans batch t+1 on a background thread while batch t runs. Plans come back in the
// order the batches were submitted.
class AsyncPlanner {
 public:
  explicit AsyncPlanner(Planner planner);
  ~AsyncPlanner();  // finishes queued work, then joins
  AsyncPlanner(const AsyncPlanner&) = delete;
  AsyncPlanner& operator=(const AsyncPlanner&) = delete;

  std::future<Plan> submit(Batch batch);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dhp
